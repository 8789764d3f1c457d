package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// setNodeReady creates node name or writes its Ready condition, as its
// kubelet (Ready) or the node lifecycle controller (Unknown) does.
func setNodeReady(t *testing.T, name string, status corev1.ConditionStatus) {
	t.Helper()
	ctx := context.Background()
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(node), node); err != nil {
		if err := k8s.Create(ctx, node); err != nil {
			t.Fatalf("create node %s: %v", name, err)
		}
		t.Cleanup(func() { _ = k8s.Delete(context.Background(), node) })
	}
	reason, msg := "KubeletReady", "kubelet is posting ready status"
	if status != corev1.ConditionTrue {
		reason, msg = "NodeStatusUnknown", "Kubelet stopped posting node status."
	}
	polltest.Eventually(t, wait, "node "+name+" Ready="+string(status), func() (bool, string) {
		cur := &corev1.Node{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(node), cur); err != nil {
			return false, err.Error()
		}
		cur.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status, Reason: reason, Message: msg, LastTransitionTime: metav1.Now(), LastHeartbeatTime: metav1.Now()}}
		err := k8s.Status().Update(ctx, cur)
		return err == nil, fmt.Sprint(err)
	})
}

// TestNodeLost: the VMI of a node that stops being Ready is Unknown, not
// Running, with a Ready condition (and the VM's) that names the node; back
// when the node is; and when the node comes back with the VM's pod dead (a
// power loss), the VMI fails and a VM that runs Always gets a new one.
func TestNodeLost(t *testing.T) {
	ns := namespace(t)
	const name, node = "stranded", "node-lost"
	setNodeReady(t, node, corev1.ConditionTrue)
	create(t, testVM(ns, name, v1alpha1.RunStrategyAlways))
	vmi := waitVMI(t, ns, name, "", "")
	pod := launcherPodOf(t, vmi)
	schedule(t, pod, node)
	setPodStatus(t, pod, corev1.PodRunning, true, 0)
	waitVMI(t, ns, name, "", v1alpha1.Scheduled)
	reportDomain(t, vmi, v1alpha1.DomainRunning, "10.0.0.5")
	waitVMI(t, ns, name, "", v1alpha1.Running)

	setNodeReady(t, node, corev1.ConditionUnknown)
	got := waitVMI(t, ns, name, "", v1alpha1.Unknown)
	ready := meta.FindStatusCondition(got.Status.Conditions, ConditionReady)
	if ready == nil || ready.Status != metav1.ConditionFalse || ready.Reason != ReasonNodeUnreachable ||
		!strings.Contains(ready.Message, "node "+node+" is not ready") || !strings.Contains(ready.Message, "Kubelet stopped posting node status") {
		t.Errorf("Ready condition of the VMI on a lost node: %+v", ready)
	}
	vm := waitVMStatus(t, ns, name, v1alpha1.PrintableStatusUnknown)
	if c := meta.FindStatusCondition(vm.Status.Conditions, ConditionReady); c == nil || c.Reason != ReasonNodeUnreachable || !strings.Contains(c.Message, node) {
		t.Errorf("Ready condition of the VM on a lost node: %+v", c)
	}
	waitEvent(t, ns, name, ReasonNodeUnreachable)

	// A partition heals: the VM ran on.
	setNodeReady(t, node, corev1.ConditionTrue)
	got = waitVMI(t, ns, name, "", v1alpha1.Running)
	if got.Status.Reason != "" || got.Status.Message != "" {
		t.Errorf("the VMI back from a lost node keeps reason %q, message %q", got.Status.Reason, got.Status.Message)
	}
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusRunning)

	// A power loss: lost, then back with the launcher's pod failed.
	setNodeReady(t, node, corev1.ConditionUnknown)
	waitVMI(t, ns, name, "", v1alpha1.Unknown)
	setNodeReady(t, node, corev1.ConditionTrue)
	setPodStatus(t, pod, corev1.PodFailed, false, 137)
	waitVMI(t, ns, name, got.UID, "")
}
