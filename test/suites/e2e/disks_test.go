package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	csidriver "github.com/podvirt/podvirt/csi/driver"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestDiskCachePerNode: each node's image cache is its own. From an image
// no node has, the first disk on each node is imported through the mirrors
// and the second on that node is provisioned from its cache: its PVC binds
// without a download (the CSI driver's ImportCompleted event says so, and
// no progress shows).
func TestDiskCachePerNode(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 25*time.Minute)
	source, err := st.Mirrors.PushFresh(ctx, fmt.Sprintf("cache-%d", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	for i, node := range st.Cluster.Nodes() {
		names := []string{fmt.Sprintf("cache-%d-first", i+1), fmt.Sprintf("cache-%d-second", i+1)}
		for _, n := range names {
			t.Cleanup(func() { deleteVM(t, n) })
			start := time.Now()
			bindDisk(ctx, t, n, func(vm *v1.VirtualMachine) {
				vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] = source
				vm.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node.Name}
			})
			t.Logf("node %s: vm %s: disk bound after %s", node.Name, n, time.Since(start).Round(time.Millisecond))
		}
		first, second := names[0]+"-root", names[1]+"-root"
		for _, e := range importEvents(ctx, t, first) {
			if e.Reason == csidriver.ReasonImportCompleted && strings.Contains(e.Message, csidriver.FromCache) {
				t.Errorf("node %s: pvc %s, the node's first disk of a new image, came from a cache: %s", node.Name, first, e.Message)
			}
		}
		for _, e := range importEvents(ctx, t, second) {
			if e.Reason == csidriver.ReasonImportProgress ||
				e.Reason == csidriver.ReasonImportCompleted && !strings.Contains(e.Message, csidriver.FromCache) {
				t.Errorf("node %s: pvc %s was not provisioned from the node's cache: %s: %s", node.Name, second, e.Reason, e.Message)
			}
		}
	}
}

// TestDiskPlacement: a VM's disk is made on the node its VM was scheduled
// to, and the VM goes back to that node when it starts again, even when it
// now prefers another: the PV's node affinity decides.
func TestDiskPlacement(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	nodes := twoNodes(t)
	home, other := nodes[1].Name, nodes[0].Name
	const name = "placed"
	t.Cleanup(func() { deleteVM(t, name) })
	bindDisk(ctx, t, name, func(vm *v1.VirtualMachine) {
		vm.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: home}
	})
	vmi, err := st.WaitRunning(ctx, name, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if vmi.Status.NodeName != home {
		t.Fatalf("vm %s runs on %s, want %s (its nodeSelector)", name, vmi.Status.NodeName, home)
	}
	pvc := &corev1.PersistentVolumeClaim{}
	if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name + "-root"}, pvc); err != nil {
		t.Fatal(err)
	}
	pv := &corev1.PersistentVolume{}
	if err := st.Client.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, pv); err != nil {
		t.Fatal(err)
	}
	if affinity := fmt.Sprint(pv.Spec.NodeAffinity); !strings.Contains(affinity, home) || strings.Contains(affinity, "["+other+"]") {
		t.Errorf("pv %s is not pinned to node %s: node affinity %s", pv.Name, home, affinity)
	}

	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)
	vm := &v1.VirtualMachine{}
	if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	before := vm.DeepCopy()
	vm.Spec.Template.Spec.NodeSelector = nil
	vm.Spec.Template.Spec.Affinity = &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
		PreferredDuringSchedulingIgnoredDuringExecution: []corev1.PreferredSchedulingTerm{{
			Weight: 100,
			Preference: corev1.NodeSelectorTerm{MatchExpressions: []corev1.NodeSelectorRequirement{{
				Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{other},
			}}},
		}},
	}}
	if err := st.Client.Patch(ctx, vm, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	podvirtctl(ctx, t, "start", name)
	if vmi, err = st.WaitRunning(ctx, name, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	if vmi.Status.NodeName != home {
		t.Errorf("vm %s started again on %s, away from its disk on %s", name, vmi.Status.NodeName, home)
	}
}

// bindDisk creates the halted VM name with the guest disk (changed by
// each of edits) and starts it, so its PVC gets a consumer
// (WaitForFirstConsumer), and waits until the PVC is Bound.
func bindDisk(ctx context.Context, t *testing.T, name string, edits ...func(*v1.VirtualMachine)) {
	t.Helper()
	vm := stack.VM(name, v1.RunStrategyHalted)
	for _, edit := range edits {
		edit(vm)
	}
	createVM(ctx, t, vm)
	podvirtctl(ctx, t, "start", name)
	pvc := &corev1.PersistentVolumeClaim{}
	if err := stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name + "-root"}, pvc)
		return err == nil && pvc.Status.Phase == corev1.ClaimBound, client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("pvc %s-root not Bound: %v", name, err)
	}
}
