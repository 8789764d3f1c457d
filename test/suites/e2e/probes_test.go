package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/runtime/launcher"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestProbes: a VM's readiness probe (HTTP to its guest through the pod
// network) decides its VMI's Ready condition, and a liveness probe (a
// command through QEMU's guest agent) that fails stops the guest, after
// which the VM's run strategy starts a new VMI.
func TestProbes(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	const name = "probed"
	vm := stack.VM(name, v1.RunStrategyAlways)
	spec := &vm.Spec.Template.Spec
	spec.Networks = []v1.Network{{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
	spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "default", Ports: []v1.Port{{Name: "http", Port: stack.VMPort}}}}
	spec.ReadinessProbe = &v1.Probe{
		HTTPGet:       &corev1.HTTPGetAction{Path: "/index.html", Port: intstr.FromString("http")},
		PeriodSeconds: 2, FailureThreshold: 1,
	}
	// Held off while the TCG guest boots (its agent starts last), quick
	// to act once it has.
	spec.LivenessProbe = &v1.Probe{
		Exec:                &corev1.ExecAction{Command: []string{"/bin/sh", "-c", "test ! -e /tmp/dead"}},
		InitialDelaySeconds: 90, PeriodSeconds: 2, FailureThreshold: 5, TimeoutSeconds: 5,
	}
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })

	vmi := waitReady(ctx, t, name, metav1.ConditionTrue, "", 10*time.Minute)
	uid := vmi.UID

	// The guest's server stops: not Ready, saying why; back, Ready again.
	if out, err := st.RunInConsole(ctx, name, "killall httpd", 3*time.Minute); err != nil {
		t.Fatalf("%v; console:\n%s", err, out)
	}
	vmi = waitReady(ctx, t, name, metav1.ConditionFalse, "GET /index.html", 2*time.Minute)
	if vmi.UID != uid || vmi.Status.Phase != v1.Running {
		t.Fatalf("a failing readiness probe changed the VMI: uid %s → %s, phase %s", uid, vmi.UID, vmi.Status.Phase)
	}
	if out, err := st.RunInConsole(ctx, name, fmt.Sprintf("httpd -p %d -h /tmp", stack.VMPort), 3*time.Minute); err != nil {
		t.Fatalf("%v; console:\n%s", err, out)
	}
	waitReady(ctx, t, name, metav1.ConditionTrue, "", 2*time.Minute)

	// The liveness probe's command fails: the guest is stopped and the VM
	// starts a new VMI.
	if out, err := st.RunInConsole(ctx, name, "touch /tmp/dead", 3*time.Minute); err != nil {
		t.Fatalf("%v; console:\n%s", err, out)
	}
	waitNewVMI(ctx, t, name, uid)
	events := &corev1.EventList{}
	if err := st.Client.List(ctx, events, client.InNamespace(stack.Namespace), client.MatchingFields{"involvedObject.uid": string(uid)}); err != nil {
		t.Fatal(err)
	}
	var seen []string
	for _, e := range events.Items {
		if strings.Contains(e.Message, launcher.ReasonLivenessProbeFailed) && strings.Contains(e.Message, "test ! -e /tmp/dead: exit status 1") {
			return
		}
		seen = append(seen, e.Reason+": "+e.Message)
	}
	t.Errorf("no event of VMI %s says its liveness probe failed; events:\n%s", uid, strings.Join(seen, "\n"))
}

// waitReady waits until the VM's VMI has Ready status (and, when False,
// a ReadinessProbeFailed reason whose message holds msg).
func waitReady(ctx context.Context, t *testing.T, name string, status metav1.ConditionStatus, msg string, timeout time.Duration) *v1.VirtualMachineInstance {
	t.Helper()
	var vmi *v1.VirtualMachineInstance
	err := stack.Poll(ctx, timeout, func() (bool, error) {
		v, err := getVMI(ctx, name)
		if err != nil {
			return false, client.IgnoreNotFound(err)
		}
		vmi = v
		c := meta.FindStatusCondition(v.Status.Conditions, controller.ConditionReady)
		if c == nil || c.Status != status {
			return false, nil
		}
		return status == metav1.ConditionTrue || (c.Reason == controller.ReasonGuestNotReady && strings.Contains(c.Message, msg)), nil
	})
	if err != nil {
		var conds []string
		if vmi != nil {
			for _, c := range vmi.Status.Conditions {
				conds = append(conds, fmt.Sprintf("%s=%s (%s: %s)", c.Type, c.Status, c.Reason, c.Message))
			}
		}
		t.Fatalf("vm %s: VMI not Ready=%s (%q) within %s: %v; conditions: %s", name, status, msg, timeout, err, strings.Join(conds, "; "))
	}
	return vmi
}
