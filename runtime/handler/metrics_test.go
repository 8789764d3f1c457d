package handler

import (
	"fmt"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"

	"github.com/podvirt/podvirt/internal/polltest"
)

// vmiSeriesLabels are the only labels a podvirt_vmi_ series may have:
// nothing per-boot or per-device-address (no UIDs, no MACs).
var vmiSeriesLabels = map[string]bool{"namespace": true, "name": true, "node": true, "id": true, "drive": true, "interface": true}

// checkVMIMetrics scrapes the handler's registry until the running VMI
// namespace/name has vCPU time, memory, reads from disk and packets both
// ways on nic, each series labelled with the VMI, this node and the
// VMI's device name.
func checkVMIMetrics(t *testing.T, namespace, name, disk, nic string) {
	t.Helper()
	vmi := map[string]string{"namespace": namespace, "name": name, "node": testNode}
	with := func(k, v string) map[string]string {
		m := map[string]string{k: v}
		for k, v := range vmi {
			m[k] = v
		}
		return m
	}
	want := []struct {
		name   string
		labels map[string]string
	}{
		{"podvirt_vmi_cpu_usage_seconds_total", vmi},
		{"podvirt_vmi_vcpu_seconds_total", with("id", "0")},
		{"podvirt_vmi_memory_actual_balloon_bytes", vmi},
		{"podvirt_vmi_memory_resident_bytes", vmi},
		{"podvirt_vmi_storage_read_traffic_bytes_total", with("drive", disk)},
		{"podvirt_vmi_storage_iops_read_total", with("drive", disk)},
		{"podvirt_vmi_storage_read_times_seconds_total", with("drive", disk)},
		{"podvirt_vmi_network_receive_packets_total", with("interface", nic)},
		{"podvirt_vmi_network_transmit_packets_total", with("interface", nic)},
		{"podvirt_vmi_network_receive_bytes_total", with("interface", nic)},
		{"podvirt_vmi_network_transmit_bytes_total", with("interface", nic)},
	}
	polltest.Eventually(t, 30*time.Second, "the VMI's domain stats are scraped", func() (bool, string) {
		families, err := registry.Gather()
		if err != nil {
			return false, err.Error()
		}
		byName := map[string]*dto.MetricFamily{}
		for _, f := range families {
			byName[f.GetName()] = f
			if !strings.HasPrefix(f.GetName(), "podvirt_vmi_") {
				continue
			}
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if !vmiSeriesLabels[l.GetName()] {
						t.Fatalf("%s has label %s=%q", f.GetName(), l.GetName(), l.GetValue())
					}
				}
			}
		}
		for _, w := range want {
			v, ok := seriesValue(byName[w.name], w.labels)
			if !ok || v <= 0 {
				return false, fmt.Sprintf("%s%v = %v (found %v)", w.name, w.labels, v, ok)
			}
		}
		return true, ""
	})
}

// seriesValue is the value of f's series with exactly labels.
func seriesValue(f *dto.MetricFamily, labels map[string]string) (float64, bool) {
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, l := range m.GetLabel() {
			if labels[l.GetName()] != l.GetValue() {
				match = false
			}
		}
		if !match {
			continue
		}
		if c := m.GetCounter(); c != nil {
			return c.GetValue(), true
		}
		return m.GetGauge().GetValue(), true
	}
	return 0, false
}
