package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestLifecycle: stop, start, restart, pause/unpause through podvirtctl;
// delete with the disk retained; a new VM on the retained PVC sees what the
// first one wrote.
func TestLifecycle(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 30*time.Minute)
	const name = "life"
	createVM(ctx, t, stack.VM(name, v1.RunStrategyAlways))
	t.Cleanup(func() { deleteVM(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	// Paused is not Ready: the VMI says so with its conditions.
	podvirtctl(ctx, t, "pause", "vm", name)
	waitConditions(ctx, t, name, "pause", v1.DomainPaused, metav1.ConditionFalse, true)
	podvirtctl(ctx, t, "unpause", "vm", name)
	waitConditions(ctx, t, name, "unpause", v1.DomainRunning, metav1.ConditionTrue, false)

	// A VM is a pet: restart and stop/start keep its MAC and address.
	identity := stack.L2Identity(vmi)
	podvirtctl(ctx, t, "restart", name)
	vmi = waitNewVMI(ctx, t, name, vmi.UID)
	sameIdentity(ctx, t, name, identity, "restart")

	podvirtctl(ctx, t, "stop", name)
	waitNoVMI(ctx, t, name)
	podvirtctl(ctx, t, "start", name)
	waitNewVMI(ctx, t, name, vmi.UID)
	sameIdentity(ctx, t, name, identity, "stop and start")

	// Data survives the VM: write, delete the VM (disks are retained by
	// default), boot a new VM on the same PVC, read.
	token := fmt.Sprintf("podvirt-data-%d", time.Now().UnixNano())
	if out, err := st.RunInConsole(ctx, name, "echo "+token+" > /root/data && sync", 3*time.Minute); err != nil {
		t.Fatalf("writing data: %v\n%s", err, out)
	}
	deleteVM(t, name)
	pvc := &corev1.PersistentVolumeClaim{}
	if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name + "-root"}, pvc); err != nil {
		t.Fatalf("the disk of deleted vm %s was not retained: %v", name, err)
	}
	const second = "life-again"
	vm := stack.VM(second, v1.RunStrategyAlways)
	vm.Spec.DiskTemplates = nil
	vm.Spec.Template.Spec.Volumes[0].PersistentVolumeClaim.ClaimName = name + "-root"
	createVM(ctx, t, vm)
	t.Cleanup(func() {
		deleteVM(t, second)
		_ = st.Client.Delete(context.Background(), pvc)
	})
	if _, err := st.WaitRunning(ctx, second, 12*time.Minute); err != nil {
		t.Fatal(err)
	}
	out, err := st.RunInConsole(ctx, second, "cat /root/data", 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, token) {
		t.Fatalf("the new VM on the retained disk does not see %s:\n%s", token, out)
	}
}

// waitConditions waits until the VMI's domain is in state, its Ready
// condition has ready, and it has a Paused condition or not.
func waitConditions(ctx context.Context, t *testing.T, name, after string, state v1.DomainState, ready metav1.ConditionStatus, paused bool) {
	t.Helper()
	var conds []metav1.Condition
	if err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
		v, err := getVMI(ctx, name)
		if err != nil || v.Status.Domain == nil || v.Status.Domain.State != state {
			return false, err
		}
		conds = v.Status.Conditions
		r := meta.FindStatusCondition(conds, "Ready")
		p := meta.FindStatusCondition(conds, "Paused")
		return r != nil && r.Status == ready && (p != nil && p.Status == metav1.ConditionTrue) == paused, nil
	}); err != nil {
		t.Fatalf("after %s: want domain %s, Ready %s, Paused condition %v; conditions %+v: %v", after, state, ready, paused, conds, err)
	}
}

// sameIdentity waits until the VM runs with an L2 address and checks its
// MAC and address are want.
func sameIdentity(ctx context.Context, t *testing.T, name, want, after string) {
	t.Helper()
	vmi, err := st.WaitRunning(ctx, name, 8*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if got := stack.L2Identity(vmi); got != want {
		t.Fatalf("after %s, vm %s has L2 %s; before, %s", after, name, got, want)
	}
	t.Logf("after %s, vm %s kept L2 %s", after, name, want)
}

// TestRunStrategies: Always replaces a VMI whose guest powered off;
// Halted stops it; RerunOnFailure replaces one whose launcher was killed.
func TestRunStrategies(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 30*time.Minute)
	const name = "strategy"
	createVM(ctx, t, stack.VM(name, v1.RunStrategyAlways))
	t.Cleanup(func() { deleteVM(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}

	// Always: the guest powers itself off → a new VMI.
	if out, err := st.RunInConsole(ctx, name, "poweroff", time.Minute); err != nil && !strings.Contains(out, "poweroff") {
		t.Fatalf("poweroff: %v", err)
	}
	vmi = waitNewVMI(ctx, t, name, vmi.UID)

	// RerunOnFailure: kill the launcher → Failed → a new VMI.
	vm := &v1.VirtualMachine{}
	if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(vm.DeepCopy())
	vm.Spec.RunStrategy = v1.RunStrategyRerunOnFailure
	if err := st.Client.Patch(ctx, vm, patch); err != nil {
		t.Fatal(err)
	}
	if _, err := st.WaitRunning(ctx, name, 8*time.Minute); err != nil {
		t.Fatal(err)
	}
	killLauncher(ctx, t, vmi)
	if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
		v, err := getVMI(ctx, name)
		if apierrors.IsNotFound(err) {
			return true, nil // already replaced
		}
		return err == nil && (v.UID != vmi.UID || v.Status.Phase == v1.Failed), err
	}); err != nil {
		t.Fatalf("killed launcher: VMI never Failed: %v", err)
	}
	vmi = waitNewVMI(ctx, t, name, vmi.UID)

	// Halted: stops it.
	if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	patch = client.MergeFrom(vm.DeepCopy())
	vm.Spec.RunStrategy = v1.RunStrategyHalted
	if err := st.Client.Patch(ctx, vm, patch); err != nil {
		t.Fatal(err)
	}
	waitNoVMI(ctx, t, name)
}

// killLauncher SIGKILLs the launcher process of vmi on the node (the test
// runs on the node), as a crash would.
func killLauncher(ctx context.Context, t *testing.T, vmi *v1.VirtualMachineInstance) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "pgrep", "-f", "podvirt-launcher").Output()
	if err != nil {
		t.Fatalf("no launcher process found: %v", err)
	}
	killed := 0
	for _, pid := range strings.Fields(string(out)) {
		env, err := os.ReadFile("/proc/" + pid + "/environ")
		if err != nil || !strings.Contains(string(env), "PODVIRT_VMI_UID="+string(vmi.UID)) {
			continue
		}
		if err := exec.CommandContext(ctx, "kill", "-9", pid).Run(); err == nil {
			killed++
		}
	}
	if killed == 0 {
		t.Fatalf("no launcher process of vmi %s (uid %s) among %q", vmi.Name, vmi.UID, out)
	}
}
