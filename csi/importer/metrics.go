package importer

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// Results of a cache lookup, and of an import.
const (
	lookupHit  = "hit"
	lookupMiss = "miss"

	importSuccess   = "success"
	importTerminal  = "terminal"
	importRetryable = "retryable"
	importCancelled = "cancelled"

	sourceRegistry = "registry"
	sourceHTTP     = "http"
	sourceUpload   = "upload"
)

type metrics struct {
	bytes      *prometheus.CounterVec
	imports    *prometheus.CounterVec
	lookups    *prometheus.CounterVec
	failovers  *prometheus.CounterVec
	cacheBytes prometheus.Gauge
	entries    prometheus.Gauge
	evictions  prometheus.Counter
	duration   *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_csi_import_bytes_total", Help: "Bytes downloaded by image imports, by source type.",
		}, []string{"source"}),
		imports: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_csi_imports_total", Help: "Finished image imports by result (success, terminal, retryable, cancelled).",
		}, []string{"result"}),
		lookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_csi_cache_lookups_total", Help: "Volumes that asked the cache for a base, by result: hit (it was there) or miss (it was imported).",
		}, []string{"result"}),
		failovers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_csi_import_mirror_failovers_total", Help: "Times an import left a mirror for the next one, by the mirror left.",
		}, []string{"mirror"}),
		cacheBytes: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podvirt_csi_cache_bytes", Help: "Bytes of validated bases in the node's image cache.",
		}),
		entries: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "podvirt_csi_cache_entries", Help: "Validated bases in the node's image cache.",
		}),
		evictions: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "podvirt_csi_cache_evictions_total", Help: "Unused bases evicted from the cache to stay under its size cap.",
		}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "podvirt_csi_import_duration_seconds", Help: "Time from the start of an import to a validated base (or failure).",
			Buckets: prometheus.ExponentialBuckets(0.1, 2, 14),
		}, []string{"source", "result"}),
	}
	// Series that exist from the start, so a dashboard shows zero (and a
	// hit ratio) rather than no data.
	m.lookups.WithLabelValues(lookupHit)
	m.lookups.WithLabelValues(lookupMiss)
	for _, kind := range []string{sourceRegistry, sourceHTTP, sourceUpload} {
		m.bytes.WithLabelValues(kind)
	}
	for _, result := range []string{importSuccess, importTerminal, importRetryable, importCancelled} {
		m.imports.WithLabelValues(result)
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.bytes, m.imports, m.lookups, m.failovers, m.cacheBytes, m.entries, m.evictions, m.duration} {
		if err := reg.Register(c); err != nil {
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, errors.New("image cache metrics: already registered on this registry (one Cache per Registerer)")
			}
			return nil, err
		}
	}
	return m, nil
}
