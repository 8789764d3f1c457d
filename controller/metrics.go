package controller

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// Metrics the controller exports on /metrics, next to controller-runtime's
// own (controller_runtime_reconcile_total{controller="vm"|"vmi",result},
// controller_runtime_reconcile_errors_total, workqueue_*). The histograms
// match KubeVirt's kubevirt_vmi_phase_transition_time_* ones.
var (
	phaseBuckets = []float64{0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60, 90, 120, 180, 240, 300, 600, 900, 1200, 1800, 3600}

	vmiPhaseFromCreation = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "podvirt_vmi_phase_transition_time_from_creation_seconds",
		Help:    "Seconds from a VMI's creation until it entered each phase.",
		Buckets: phaseBuckets,
	}, []string{"phase"})

	vmiPhaseFromPrevious = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "podvirt_vmi_phase_transition_time_seconds",
		Help:    "Seconds a VMI spent in its previous phase before entering each phase.",
		Buckets: phaseBuckets,
	}, []string{"phase"})

	launcherPodsCreated = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podvirt_launcher_pods_created_total",
		Help: "Launcher pods the controller created.",
	})

	failures = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podvirt_controller_failures_total",
		Help: "Failures the controller reported as Warning events, by reason.",
	}, []string{"kind", "reason"})

	vmiStarts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podvirt_vm_vmi_starts_total",
		Help: "VMIs the VM reconciler created, by run strategy.",
	}, []string{"run_strategy"})

	registerOnce sync.Once
)

func registerMetrics() {
	registerOnce.Do(func() {
		metrics.Registry.MustRegister(vmiPhaseFromCreation, vmiPhaseFromPrevious, launcherPodsCreated, failures, vmiStarts)
	})
}

// observePhase records a VMI's move into phase at now.
func observePhase(vmi *v1alpha1.VirtualMachineInstance, phase v1alpha1.VirtualMachineInstancePhase, now time.Time) {
	vmiPhaseFromCreation.WithLabelValues(string(phase)).Observe(now.Sub(vmi.CreationTimestamp.Time).Seconds())
	if n := len(vmi.Status.PhaseTransitionTimestamps); n > 0 {
		prev := vmi.Status.PhaseTransitionTimestamps[n-1].PhaseTransitionTimestamp.Time
		vmiPhaseFromPrevious.WithLabelValues(string(phase)).Observe(now.Sub(prev).Seconds())
	}
}
