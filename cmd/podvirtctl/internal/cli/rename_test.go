package cli

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// TestRename renames stopped VMs with the real controller: the new VM has
// the old one's spec (its MAC) and disk claims, the old one is gone; a
// rename written without the client (as a killed podvirtctl leaves it) is
// finished by the controller; a taken name and a running VM are refused,
// by podvirtctl and by the controller.
func TestRename(t *testing.T) {
	if startErr != nil {
		t.Fatal(startErr)
	}
	ctx := context.Background()
	ns := controlledNS
	t.Cleanup(func() {
		for _, name := range []string{"web", "frontend", "db", "db-2", "cache", "cache-2", "taken", "busy", "lone"} {
			_ = k8s.Delete(context.Background(), &v1.VirtualMachine{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}})
		}
		_ = k8s.DeleteAllOf(context.Background(), &corev1.PersistentVolumeClaim{}, client.InNamespace(ns), client.MatchingLabels{"test": "rename"})
	})
	create := func(name string, strategy v1.RunStrategy) *v1.VirtualMachine {
		vm := testVM(ns, name, strategy)
		fs := corev1.PersistentVolumeFilesystem
		vm.Spec.DiskTemplates = []v1.DiskTemplate{{
			ObjectMeta: v1.DiskTemplateMeta{Name: name + "-data", Labels: map[string]string{"test": "rename"}},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}, VolumeMode: &fs,
				Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		}}
		if err := k8s.Create(ctx, vm); err != nil {
			t.Fatal(err)
		}
		polltest.Eventually(t, 30*time.Second, "VM "+name+" has its MAC and its disk", func() (bool, string) {
			vm = getVM(t, ns, name)
			ifcs := vm.Spec.Template.Spec.Domain.Devices.Interfaces
			return len(ifcs) > 0 && ifcs[0].MACAddress != "" && len(vm.Status.DiskClaims) == 1, fmt.Sprintf("interfaces %v, disks %v", ifcs, vm.Status.DiskClaims)
		})
		return vm
	}
	renamedTo := func(old *v1.VirtualMachine, to string) {
		t.Helper()
		polltest.Eventually(t, 30*time.Second, "VM "+old.Name+" is renamed to "+to, func() (bool, string) {
			err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: old.Name}, &v1.VirtualMachine{})
			vm := &v1.VirtualMachine{}
			newErr := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: to}, vm)
			return apierrors.IsNotFound(err) && newErr == nil && vm.Status.PrintableStatus == v1.PrintableStatusStopped,
				fmt.Sprintf("old: %v; new: %v %s", err, newErr, vm.Status.PrintableStatus)
		})
		vm := getVM(t, ns, to)
		if got, want := vm.Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress, old.Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress; got != want {
			t.Errorf("VM %s has MAC %s; want %s's %s", to, got, old.Name, want)
		}
		pvc := &corev1.PersistentVolumeClaim{}
		if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: old.Name + "-data"}, pvc); err != nil || pvc.Labels[v1.VMNameLabel] != to {
			t.Errorf("claim %s-data after the rename: %v, labels %v; want it kept and labelled %s", old.Name, err, pvc.Labels, to)
		}
	}

	web := create("web", v1.RunStrategyHalted)
	out, err := podvirtctl(t, ns, "rename", "web", "frontend")
	if err != nil || !strings.Contains(out, "vm web renamed to frontend") {
		t.Fatalf("podvirtctl rename web frontend: %v\n%s", err, out)
	}
	renamedTo(web, "frontend")
	for name, reason := range map[string]string{"web": "Renaming", "frontend": "Renamed"} {
		polltest.Eventually(t, 10*time.Second, "a "+reason+" event on VM "+name, func() (bool, string) {
			events := &corev1.EventList{}
			err := k8s.List(ctx, events, client.InNamespace(ns), client.MatchingFields{"involvedObject.name": name, "reason": reason})
			return err == nil && len(events.Items) > 0, fmt.Sprint(err)
		})
	}

	// What a podvirtctl killed right after its one write leaves.
	db := create("db", v1.RunStrategyManual)
	patch := client.MergeFrom(db.DeepCopy())
	db.Annotations = map[string]string{v1.RenameToAnnotation: "db-2"}
	if err := k8s.Patch(ctx, db, patch); err != nil {
		t.Fatal(err)
	}
	renamedTo(db, "db-2")

	// What a controller stopped right after making the new VM leaves: the
	// new VM, inert while the old one exists, and the old one still asking.
	cache := create("cache", v1.RunStrategyHalted)
	half := &v1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "cache-2", Annotations: map[string]string{v1.RenamedFromAnnotation: "cache"}},
		Spec:       *cache.Spec.DeepCopy(),
	}
	if err := k8s.Create(ctx, half); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, 30*time.Second, "the half-made VM waits, Renaming", func() (bool, string) {
		vm := getVM(t, ns, "cache-2")
		return vm.Status.PrintableStatus == v1.PrintableStatusRenaming && len(vm.Status.DiskClaims) == 0, string(vm.Status.PrintableStatus)
	})
	patch = client.MergeFrom(cache.DeepCopy())
	cache.Annotations = map[string]string{v1.RenameToAnnotation: "cache-2"}
	if err := k8s.Patch(ctx, cache, patch); err != nil {
		t.Fatal(err)
	}
	renamedTo(cache, "cache-2")

	create("taken", v1.RunStrategyHalted)
	lone := create("lone", v1.RunStrategyHalted)
	if _, err := podvirtctl(t, ns, "rename", "lone", "taken"); err == nil || !strings.Contains(err.Error(), "exists already") {
		t.Errorf("rename onto a taken name: %v; want a refusal", err)
	}
	busy := testVM(ns, "busy", v1.RunStrategyAlways)
	if err := k8s.Create(ctx, busy); err != nil {
		t.Fatal(err)
	}
	if _, err := podvirtctl(t, ns, "rename", "busy", "calm"); err == nil || !strings.Contains(err.Error(), "stop it first") {
		t.Errorf("rename of a VM that runs: %v; want a refusal saying to stop it", err)
	}
	// The controller refuses too, whoever writes the request.
	patch = client.MergeFrom(lone.DeepCopy())
	lone.Annotations = map[string]string{v1.RenameToAnnotation: "taken"}
	if err := k8s.Patch(ctx, lone, patch); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, 30*time.Second, "the controller refuses renaming lone onto taken", func() (bool, string) {
		vm := getVM(t, ns, "lone")
		return vm.Annotations[v1.RenameToAnnotation] == "", fmt.Sprint(vm.Annotations)
	})
	if vm := getVM(t, ns, "taken"); vm.Annotations[v1.RenamedFromAnnotation] != "" {
		t.Errorf("the VM taken was marked as a rename's: %v", vm.Annotations)
	}
}
