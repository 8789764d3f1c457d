package controller

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// phaseCount is podvirt_vmi_phase_count (KubeVirt's kubevirt_vmi_phase_count):
// the VMIs by phase and node, counted from the manager's cache on every
// scrape, so it is never out of step with the cluster and costs no API call.
type phaseCount struct {
	reader client.Reader
	desc   *prometheus.Desc
}

func newPhaseCount(r client.Reader) *phaseCount {
	return &phaseCount{reader: r, desc: prometheus.NewDesc("podvirt_vmi_phase_count",
		"VMIs by phase and by the node their launcher pod runs on (empty before scheduling).",
		[]string{"phase", "node"}, nil)}
}

func (p *phaseCount) Describe(ch chan<- *prometheus.Desc) { ch <- p.desc }

// Collect counts the cached VMIs. Before the cache has synced (or if it
// cannot answer quickly) it sends nothing rather than wrong zeros.
func (p *phaseCount) Collect(ch chan<- prometheus.Metric) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	vmis := &v1alpha1.VirtualMachineInstanceList{}
	if err := p.reader.List(ctx, vmis); err != nil {
		return
	}
	type key struct{ phase, node string }
	counts := map[key]int{}
	for i := range vmis.Items {
		st := &vmis.Items[i].Status
		phase := string(st.Phase)
		if phase == "" {
			phase = string(v1alpha1.Pending)
		}
		counts[key{phase, st.NodeName}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(p.desc, prometheus.GaugeValue, float64(n), k.phase, k.node)
	}
}
