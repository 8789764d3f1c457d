package handler

import (
	"sync"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	openSessions = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "podvirt_handler_launcher_sessions",
		Help: "Launchers the node daemon is connected to.",
	})
	startsTotal = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podvirt_handler_domain_starts_total",
		Help: "Start calls sent to launchers.",
	})
	startFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podvirt_handler_domain_start_failures_total",
		Help: "Start calls that failed.",
	})
	statusWrites = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podvirt_handler_status_writes_total",
		Help: "VMI status patches written.",
	})
	registerOnce sync.Once
)

func registerMetrics() {
	registerOnce.Do(func() {
		metrics.Registry.MustRegister(openSessions, startsTotal, startFailures, statusWrites)
	})
}
