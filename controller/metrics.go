package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// instruments are the metrics the controller exports on /metrics, next to controller-runtime's
// own (controller_runtime_reconcile_total{controller="vm"|"vmi",result},
// controller_runtime_reconcile_errors_total, workqueue_*). The histograms
// match KubeVirt's kubevirt_vmi_phase_transition_time_* ones. They are
// registered with Config.Registerer, as the CSI driver's are.
type instruments struct {
	vmiPhaseFromCreation *prometheus.HistogramVec
	vmiPhaseFromPrevious *prometheus.HistogramVec
	launcherPodsCreated  prometheus.Counter
	failures             *prometheus.CounterVec
	vmiStarts            *prometheus.CounterVec
	migrations           *prometheus.CounterVec
	migrationDuration    *prometheus.HistogramVec
	migrationDowntime    prometheus.Histogram
	migrationDiskBytes   prometheus.Histogram
}

var phaseBuckets = []float64{0.5, 1, 2, 5, 10, 20, 30, 40, 50, 60, 90, 120, 180, 240, 300, 600, 900, 1200, 1800, 3600}

// newMetrics makes the metrics and registers them with reg; nil reg
// leaves them unregistered (they still count).
func newMetrics(reg prometheus.Registerer) (*instruments, error) {
	m := &instruments{
		vmiPhaseFromCreation: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podvirt_vmi_phase_transition_time_from_creation_seconds",
			Help:    "Seconds from a VMI's creation until it entered each phase.",
			Buckets: phaseBuckets,
		}, []string{"phase"}),
		vmiPhaseFromPrevious: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podvirt_vmi_phase_transition_time_seconds",
			Help:    "Seconds a VMI spent in its previous phase before entering each phase.",
			Buckets: phaseBuckets,
		}, []string{"phase"}),
		launcherPodsCreated: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podvirt_launcher_pods_created_total",
			Help: "Launcher pods the controller created.",
		}),
		failures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_controller_failures_total",
			Help: "Failures the controller reported as Warning events, by reason.",
		}, []string{"kind", "reason"}),
		vmiStarts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_vm_vmi_starts_total",
			Help: "VMIs the VM reconciler created, by run strategy.",
		}, []string{"run_strategy"}),
		migrations: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_vmi_migrations_total",
			Help: "Live migrations that ended, by result (Succeeded, Failed).",
		}, []string{"result"}),
		migrationDuration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podvirt_vmi_migration_duration_seconds",
			Help:    "Seconds from a live migration's creation to its end, by result.",
			Buckets: phaseBuckets,
		}, []string{"result"}),
		migrationDowntime: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podvirt_vmi_migration_downtime_seconds",
			Help:    "How long the guest was paused at the switch of a successful live migration.",
			Buckets: []float64{0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5},
		}),
		migrationDiskBytes: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "podvirt_vmi_migration_disk_bytes",
			Help:    "Disk bytes a successful live migration copied (the overlays' data, not the bases).",
			Buckets: prometheus.ExponentialBuckets(1<<20, 4, 10),
		}),
	}
	// Series that exist before the first migration ends, so a dashboard
	// shows zero rather than no data.
	for _, result := range []v1alpha1.MigrationPhase{v1alpha1.MigrationSucceeded, v1alpha1.MigrationFailed} {
		m.migrations.WithLabelValues(string(result))
		m.migrationDuration.WithLabelValues(string(result))
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.vmiPhaseFromCreation, m.vmiPhaseFromPrevious, m.launcherPodsCreated, m.failures, m.vmiStarts,
		m.migrations, m.migrationDuration, m.migrationDowntime, m.migrationDiskBytes} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	return m, nil
}

// observePhase records a VMI's move into phase at now.
func (m *instruments) observePhase(vmi *v1alpha1.VirtualMachineInstance, phase v1alpha1.VirtualMachineInstancePhase, now time.Time) {
	m.vmiPhaseFromCreation.WithLabelValues(string(phase)).Observe(now.Sub(vmi.CreationTimestamp.Time).Seconds())
	if n := len(vmi.Status.PhaseTransitionTimestamps); n > 0 {
		prev := vmi.Status.PhaseTransitionTimestamps[n-1].PhaseTransitionTimestamp.Time
		m.vmiPhaseFromPrevious.WithLabelValues(string(phase)).Observe(now.Sub(prev).Seconds())
	}
}

// observeMigration records a migration that ended.
func (m *instruments) observeMigration(mig *v1alpha1.VirtualMachineInstanceMigration, ms *v1alpha1.MigrationState, now time.Time) {
	result := string(mig.Status.Phase)
	m.migrations.WithLabelValues(result).Inc()
	m.migrationDuration.WithLabelValues(result).Observe(now.Sub(mig.CreationTimestamp.Time).Seconds())
	if mig.Status.Phase == v1alpha1.MigrationSucceeded && ms != nil {
		m.migrationDowntime.Observe(float64(ms.DowntimeMilliseconds) / 1000)
		m.migrationDiskBytes.Observe(float64(ms.DiskBytes))
	}
}
