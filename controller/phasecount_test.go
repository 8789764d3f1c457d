package controller

import (
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"

	"github.com/podvirt/podvirt/api/scheme"
	"github.com/podvirt/podvirt/api/v1alpha1"
)

func TestPhaseCount(t *testing.T) {
	s, err := scheme.New()
	if err != nil {
		t.Fatal(err)
	}
	vmi := func(name string, phase v1alpha1.VirtualMachineInstancePhase, node string) *v1alpha1.VirtualMachineInstance {
		return &v1alpha1.VirtualMachineInstance{
			ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: name},
			Status:     v1alpha1.VirtualMachineInstanceStatus{Phase: phase, NodeName: node},
		}
	}
	c := fake.NewClientBuilder().WithScheme(s).WithObjects(
		vmi("a", v1alpha1.Running, "node-a"), vmi("b", v1alpha1.Running, "node-a"),
		vmi("c", v1alpha1.Running, "node-b"), vmi("d", "", ""),
	).Build()
	want := `
# HELP podvirt_vmi_phase_count VMIs by phase and by the node their launcher pod runs on (empty before scheduling).
# TYPE podvirt_vmi_phase_count gauge
podvirt_vmi_phase_count{node="",phase="Pending"} 1
podvirt_vmi_phase_count{node="node-a",phase="Running"} 2
podvirt_vmi_phase_count{node="node-b",phase="Running"} 1
`
	if err := testutil.CollectAndCompare(newPhaseCount(c), strings.NewReader(want)); err != nil {
		t.Fatal(err)
	}
}
