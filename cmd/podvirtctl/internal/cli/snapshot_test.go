package cli

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestSnapshotRefuses: podvirtctl refuses, before it creates anything, a
// snapshot of a missing VM, a restore into a running VM, a restore of a
// snapshot of another VM and one onto a VM that exists; each error says
// what to do.
func TestSnapshotRefuses(t *testing.T) {
	ns := namespace(t)
	running := testVM(ns, "running", v1.RunStrategyManual)
	create(t, running)
	ownVMI(t, running, v1.Running)
	create(t, testVM(ns, "other", v1.RunStrategyHalted))
	group := v1.GroupName
	create(t, &v1.VirtualMachineSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "of-running"},
		Spec:       v1.VirtualMachineSnapshotSpec{Source: corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VirtualMachine", Name: "running"}},
	})
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"snapshot", "missing", "s"}, "missing"},
		{[]string{"restore", "running", "of-running"}, "or restore as a new VM with --to"},
		{[]string{"restore", "other", "of-running"}, "snapshot of-running is of vm running, not other"},
		{[]string{"restore", "running", "of-running", "--to", "other"}, "vm other exists already"},
		{[]string{"restore", "running", "nothing"}, "snapshot nothing does not exist"},
	} {
		out, err := podvirtctl(t, ns, tc.args...)
		if err == nil || !strings.Contains(out+err.Error(), tc.want) {
			t.Errorf("podvirtctl %s: %v; want an error with %q:\n%s", strings.Join(tc.args, " "), err, tc.want, out)
		}
	}
	list := &v1.VirtualMachineRestoreList{}
	if err := k8s.List(t.Context(), list, client.InNamespace(ns)); err != nil || len(list.Items) != 0 {
		t.Errorf("refused restores left %d VirtualMachineRestores (%v)", len(list.Items), err)
	}
}

// TestGuestOSInfo prints the VMI's guestOSInfo, and refuses a VMI whose
// agent is not connected, saying so.
func TestGuestOSInfo(t *testing.T) {
	ns := namespace(t)
	vm := testVM(ns, "agent", v1.RunStrategyManual)
	create(t, vm)
	ownVMI(t, vm, v1.Running)
	if out, err := podvirtctl(t, ns, "guestosinfo", "agent"); err == nil || !strings.Contains(out+err.Error(), "the guest agent is not connected") {
		t.Errorf("guestosinfo without an agent: %v\n%s", err, out)
	}
	vmi := getVMI(t, ns, "agent")
	vmi.Status.Conditions = []metav1.Condition{{Type: v1.VMIConditionAgentConnected, Status: metav1.ConditionTrue, Reason: "GuestAgentConnected", LastTransitionTime: metav1.Now()}}
	vmi.Status.GuestOSInfo = &v1.GuestOSInfo{ID: "debian", KernelRelease: "6.1.0-test"}
	if err := k8s.Status().Update(t.Context(), vmi); err != nil {
		t.Fatal(err)
	}
	out, err := podvirtctl(t, ns, "guestosinfo", "agent")
	if err != nil || !strings.Contains(out, `"kernelRelease": "6.1.0-test"`) || !strings.Contains(out, `"id": "debian"`) {
		t.Errorf("guestosinfo: %v\n%s", err, out)
	}
}
