package e2e

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestSnapshotRestore sees the guest agent connected (AgentConnected,
// guestosinfo), then snapshots the running VM twice with podvirtctl: with
// the guest agent freezing its filesystems, then with the agent hung (the
// guest is paused instead and runs on). Markers written between the
// snapshots tell them apart: the first restored as a new VM sees only the
// first marker, the second restored into the stopped VM itself sees the
// first two. A third snapshot with the guest's memory, restored into the
// VM, resumes a counter the guest ran in RAM. The snapshots outlive the
// VMs' restarts and are deleted last.
func TestSnapshotRestore(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	const name, copyName = "snap-src", "snap-copy"
	createVM(ctx, t, stack.VM(name, v1.RunStrategyAlways))
	t.Cleanup(func() {
		deleteVM(t, name)
		deleteVM(t, copyName)
		ctx := context.Background()
		in := client.InNamespace(stack.Namespace)
		_ = st.Client.DeleteAllOf(ctx, &v1.VirtualMachineRestore{}, in)
		_ = st.Client.DeleteAllOf(ctx, &v1.VirtualMachineSnapshot{}, in)
		for _, claim := range []string{name + "-root", copyName + "-root"} {
			_ = st.Client.Delete(ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: claim}})
		}
	})
	old, err := st.WaitRunning(ctx, name, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	inGuest := func(vm, cmd, want string) string {
		t.Helper()
		out, err := st.RunInConsole(ctx, vm, cmd, 3*time.Minute)
		if err != nil || !strings.Contains(out, want) {
			t.Fatalf("vm %s: %s: %v; want %q in:\n%s", vm, cmd, err, want, out)
		}
		return out
	}
	// snapshot takes snapshot snap (with flags after a "--") and checks
	// its indications.
	snapshot := func(snap string, indications ...string) {
		t.Helper()
		args := []string{"snapshot", name, snap}
		if i := slices.Index(indications, "--"); i >= 0 {
			args, indications = append(args, indications[i+1:]...), indications[:i]
		}
		start := time.Now()
		out := podvirtctl(ctx, t, args...)
		for _, want := range append([]string{"snapshotted as " + snap}, indications...) {
			if !strings.Contains(out, want) {
				t.Errorf("podvirtctl snapshot %s said %q; want %q in it", snap, out, want)
			}
		}
		t.Logf("snapshot %s of a running VM ready in %s: %s", snap, time.Since(start).Round(time.Millisecond), strings.TrimSpace(out))
	}
	// The guest agent is connected and says which OS the guest runs.
	if err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
		vmi, err := getVMI(ctx, name)
		return err == nil && meta.IsStatusConditionTrue(vmi.Status.Conditions, v1.VMIConditionAgentConnected) && vmi.Status.GuestOSInfo != nil, nil
	}); err != nil {
		t.Fatalf("vm %s: no AgentConnected condition and guestOSInfo: %v", name, err)
	}
	if out := podvirtctl(ctx, t, "guestosinfo", name); !strings.Contains(out, `"kernelRelease": "`) {
		t.Errorf("podvirtctl guestosinfo said:\n%s", out)
	}
	// Console commands stay short: a line the serial terminal wraps can
	// reach the shell broken.
	inGuest(name, "echo first-marker >/marker1; sync", "")
	snapshot("frozen", "Online", "GuestAgent", "Quiesced")
	inGuest(name, "echo second-marker >/marker2; sync", "")
	inGuest(name, "kill -STOP $(pidof qemu-ga)", "")
	snapshot("paused", "Online", "NoGuestAgent", "Paused")
	inGuest(name, "kill -CONT $(pidof qemu-ga)", "")
	inGuest(name, "echo third-marker >/marker3; sync", "")
	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)

	if out := podvirtctl(ctx, t, "restore", name, "frozen", "--to", copyName); !strings.Contains(out, "restored as vm "+copyName) {
		t.Errorf("podvirtctl restore --to said:\n%s", out)
	}
	if out := podvirtctl(ctx, t, "restore", name, "paused"); !strings.Contains(out, "restored from snapshot paused") {
		t.Errorf("podvirtctl restore said:\n%s", out)
	}
	podvirtctl(ctx, t, "start", name)
	podvirtctl(ctx, t, "start", copyName)
	waitNewVMI(ctx, t, name, old.UID)
	waitVMIRunning(ctx, t, copyName)
	// The copy has the first marker only, the VM the first two.
	for vm, second := range map[string]bool{copyName: false, name: true} {
		out := inGuest(vm, "cat /marker*", "first-marker")
		if strings.Contains(out, "second-marker") != second || strings.Contains(out, "third-marker") {
			t.Errorf("vm %s restored from its snapshot reads %q; want the second marker: %v, and nothing written after", vm, out, second)
		}
	}
	copyVMI, err := getVMI(ctx, copyName)
	if err != nil {
		t.Fatal(err)
	}
	srcVMI, err := getVMI(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if a, b := copyVMI.Status.Interfaces, srcVMI.Status.Interfaces; len(a) == 0 || len(b) == 0 || a[0].MAC == b[0].MAC {
		t.Errorf("the restored copy's NICs %+v share a MAC with the source's %+v", a, b)
	}

	// With its memory: a counter running in RAM goes on after the restore,
	// from where it was, instead of a boot.
	deleteVM(t, copyName)
	inGuest(name, "while :;do date>/tmp/c;sleep 1;done & true", "") // "&;" would not parse
	snapshot("memory", "Online", "MemoryIncluded", "--", "--include-memory", "--delete-with-vm")
	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)
	podvirtctl(ctx, t, "restore", name, "memory")
	podvirtctl(ctx, t, "start", name)
	waitNewVMI(ctx, t, name, srcVMI.UID)
	if out := inGuest(name, "cat /tmp/c || echo no-$((1+1))", ""); strings.Contains(out, "no-2") {
		t.Errorf("vm %s restored from a snapshot with its memory booted instead of resuming:\n%s", name, out)
	}

	// Deleting the VM deletes the snapshot it owns (--delete-with-vm) and
	// keeps the others.
	deleteVM(t, name)
	if err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: "memory"}, &v1.VirtualMachineSnapshot{})
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Errorf("the snapshot taken with --delete-with-vm outlived its VM: %v", err)
	}
	for _, kept := range []string{"frozen", "paused"} {
		if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: kept}, &v1.VirtualMachineSnapshot{}); err != nil {
			t.Errorf("snapshot %s went with its VM: %v", kept, err)
		}
	}
}
