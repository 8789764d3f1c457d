package controller

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// kvmNode is a node as the node daemon's device plugin leaves it: kvm
// "works" (allocatable), "broken" (registered, all devices unhealthy) or
// "" (not registered yet).
func kvmNode(name, kvm string, labels map[string]string) corev1.Node {
	n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels}}
	n.Status.Capacity = corev1.ResourceList{}
	n.Status.Allocatable = corev1.ResourceList{}
	switch kvm {
	case "works":
		n.Status.Capacity[v1alpha1.KVMDevice] = resource.MustParse("1000")
		n.Status.Allocatable[v1alpha1.KVMDevice] = resource.MustParse("1000")
	case "broken":
		n.Status.Capacity[v1alpha1.KVMDevice] = resource.MustParse("1000")
		n.Status.Allocatable[v1alpha1.KVMDevice] = resource.MustParse("0")
	}
	return n
}

func TestEmulationFor(t *testing.T) {
	tainted := kvmNode("tainted", "works", nil)
	tainted.Spec.Taints = []corev1.Taint{{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}}
	cordoned := kvmNode("cordoned", "works", nil)
	cordoned.Spec.Unschedulable = true
	gpu := map[string]string{"gpu": "yes"}
	inZoneB := &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{
		NodeSelectorTerms: []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{
			{Key: "zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"b"}},
		}}},
	}}}

	for _, tc := range []struct {
		name         string
		nodeSelector map[string]string
		affinity     *corev1.Affinity
		tolerations  []corev1.Toleration
		nodes        []corev1.Node
		emulate      bool
		wait         bool
	}{
		{name: "KVM works", nodes: []corev1.Node{kvmNode("a", "works", nil)}},
		// /dev/kvm exists but cannot run guests, as on the development
		// machines: TCG.
		{name: "KVM broken", nodes: []corev1.Node{kvmNode("a", "broken", nil)}, emulate: true},
		{name: "mixed: KVM, kept to KVM nodes", nodes: []corev1.Node{kvmNode("a", "broken", nil), kvmNode("b", "works", nil)}},
		{name: "not probed yet", nodes: []corev1.Node{kvmNode("a", "", nil)}, wait: true},
		{name: "one probed without KVM, one not yet", nodes: []corev1.Node{kvmNode("a", "broken", nil), kvmNode("b", "", nil)}, emulate: true},
		{name: "no nodes: the scheduler says why", emulate: true},
		{
			name:  "nodeSelector leaves only a node without KVM",
			nodes: []corev1.Node{kvmNode("a", "works", nil), kvmNode("b", "broken", gpu)}, nodeSelector: gpu, emulate: true,
		},
		{
			name:  "required affinity leaves only a node without KVM",
			nodes: []corev1.Node{kvmNode("a", "works", map[string]string{"zone": "a"}), kvmNode("b", "broken", map[string]string{"zone": "b"})}, affinity: inZoneB, emulate: true,
		},
		{
			name:  "required affinity leaves the KVM node",
			nodes: []corev1.Node{kvmNode("a", "broken", map[string]string{"zone": "a"}), kvmNode("b", "works", map[string]string{"zone": "b"})}, affinity: inZoneB,
		},
		{name: "untolerated taint", nodes: []corev1.Node{tainted, kvmNode("b", "broken", nil)}, emulate: true},
		{
			name: "tolerated taint", nodes: []corev1.Node{tainted, kvmNode("b", "broken", nil)},
			tolerations: []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "db", Effect: corev1.TaintEffectNoSchedule}},
		},
		{name: "cordoned", nodes: []corev1.Node{cordoned, kvmNode("b", "broken", nil)}, emulate: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmi := &v1alpha1.VirtualMachineInstance{}
			vmi.Spec.NodeSelector, vmi.Spec.Affinity, vmi.Spec.Tolerations = tc.nodeSelector, tc.affinity, tc.tolerations
			emulate, wait := emulationFor(vmi, tc.nodes)
			if (wait != "") != tc.wait {
				t.Fatalf("wait = %q, want waiting %v", wait, tc.wait)
			}
			if wait != "" {
				if !strings.Contains(wait, v1alpha1.KVMDevice) || !strings.Contains(wait, "podvirt-handler") {
					t.Errorf("wait %q should name the resource and the node daemon", wait)
				}
				return
			}
			if emulate != tc.emulate {
				t.Errorf("emulate = %v, want %v", emulate, tc.emulate)
			}
		})
	}
}

// TestEmulationAutoFromNodes: with EmulationAuto the reconciler reads the
// nodes' device-plugin resources as the API server stores them; explicit
// settings ignore them.
func TestEmulationAutoFromNodes(t *testing.T) {
	if startErr != nil {
		t.Fatal(startErr)
	}
	ctx := context.Background()
	ns := namespace(t)
	// A label only this test's node has keeps other tests' nodes out.
	only := map[string]string{"emulation-test": ns}
	node := kvmNode("emulation-"+ns, "", only)
	create(t, &node)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), &node) })
	// Admission taints a new node not-ready; the node lifecycle
	// controller (absent here) lifts that once the kubelet reports Ready.
	node.Spec.Taints = nil
	if err := k8s.Update(ctx, &node); err != nil {
		t.Fatalf("untaint node %s: %v", node.Name, err)
	}
	vmi := &v1alpha1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "auto"}}
	vmi.Spec.NodeSelector = only

	setKVM := func(kvm string) {
		t.Helper()
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(&node), &node); err != nil {
			t.Fatal(err)
		}
		node.Status = kvmNode(node.Name, kvm, nil).Status
		if err := k8s.Status().Update(ctx, &node); err != nil {
			t.Fatalf("write node %s status: %v", node.Name, err)
		}
	}
	// A reader straight from the API server: the test needs no cache.
	r := &VMIReconciler{Client: k8s, Config: &Config{EmulationAuto: true}}
	check := func(wantEmulate, wantWait bool) {
		t.Helper()
		emulate, wait, err := r.emulation(ctx, vmi)
		if err != nil {
			t.Fatal(err)
		}
		if (wait != "") != wantWait || (!wantWait && emulate != wantEmulate) {
			t.Errorf("emulation = %v, wait %q; want %v, waiting %v", emulate, wait, wantEmulate, wantWait)
		}
	}
	check(false, true)
	setKVM("broken")
	check(true, false)
	setKVM("works")
	check(false, false)

	r.Config = &Config{UseEmulation: true}
	check(true, false)
	r.Config = &Config{}
	setKVM("broken")
	check(false, false)
}
