package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

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

// annotateClaim sets (nil: removes) annotations on a PVC, as the CSI
// driver does while it imports.
func annotateClaim(t *testing.T, ns, name string, annotations map[string]*string) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		t.Fatal(err)
	}
	pvc := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}}
	polltest.Eventually(t, wait, "PVC "+name+" annotated", func() (bool, string) {
		err := k8s.Patch(context.Background(), pvc, client.RawPatch(types.MergePatchType, patch))
		return err == nil, fmt.Sprint(err)
	})
}

// importing is the annotations of an import under way.
func importing(progress, mirror string) map[string]*string {
	return map[string]*string{
		v1alpha1.ImportPhaseAnnotation:    new(string(v1alpha1.ImportImporting)),
		v1alpha1.ImportProgressAnnotation: &progress,
		v1alpha1.ImportMirrorAnnotation:   &mirror,
		v1alpha1.ImportErrorAnnotation:    nil,
	}
}

// waitDisksReady waits for the VM's printable status and a DisksReady
// condition of that status and reason whose message holds msg.
func waitDisksReady(t *testing.T, ns, name string, printable v1alpha1.VirtualMachinePrintableStatus, status metav1.ConditionStatus, reason, msg string) *metav1.Condition {
	t.Helper()
	var c *metav1.Condition
	polltest.Eventually(t, wait, fmt.Sprintf("VM %s is %s, DisksReady %s %s %q", name, printable, status, reason, msg), func() (bool, string) {
		vm := getVM(t, ns, name)
		c = meta.FindStatusCondition(vm.Status.Conditions, ConditionDisksReady)
		if c == nil {
			return false, fmt.Sprintf("%s, no DisksReady", vm.Status.PrintableStatus)
		}
		return vm.Status.PrintableStatus == printable && c.Status == status && c.Reason == reason && strings.Contains(c.Message, msg),
			fmt.Sprintf("%s, DisksReady %s %s %q", vm.Status.PrintableStatus, c.Status, c.Reason, c.Message)
	})
	return c
}

// TestVMShowsDiskImport: while the CSI driver imports a VM's disk the VM
// is Provisioning, its DisksReady condition saying how far and from where;
// once the import succeeded it is Starting, then Running.
func TestVMShowsDiskImport(t *testing.T) {
	ns := namespace(t)
	create(t, vmWithDisk(ns, "web", "web-root", ""))

	// The PVC is Pending and no import has reported yet.
	waitDisksReady(t, ns, "web", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskClaimPending,
		"pvc web-root: waiting for its volume and the import of docker://podvirt.local/os/debian:12 (claim Pending)")

	annotateClaim(t, ns, "web-root", importing("42.0%", "mirror.example:5000"))
	waitDisksReady(t, ns, "web", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskImporting,
		"pvc web-root: importing 42.0% from mirror.example:5000")

	annotateClaim(t, ns, "web-root", map[string]*string{
		v1alpha1.ImportPhaseAnnotation:  new(string(v1alpha1.ImportRetrying)),
		v1alpha1.ImportErrorAnnotation:  new("registry mirror.example:5000 unreachable (retrying)"),
		v1alpha1.ImportMirrorAnnotation: nil,
	})
	waitDisksReady(t, ns, "web", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskImporting,
		"pvc web-root: import retrying at 42.0%: registry mirror.example:5000 unreachable (retrying)")

	// Succeeded: the claim is not Bound yet (here it never is: no PV
	// controller), but its volume is made.
	annotateClaim(t, ns, "web-root", map[string]*string{
		v1alpha1.ImportPhaseAnnotation:    new(string(v1alpha1.ImportSucceeded)),
		v1alpha1.ImportProgressAnnotation: new("100.0%"),
		v1alpha1.ImportErrorAnnotation:    nil,
	})
	waitDisksReady(t, ns, "web", v1alpha1.PrintableStatusStarting, metav1.ConditionTrue, ReasonDisksReady, "")
	if n := len(events(t, ns, "web", ReasonDiskImportFailed)); n != 0 {
		t.Errorf("%d %s events on a VM whose import succeeded", n, ReasonDiskImportFailed)
	}

	runVMI(t, waitVMI(t, ns, "web", "", ""))
	waitVMStatus(t, ns, "web", v1alpha1.PrintableStatusRunning)
}

// TestVMShowsDiskImportFailure: a failed import makes the VM
// ErrorDiskImport, with the PVC's error in its DisksReady condition and a
// Warning event; the user's fix starts the import again.
func TestVMShowsDiskImportFailure(t *testing.T) {
	ns := namespace(t)
	create(t, vmWithDisk(ns, "db", "db-root", ""))
	const why = "import docker://podvirt.local/os/debian:12 for volume \"pvc-1\" failed and will not be retried: manifest unknown. Fix the claim's disk.podvirt.io/source (or disk.podvirt.io/checksum) annotation and create the claim again"
	annotateClaim(t, ns, "db-root", map[string]*string{
		v1alpha1.ImportPhaseAnnotation:    new(string(v1alpha1.ImportFailed)),
		v1alpha1.ImportProgressAnnotation: new(""),
		v1alpha1.ImportErrorAnnotation:    new(why),
	})
	c := waitDisksReady(t, ns, "db", v1alpha1.PrintableStatusDiskImportFailure, metav1.ConditionFalse, ReasonDiskImportFailed, why)
	if want := "pvc db-root: import failed: " + why; c.Message != want {
		t.Errorf("DisksReady message %q, want %q", c.Message, want)
	}
	if note := waitEvent(t, ns, "db", ReasonDiskImportFailed); !strings.Contains(note, "db-root") || !strings.Contains(note, why) {
		t.Errorf("%s event %q does not name the PVC and its error", ReasonDiskImportFailed, note)
	}
	// The VM stays put, and does not repeat itself.
	polltest.Consistently(t, time.Second, "the VM stays ErrorDiskImport", func() (bool, string) {
		vm := getVM(t, ns, "db")
		return vm.Status.PrintableStatus == v1alpha1.PrintableStatusDiskImportFailure, string(vm.Status.PrintableStatus)
	})
	// Once per new message; a reconcile that read the VM from a cache
	// not yet showing its own status write may say it a second time.
	if n := len(events(t, ns, "db", ReasonDiskImportFailed)); n < 1 || n > 2 {
		t.Errorf("%d %s events, want 1 (2 at most, from a stale cache)", n, ReasonDiskImportFailed)
	}

	annotateClaim(t, ns, "db-root", importing("", ""))
	waitDisksReady(t, ns, "db", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskImporting,
		"pvc db-root: importing from docker://podvirt.local/os/debian:12")
}

// TestVMShowsContainerDiskImport: the PVC a containerDisk's launcher pod
// makes counts too, found through the VMI's volume status.
func TestVMShowsContainerDiskImport(t *testing.T) {
	ns := namespace(t)
	create(t, testVM(ns, "cd", v1alpha1.RunStrategyAlways))
	vmi := waitVMI(t, ns, "cd", "", v1alpha1.Scheduling)
	pod := launcherPodOf(t, vmi)
	var tmpl *corev1.PersistentVolumeClaimTemplate
	for _, v := range pod.Spec.Volumes {
		if v.Ephemeral != nil {
			tmpl = v.Ephemeral.VolumeClaimTemplate
		}
	}
	if tmpl == nil || tmpl.Labels[v1alpha1.VMNameLabel] != "cd" {
		t.Fatalf("the containerDisk's claim template %+v is not labelled with its VM", tmpl)
	}
	if len(vmi.Status.VolumeStatus) != 1 || vmi.Status.VolumeStatus[0].ClaimName == "" {
		t.Fatalf("volume status %+v names no claim", vmi.Status.VolumeStatus)
	}
	claim := vmi.Status.VolumeStatus[0].ClaimName
	waitDisksReady(t, ns, "cd", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskClaimPending,
		"pvc "+claim+": does not exist yet")
	// The PVC Kubernetes makes from the template, as its ephemeral
	// volume controller would.
	create(t, &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: claim, Namespace: ns, Labels: tmpl.Labels, Annotations: tmpl.Annotations},
		Spec:       tmpl.Spec,
	})
	annotateClaim(t, ns, claim, importing("7.5%", "podvirt.local"))
	waitDisksReady(t, ns, "cd", v1alpha1.PrintableStatusProvisioning, metav1.ConditionFalse, ReasonDiskImporting,
		"pvc "+claim+": importing 7.5% from podvirt.local")
	annotateClaim(t, ns, claim, map[string]*string{v1alpha1.ImportPhaseAnnotation: new(string(v1alpha1.ImportSucceeded))})
	waitDisksReady(t, ns, "cd", v1alpha1.PrintableStatusStarting, metav1.ConditionTrue, ReasonDisksReady, "")
}

// TestClaimState judges PVCs by their phase and import annotations.
func TestClaimState(t *testing.T) {
	pvc := func(phase corev1.PersistentVolumeClaimPhase, annotations map[string]string) *corev1.PersistentVolumeClaim {
		return &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Name: "root", Annotations: annotations}, Status: corev1.PersistentVolumeClaimStatus{Phase: phase}}
	}
	phase := func(p v1alpha1.DiskImportPhase, kv ...string) map[string]string {
		a := map[string]string{v1alpha1.ImportPhaseAnnotation: string(p)}
		for i := 0; i+1 < len(kv); i += 2 {
			a[kv[i]] = kv[i+1]
		}
		return a
	}
	tests := []struct {
		name  string
		pvc   *corev1.PersistentVolumeClaim
		state diskState
		note  string
	}{
		{"bound", pvc(corev1.ClaimBound, phase(v1alpha1.ImportImporting)), diskReady, ""},
		{"empty disk pending", pvc(corev1.ClaimPending, nil), diskClaimPending, "pvc root: waiting for its volume (claim Pending): kubectl describe pvc root says why"},
		{"succeeded, not bound yet", pvc(corev1.ClaimPending, phase(v1alpha1.ImportSucceeded)), diskReady, ""},
		{"size unknown", pvc(corev1.ClaimPending, phase(v1alpha1.ImportImporting, v1alpha1.ImportProgressAnnotation, "")), diskImporting, "pvc root: importing"},
		{"interrupted", pvc(corev1.ClaimPending, phase(v1alpha1.ImportPending, v1alpha1.ImportProgressAnnotation, "3.0%")), diskImporting,
			"pvc root: import interrupted at 3.0%, resumes when the CSI driver is back"},
		{"failed", pvc(corev1.ClaimPending, phase(v1alpha1.ImportFailed, v1alpha1.ImportErrorAnnotation, "bad checksum")), diskImportFailed, "pvc root: import failed: bad checksum"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			state, note := claimState(tt.pvc)
			if state != tt.state || note != tt.note {
				t.Errorf("claimState: %d %q, want %d %q", state, note, tt.state, tt.note)
			}
		})
	}
	d := disks{state: diskImportFailed, notes: []diskNote{{diskImporting, "pvc a: importing"}, {diskImportFailed, "pvc b: import failed: x"}}}
	if got, want := d.message(), "pvc b: import failed: x; pvc a: importing"; got != want {
		t.Errorf("message %q, want %q (failures first)", got, want)
	}
}
