package handler

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the handler's Prometheus metrics, registered with the
// Registerer the caller gives (Config.Registerer), as the CSI driver does.
type metrics struct {
	openSessions  prometheus.Gauge
	startsTotal   prometheus.Counter
	startFailures prometheus.Counter
	statusWrites  prometheus.Counter
	startupSteps  *prometheus.HistogramVec
}

// newMetrics makes the metrics and registers them with reg; nil reg
// leaves them unregistered (they still count).
func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		openSessions: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podvirt_handler_launcher_sessions",
			Help: "Launchers the node daemon is connected to.",
		}),
		startsTotal: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podvirt_handler_domain_starts_total",
			Help: "Start calls sent to launchers.",
		}),
		startFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podvirt_handler_domain_start_failures_total",
			Help: "Start calls that failed.",
		}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podvirt_handler_status_writes_total",
			Help: "VMI status patches written.",
		}),
		startupSteps: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podvirt_handler_vmi_startup_step_seconds",
			Help:    "How long each step of a VMI's start took (the VMI's status.startup).",
			Buckets: prometheus.ExponentialBuckets(0.01, 2, 14), // 10 ms to 80 s
		}, []string{"step"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.openSessions, m.startsTotal, m.startFailures, m.statusWrites, m.startupSteps} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}
