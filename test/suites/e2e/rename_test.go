package e2e

import (
	"os/exec"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestRename renames a VM that ran: refused while it runs, then stopped,
// renamed with podvirtctl, and started under its new name, it runs from
// the same disk (the same PV) with the same MAC and L2 address.
func TestRename(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const old, renamed = "rename-me", "renamed"
	createVM(ctx, t, stack.VM(old, v1.RunStrategyAlways))
	t.Cleanup(func() { deleteVM(t, old); deleteVM(t, renamed) })
	before, err := st.WaitRunning(ctx, old, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	claim := &corev1.PersistentVolumeClaim{}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: old + "-root"}, claim); err != nil {
		t.Fatal(err)
	}
	pv := claim.Spec.VolumeName

	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	kube := []string{"-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig()}
	if out, err := exec.CommandContext(ctx, bin, append(kube, "rename", old, renamed)...).CombinedOutput(); err == nil || !strings.Contains(string(out), "stop it first") {
		t.Errorf("rename of a running VM: %v; want a refusal saying to stop it:\n%s", err, out)
	}
	podvirtctl(ctx, t, "stop", old)
	waitNoVMI(ctx, t, old)
	if out := podvirtctl(ctx, t, "rename", old, renamed); !strings.Contains(out, "renamed to "+renamed) {
		t.Errorf("podvirtctl rename said:\n%s", out)
	}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: old}, &v1.VirtualMachine{}); !apierrors.IsNotFound(err) {
		t.Errorf("VM %s after the rename: %v; want it gone", old, err)
	}
	podvirtctl(ctx, t, "start", renamed)
	after, err := st.WaitRunning(ctx, renamed, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if b, a := before.Status.Interfaces[0], after.Status.Interfaces[0]; a.MAC != b.MAC || a.IP != b.IP {
		t.Errorf("renamed VM's NIC %s %s; want the old one's %s %s", a.MAC, a.IP, b.MAC, b.IP)
	}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: old + "-root"}, claim); err != nil {
		t.Fatal(err)
	}
	if claim.Spec.VolumeName != pv || claim.Labels[v1.VMNameLabel] != renamed {
		t.Errorf("claim %s: PV %s, labels %v; want PV %s, labelled %s", claim.Name, claim.Spec.VolumeName, claim.Labels, pv, renamed)
	}
}
