package e2e

import (
	"context"
	"fmt"
	"slices"
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
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestVMShowsDiskImport: a VM whose disk is still being made shows
// Provisioning before it starts, with its disks named in the DisksReady
// condition; a VM whose image has no disk shows ErrorDiskImport with the
// import's refusal copied onto it.
func TestVMShowsDiskImport(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)

	// The image is pushed only once the VM shows its import waiting: an
	// import of a few hundred milliseconds could end between two looks.
	// Until then the tag is on no mirror that is up, and the other is
	// down, so the import is retried rather than refused.
	tag := fmt.Sprintf("status-%d", time.Now().UnixNano())
	const name = "provisioned"
	vm := stack.VM(name, v1.RunStrategyAlways)
	vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] = stack.GuestSourceTagged(tag)
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	var seen []string
	got := &v1.VirtualMachine{}
	pushed := false
	if err := stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		if err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, got); err != nil {
			return false, err
		}
		status := string(got.Status.PrintableStatus)
		if status == string(v1.PrintableStatusProvisioning) {
			if c := meta.FindStatusCondition(got.Status.Conditions, controller.ConditionDisksReady); c != nil {
				status += " (" + c.Message + ")"
			}
		}
		if len(seen) == 0 || seen[len(seen)-1] != status {
			seen = append(seen, status)
		}
		if !pushed && got.Status.PrintableStatus == v1.PrintableStatusProvisioning {
			if _, err := st.Mirrors.PushFresh(ctx, tag); err != nil {
				return false, err
			}
			pushed = true
		}
		return got.Status.PrintableStatus == v1.PrintableStatusRunning, nil
	}); err != nil {
		t.Fatalf("vm %s not Running; statuses seen: %v: %v", name, seen, err)
	}
	t.Logf("vm %s went through %v", name, seen)
	if !slices.ContainsFunc(seen, func(s string) bool {
		return strings.HasPrefix(s, string(v1.PrintableStatusProvisioning)) && strings.Contains(s, name+"-root")
	}) {
		t.Errorf("vm %s was never Provisioning with its disk named before it ran: %v", name, seen)
	}

	broken, err := st.Mirrors.PushNotADisk(ctx, fmt.Sprintf("nodisk-%d", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	const failing = "import-fails"
	vm = stack.VM(failing, v1.RunStrategyAlways)
	vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] = broken
	createVM(ctx, t, vm)
	// Its claim never binds: it goes with the VM, unlike the disks other
	// tests retain (TestUninstall checks those stay Bound).
	t.Cleanup(func() {
		claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: failing + "-root"}}
		ctx := context.Background()
		if err := st.Client.Delete(ctx, claim); client.IgnoreNotFound(err) != nil {
			t.Errorf("delete pvc %s: %v", claim.Name, err)
		}
		if err := stack.Poll(ctx, time.Minute, func() (bool, error) {
			return apierrors.IsNotFound(st.Client.Get(ctx, client.ObjectKeyFromObject(claim), claim)), nil
		}); err != nil {
			t.Errorf("pvc %s still there a minute after its delete: %v", claim.Name, err)
		}
	})
	t.Cleanup(func() { deleteVM(t, failing) })
	if err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: failing}, got)
		return err == nil && got.Status.PrintableStatus == v1.PrintableStatusDiskImportFailure, err
	}); err != nil {
		t.Fatalf("vm %s from an image without a disk: printable status %q, want %q: %v", failing, got.Status.PrintableStatus, v1.PrintableStatusDiskImportFailure, err)
	}
	c := meta.FindStatusCondition(got.Status.Conditions, controller.ConditionDisksReady)
	if c == nil || c.Reason != controller.ReasonDiskImportFailed || !strings.Contains(c.Message, failing+"-root") || !strings.Contains(c.Message, "/disk/") {
		t.Errorf("vm %s's DisksReady condition does not carry the import's refusal: %+v", failing, c)
	}
}
