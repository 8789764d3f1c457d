package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestSnapshotRestore writes a marker in a guest, snapshots the stopped VM
// with podvirtctl, writes a second marker, and restores the snapshot as a
// new VM and into the VM itself: both boot seeing the first marker only.
// The snapshot outlives the VMs and is deleted last.
func TestSnapshotRestore(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	const name, copyName, snap = "snap-src", "snap-copy", "before"
	createVM(ctx, t, stack.VM(name, v1.RunStrategyAlways))
	t.Cleanup(func() {
		deleteVM(t, name)
		deleteVM(t, copyName)
		ctx := context.Background()
		in := client.InNamespace(stack.Namespace)
		_ = st.Client.DeleteAllOf(ctx, &v1.VirtualMachineRestore{}, in)
		_ = st.Client.Delete(ctx, &v1.VirtualMachineSnapshot{ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: snap}})
		for _, claim := range []string{name + "-root", copyName + "-root"} {
			_ = st.Client.Delete(ctx, &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: claim}})
		}
	})
	if _, err := st.WaitRunning(ctx, name, 10*time.Minute); err != nil {
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
	inGuest(name, "echo first-marker > /marker1 && sync && cat /marker1", "first-marker")
	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)

	start := time.Now()
	if out := podvirtctl(ctx, t, "snapshot", name, snap); !strings.Contains(out, "snapshotted as "+snap) || !strings.Contains(out, "Offline") {
		t.Errorf("podvirtctl snapshot said:\n%s", out)
	}
	t.Logf("snapshot of a stopped VM ready in %s", time.Since(start).Round(time.Millisecond))

	podvirtctl(ctx, t, "start", name)
	old := waitVMIRunning(ctx, t, name)
	inGuest(name, "echo second-marker > /marker2 && sync && cat /marker2", "second-marker")
	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)

	// Both restores, then both VMs boot at once.
	if out := podvirtctl(ctx, t, "restore", name, snap, "--to", copyName); !strings.Contains(out, "restored as vm "+copyName) {
		t.Errorf("podvirtctl restore --to said:\n%s", out)
	}
	if out := podvirtctl(ctx, t, "restore", name, snap); !strings.Contains(out, "restored from snapshot "+snap) {
		t.Errorf("podvirtctl restore said:\n%s", out)
	}
	podvirtctl(ctx, t, "start", name)
	podvirtctl(ctx, t, "start", copyName)
	waitNewVMI(ctx, t, name, old.UID)
	waitVMIRunning(ctx, t, copyName)
	for _, vm := range []string{name, copyName} {
		out := inGuest(vm, "cat /marker1; ls /marker2 2>&1", "first-marker")
		if !strings.Contains(out, "No such file") {
			t.Errorf("vm %s restored from the snapshot has the marker written after it:\n%s", vm, out)
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
}
