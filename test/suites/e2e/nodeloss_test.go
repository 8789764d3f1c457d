package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestNodePowerLoss powers off the node a VM runs on (every process of it
// dies at once): within the node-monitor grace period the VMI is Unknown,
// not Running, and the VM's status names the node that is down and the
// disk waiting there. Powered on again, the node brings the VM (runStrategy
// Always) back on it, with what the guest wrote to its disk.
func TestNodePowerLoss(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 25*time.Minute)
	lost := twoNodes(t)[1].Name // not the first: that one is the machine itself
	moveControllerOff(ctx, t, lost)
	const name = "powerloss"
	vm := stack.VM(name, v1.RunStrategyAlways)
	vm.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: lost}
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	out, err := st.RunInConsole(ctx, name, "echo podvirt-survived > /marker && sync && cat /marker", 3*time.Minute)
	if err != nil || !strings.Contains(out, "podvirt-survived") {
		t.Fatalf("writing a marker on vm %s's disk: %v\n%s", name, err, out)
	}

	// Whatever happens below, the node is powered on again for the tests
	// after this one.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		if err := st.Cluster.StartNode(ctx, lost); err != nil {
			t.Errorf("power node %s on again: %v", lost, err)
		}
	})
	off := time.Now()
	if err := st.Cluster.StopNode(ctx, lost); err != nil {
		t.Fatal(err)
	}
	var cur *v1.VirtualMachineInstance
	if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
		cur, err = getVMI(ctx, name)
		return err == nil && cur.Status.Phase == v1.Unknown, nil
	}); err != nil {
		t.Fatalf("vmi %s on powered-off node %s is not Unknown after 3 minutes (phase %s): %v", name, lost, cur.Status.Phase, err)
	}
	t.Logf("node %s off → vmi %s Unknown after %s: %s", lost, name, time.Since(off).Round(time.Second), cur.Status.Message)
	got := &v1.VirtualMachine{}
	if err := stack.Poll(ctx, time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, got)
		return err == nil && got.Status.PrintableStatus == v1.PrintableStatusUnknown, err
	}); err != nil {
		t.Errorf("vm %s: printable status %q, want %q: %v", name, got.Status.PrintableStatus, v1.PrintableStatusUnknown, err)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, controller.ConditionReady); c == nil || c.Reason != controller.ReasonNodeUnreachable ||
		!strings.Contains(c.Message, "node "+lost) || !strings.Contains(c.Message, name+"-root") {
		t.Errorf("vm %s's Ready condition does not say its node %s is down with its disk: %+v", name, lost, c)
	}

	if err := st.Cluster.StartNode(ctx, lost); err != nil {
		t.Fatal(err)
	}
	back := waitNewVMI(ctx, t, name, vmi.UID)
	t.Logf("node %s on → vm %s Running again after %s", lost, name, time.Since(off).Round(time.Second))
	if back.Status.NodeName != lost {
		t.Errorf("vm %s came back on %s, away from its disk on %s", name, back.Status.NodeName, lost)
	}
	if out, err := st.RunInConsole(ctx, name, "cat /marker", 3*time.Minute); err != nil || !strings.Contains(out, "podvirt-survived") {
		t.Errorf("vm %s's disk lost what the guest wrote before the power loss: %v\n%s", name, err, out)
	}
}

// moveControllerOff makes sure the controller does not run on node (it
// must outlive the node's power loss): its pod there is deleted while the
// node is cordoned, and its replacement comes up elsewhere.
func moveControllerOff(ctx context.Context, t *testing.T, node string) {
	t.Helper()
	pod := controllerPod(ctx, t)
	if pod == nil {
		t.Fatal("no controller pod")
	}
	if pod.Spec.NodeName != node {
		return
	}
	cordon := func(on bool) error {
		n := &corev1.Node{}
		if err := st.Client.Get(ctx, client.ObjectKey{Name: node}, n); err != nil {
			return err
		}
		patch := client.MergeFrom(n.DeepCopy())
		n.Spec.Unschedulable = on
		return st.Client.Patch(ctx, n, patch)
	}
	if err := cordon(true); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := cordon(false); err != nil {
			t.Errorf("uncordon %s: %v", node, err)
		}
	}()
	if err := st.Client.Delete(ctx, pod); err != nil {
		t.Fatal(err)
	}
	if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
		p := controllerPod(ctx, t)
		if p == nil || p.UID == pod.UID || p.Spec.NodeName == node {
			return false, nil
		}
		for _, c := range p.Status.Conditions {
			if c.Type == corev1.PodReady && c.Status == corev1.ConditionTrue {
				return true, nil
			}
		}
		return false, nil
	}); err != nil {
		t.Fatalf("the controller did not come up off node %s: %v", node, err)
	}
}

// controllerPod is the controller's pod (the newest, while one replaces
// another), or nil.
func controllerPod(ctx context.Context, t *testing.T) *corev1.Pod {
	t.Helper()
	pods := &corev1.PodList{}
	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "controller"}); err != nil {
		t.Fatal(err)
	}
	var newest *corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.DeletionTimestamp == nil && (newest == nil || newest.CreationTimestamp.Before(&p.CreationTimestamp)) {
			newest = p
		}
	}
	return newest
}
