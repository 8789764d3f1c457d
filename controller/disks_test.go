package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// vmWithDisk is a VM whose root disk comes from a disk template.
func vmWithDisk(ns, name, disk string, policy v1alpha1.DiskRetentionPolicy) *v1alpha1.VirtualMachine {
	vm := testVM(ns, name, v1alpha1.RunStrategyAlways)
	vm.Spec.DiskRetentionPolicy = policy
	vm.Spec.DiskTemplates = []v1alpha1.DiskTemplate{{
		ObjectMeta: v1alpha1.DiskTemplateMeta{
			Name: disk,
			Annotations: map[string]string{
				v1alpha1.DiskSourceAnnotation:   "docker://podvirt.local/os/debian:12",
				v1alpha1.DiskChecksumAnnotation: "sha256:0123",
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("5Gi")}},
		},
	}}
	vm.Spec.Template.Spec.Volumes[0].VolumeSource = v1alpha1.VolumeSource{
		PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: disk},
	}
	return vm
}

func getPVC(t *testing.T, ns, name string) *corev1.PersistentVolumeClaim {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, pvc); apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return pvc
}

func deleteVM(t *testing.T, ns, name string) {
	t.Helper()
	if err := k8s.Delete(context.Background(), getVM(t, ns, name)); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "VM "+name+" is gone", func() (bool, string) {
		err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, &v1alpha1.VirtualMachine{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
}

// podUsesClaim reports whether the VMI's launcher pod mounts the PVC.
func podUsesClaim(t *testing.T, ns, vmName, claim string) {
	t.Helper()
	vmi := waitVMI(t, ns, vmName, "", "")
	pod := launcherPodOf(t, vmi)
	for _, v := range pod.Spec.Volumes {
		if v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == claim {
			return
		}
	}
	t.Fatalf("launcher pod %s does not use PVC %s", pod.Name, claim)
}

// TestDiskRetention deletes VMs and checks their disk-template PVCs are kept
// (the default) for a new VM to use, or deleted when asked.
func TestDiskRetention(t *testing.T) {
	ns := namespace(t)

	create(t, vmWithDisk(ns, "db", "db-root", ""))
	polltest.Eventually(t, wait, "the disk template's PVC exists", func() (bool, string) {
		pvc := getPVC(t, ns, "db-root")
		if pvc == nil {
			return false, "no PVC"
		}
		return pvc.Annotations[v1alpha1.DiskSourceAnnotation] == "docker://podvirt.local/os/debian:12" &&
			pvc.Annotations[v1alpha1.DiskChecksumAnnotation] == "sha256:0123" &&
			pvc.Labels[v1alpha1.VMNameLabel] == "db", fmt.Sprintf("%v %v", pvc.Labels, pvc.Annotations)
	})
	podUsesClaim(t, ns, "db", "db-root")
	if vm := getVM(t, ns, "db"); vm.Spec.DiskRetentionPolicy != v1alpha1.DiskRetain || !slices.Contains(vm.Status.DiskClaims, "db-root") {
		t.Fatalf("retention %q, diskClaims %v", vm.Spec.DiskRetentionPolicy, vm.Status.DiskClaims)
	}
	original := getPVC(t, ns, "db-root").UID

	// Deleting the VM stops it and keeps the disk.
	deleteVM(t, ns, "db")
	waitNoVMI(t, ns, "db")
	if pvc := getPVC(t, ns, "db-root"); pvc == nil || pvc.DeletionTimestamp != nil || pvc.UID != original {
		t.Fatalf("retained PVC: %+v", pvc)
	}

	// A new VM names the retained PVC as a volume: accepted, and runs on it.
	reuse := testVM(ns, "db-again", v1alpha1.RunStrategyAlways)
	reuse.Spec.Template.Spec.Volumes[0].VolumeSource = v1alpha1.VolumeSource{
		PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: "db-root"},
	}
	create(t, reuse)
	podUsesClaim(t, ns, "db-again", "db-root")
	deleteVM(t, ns, "db-again")

	// A new VM with a disk template of the same name adopts the PVC.
	create(t, vmWithDisk(ns, "db-new", "db-root", v1alpha1.DiskRetain))
	podUsesClaim(t, ns, "db-new", "db-root")
	polltest.Eventually(t, wait, "the retained PVC is adopted", func() (bool, string) {
		pvc := getPVC(t, ns, "db-root")
		return pvc.UID == original && pvc.Labels[v1alpha1.VMNameLabel] == "db-new", fmt.Sprint(pvc.Labels)
	})
	waitEvent(t, ns, "db-new", "DiskReused")

	// While db-new lives, another VM may not take its disk.
	create(t, vmWithDisk(ns, "thief", "db-root", v1alpha1.DiskRetain))
	waitEvent(t, ns, "thief", ReasonDiskInUse)
	noVMIFor(t, ns, "thief", 0)
	deleteVM(t, ns, "thief")
	deleteVM(t, ns, "db-new")

	// DiskRetentionPolicy Delete: the disk goes with the VM.
	create(t, vmWithDisk(ns, "scratch", "scratch-root", v1alpha1.DiskDelete))
	podUsesClaim(t, ns, "scratch", "scratch-root")
	deleteVM(t, ns, "scratch")
	polltest.Eventually(t, wait, "the PVC is deleted with its VM", func() (bool, string) {
		pvc := getPVC(t, ns, "scratch-root")
		// Without a kube-controller-manager the pvc-protection finalizer
		// stays; a deletion timestamp is what the controller can do.
		return pvc == nil || pvc.DeletionTimestamp != nil, "PVC still there"
	})
	if pvc := getPVC(t, ns, "db-root"); pvc == nil || pvc.DeletionTimestamp != nil {
		t.Fatal("the retained PVC went with another VM")
	}
}
