package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// bindClaim plays the provisioner and PV controller: claim ns/name gets a
// disk.podvirt.io PV on node.
func bindClaim(t *testing.T, ns, name, node string) {
	t.Helper()
	ctx := context.Background()
	pvc := getPVC(t, ns, name)
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-" + string(pvc.UID)},
		Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("5Gi")},
			AccessModes:            []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: v1alpha1.CSIDriverName, VolumeHandle: "vol-" + name}},
			ClaimRef:               &corev1.ObjectReference{Namespace: ns, Name: name, UID: pvc.UID},
		},
	}
	if err := k8s.Create(ctx, pv); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), pv) })
	patch := client.MergeFrom(pvc.DeepCopy())
	pvc.Spec.VolumeName = pv.Name
	if pvc.Annotations == nil {
		pvc.Annotations = map[string]string{}
	}
	pvc.Annotations[selectedNodeAnnotation] = node
	if err := k8s.Patch(ctx, pvc, patch); err != nil {
		t.Fatal(err)
	}
	pvc.Status.Phase = corev1.ClaimBound
	if err := k8s.Status().Update(ctx, pvc); err != nil {
		t.Fatal(err)
	}
}

// snapshotClass makes the default VolumeSnapshotClass of the CSI driver
// for one test.
func snapshotClass(t *testing.T, name string) {
	t.Helper()
	c := &unstructured.Unstructured{Object: map[string]any{"driver": v1alpha1.CSIDriverName, "deletionPolicy": "Delete"}}
	c.SetGroupVersionKind(volumeSnapshotGVK.GroupVersion().WithKind("VolumeSnapshotClass"))
	c.SetName(name)
	c.SetAnnotations(map[string]string{defaultClassAnnotation: "true"})
	if err := k8s.Create(context.Background(), c); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), c) })
}

func vmSnapshot(ns, name, vm string) *v1alpha1.VirtualMachineSnapshot {
	group := v1alpha1.GroupName
	return &v1alpha1.VirtualMachineSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       v1alpha1.VirtualMachineSnapshotSpec{Source: corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VirtualMachine", Name: vm}},
	}
}

func vmRestore(ns, name, target, snapshot string) *v1alpha1.VirtualMachineRestore {
	group := v1alpha1.GroupName
	return &v1alpha1.VirtualMachineRestore{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1alpha1.VirtualMachineRestoreSpec{
			Target:                     corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VirtualMachine", Name: target},
			VirtualMachineSnapshotName: snapshot,
		},
	}
}

func waitSnapshot(t *testing.T, ns, name string, phase v1alpha1.SnapshotPhase) *v1alpha1.VirtualMachineSnapshot {
	t.Helper()
	s := &v1alpha1.VirtualMachineSnapshot{}
	polltest.Eventually(t, wait, "snapshot "+name+" is "+string(phase), func() (bool, string) {
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s); err != nil {
			return false, err.Error()
		}
		return s.Status.Phase == phase, fmt.Sprintf("%+v", s.Status)
	})
	return s
}

func waitRestore(t *testing.T, ns, name string, complete bool) *v1alpha1.VirtualMachineRestore {
	t.Helper()
	rs := &v1alpha1.VirtualMachineRestore{}
	polltest.Eventually(t, wait, fmt.Sprintf("restore %s complete=%v", name, complete), func() (bool, string) {
		if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, rs); err != nil {
			return false, err.Error()
		}
		return rs.Status.Complete != nil && *rs.Status.Complete == complete, fmt.Sprintf("%+v", rs.Status)
	})
	return rs
}

// TestSnapshotAndRestore snapshots a stopped VM, playing the snapshot
// controller, and restores it as a new VM and into itself.
func TestSnapshotAndRestore(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	snapshotClass(t, "podvirt-"+ns)
	vm := vmWithDisk(ns, "src", "src-root", v1alpha1.DiskRetain)
	vm.Spec.RunStrategy = v1alpha1.RunStrategyHalted
	if err := k8s.Create(ctx, vm); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "the disk-template claim exists", func() (bool, string) { return getPVC(t, ns, "src-root") != nil, "" })
	source := waitIdentity(t, ns, "src")
	mac := source.Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress
	bindClaim(t, ns, "src-root", "node-a")

	if err := k8s.Create(ctx, vmSnapshot(ns, "snap", "src")); err != nil {
		t.Fatal(err)
	}
	// The VM is held and the disk's VolumeSnapshot taken.
	vs := &unstructured.Unstructured{}
	vs.SetGroupVersionKind(volumeSnapshotGVK)
	var s *v1alpha1.VirtualMachineSnapshot
	polltest.Eventually(t, wait, "the VolumeSnapshot exists", func() (bool, string) {
		s = &v1alpha1.VirtualMachineSnapshot{}
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "snap"}, s); err != nil || s.Status.VirtualMachineSnapshotContentName == "" {
			return false, fmt.Sprint(err)
		}
		err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "vmsnapshot-" + string(s.UID) + "-volume-root"}, vs)
		return err == nil, fmt.Sprint(err)
	})
	if claim, _, _ := unstructured.NestedString(vs.Object, "spec", "source", "persistentVolumeClaimName"); claim != "src-root" {
		t.Errorf("VolumeSnapshot source %q, want src-root", claim)
	}
	if class, _, _ := unstructured.NestedString(vs.Object, "spec", "volumeSnapshotClassName"); class != "podvirt-"+ns {
		t.Errorf("VolumeSnapshot class %q, want the driver's default", class)
	}
	if h := getVM(t, ns, "src").Annotations[v1alpha1.SnapshotInProgressAnnotation]; h != "snap" {
		t.Errorf("the VM is held by %q while its snapshot is taken, want snap", h)
	}
	// The snapshot controller reports it ready.
	if err := unstructured.SetNestedField(vs.Object, true, "status", "readyToUse"); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Status().Update(ctx, vs); err != nil {
		t.Fatal(err)
	}
	s = waitSnapshot(t, ns, "snap", v1alpha1.SnapshotSucceeded)
	if s.Status.ReadyToUse == nil || !*s.Status.ReadyToUse || len(s.Status.Indications) != 1 || s.Status.Indications[0] != v1alpha1.IndicationOffline || s.Status.CreationTime == nil {
		t.Errorf("snapshot status %+v", s.Status)
	}
	polltest.Eventually(t, wait, "the VM is let go", func() (bool, string) {
		a := getVM(t, ns, "src").Annotations
		return a[v1alpha1.SnapshotInProgressAnnotation] == "", fmt.Sprint(a)
	})

	// As a new VM: its own claim from the snapshot, on the snapshot's node,
	// and a new MAC while the source exists.
	if err := k8s.Create(ctx, vmRestore(ns, "to-copy", "copy", "snap")); err != nil {
		t.Fatal(err)
	}
	waitRestore(t, ns, "to-copy", true)
	claim := getPVC(t, ns, "copy-root")
	if claim == nil || claim.Spec.DataSource == nil || claim.Spec.DataSource.Kind != "VolumeSnapshot" || claim.Spec.DataSource.Name != vs.GetName() {
		t.Fatalf("restored claim %+v: want one made from %s", claim, vs.GetName())
	}
	if claim.Annotations[selectedNodeAnnotation] != "node-a" || claim.Annotations[v1alpha1.DiskSourceAnnotation] != "" || claim.Labels[v1alpha1.VMNameLabel] != "copy" {
		t.Errorf("restored claim annotations %v labels %v: want node-a, no image source, VM copy", claim.Annotations, claim.Labels)
	}
	copyVM := waitIdentity(t, ns, "copy")
	if c := copyVM.Spec.Template.Spec.Volumes[0].PersistentVolumeClaim; c == nil || c.ClaimName != "copy-root" || copyVM.Spec.DiskTemplates[0].ObjectMeta.Name != "copy-root" {
		t.Errorf("restored VM's disk %+v, templates %+v: want copy-root", c, copyVM.Spec.DiskTemplates)
	}
	if m := copyVM.Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress; m == "" || m == mac {
		t.Errorf("restored VM's MAC %q: want a new one beside the source's %s", m, mac)
	}

	// Not into a VM the snapshot was not taken of.
	if err := k8s.Create(ctx, vmRestore(ns, "onto-copy", "copy", "snap")); err != nil {
		t.Fatal(err)
	}
	if rs := waitRestore(t, ns, "onto-copy", false); !strings.Contains(rs.Status.Error.Message, "is not the VM snapshot snap was taken of") {
		t.Errorf("restore onto another VM: %+v", rs.Status.Error)
	}

	// Into the source itself: its claim is made again from the snapshot
	// and its spec set back.
	src := getVM(t, ns, "src")
	patch := client.MergeFrom(src.DeepCopy())
	src.Spec.Template.Spec.Domain.Memory.Guest = resource.MustParse("128Mi")
	if err := k8s.Patch(ctx, src, patch); err != nil {
		t.Fatal(err)
	}
	old := getPVC(t, ns, "src-root")
	if err := k8s.Create(ctx, vmRestore(ns, "in-place", "src", "snap")); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "the old claim is deleted", func() (bool, string) {
		c := getPVC(t, ns, "src-root")
		if c != nil && c.UID == old.UID && c.DeletionTimestamp != nil && len(c.Finalizers) > 0 {
			// There is no controller-manager to see no pod uses it.
			c.Finalizers = nil
			_ = k8s.Update(ctx, c)
		}
		return c == nil || c.UID != old.UID, "old claim still there"
	})
	waitRestore(t, ns, "in-place", true)
	restored := getPVC(t, ns, "src-root")
	if restored == nil || restored.Spec.DataSource == nil || restored.Spec.DataSource.Name != vs.GetName() {
		t.Fatalf("claim after the restore %+v: want one made from the snapshot", restored)
	}
	polltest.Eventually(t, wait, "the source VM is set back and let go", func() (bool, string) {
		v := getVM(t, ns, "src")
		mem := v.Spec.Template.Spec.Domain.Memory.Guest
		return mem.Cmp(resource.MustParse("64Mi")) == 0 && !heldBySnapshot(v) && v.Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress == mac,
			fmt.Sprintf("memory %s, annotations %v", mem.String(), v.Annotations)
	})

	// Deleting the VM keeps its snapshot, which still restores.
	deleteVM(t, ns, "src")
	if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "snap"}, &v1alpha1.VirtualMachineSnapshot{}); err != nil {
		t.Fatalf("the snapshot went with its VM: %v", err)
	}
	if err := k8s.Create(ctx, vmRestore(ns, "after-delete", "reborn", "snap")); err != nil {
		t.Fatal(err)
	}
	waitRestore(t, ns, "after-delete", true)
	// The source is gone: the restored VM may have its MAC back.
	if m := waitIdentity(t, ns, "reborn").Spec.Template.Spec.Domain.Devices.Interfaces[0].MACAddress; m != mac {
		t.Errorf("VM restored after its source was deleted has MAC %q, want the source's %s", m, mac)
	}
}

// TestSnapshotOnline snapshots a running VM, playing the node daemon: the
// controller asks for the disks' switch in the VMI's status, records how
// the guest was held, and takes the VolumeSnapshots of the frozen layers.
// A switch the node daemon could not make fails the snapshot.
func TestSnapshotOnline(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	snapshotClass(t, "podvirt-"+ns)
	if err := k8s.Create(ctx, vmWithDisk(ns, "live", "live-root", v1alpha1.DiskRetain)); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "the disk-template claim exists", func() (bool, string) { return getPVC(t, ns, "live-root") != nil, "" })
	bindClaim(t, ns, "live-root", "node-a")
	vmi := waitVMI(t, ns, "live", "", v1alpha1.Scheduling)
	runVMI(t, vmi)

	node := func(snapshot string, state v1alpha1.SnapshotState) *v1alpha1.SnapshotState {
		t.Helper()
		var asked *v1alpha1.SnapshotState
		polltest.Eventually(t, wait, "the controller asks VMI live for snapshot "+snapshot, func() (bool, string) {
			s := &v1alpha1.VirtualMachineSnapshot{}
			if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: snapshot}, s); err != nil {
				return false, err.Error()
			}
			asked = getVMI(t, ns, "live").Status.SnapshotState
			return asked != nil && asked.SnapshotUID == s.UID, fmt.Sprintf("%+v", asked)
		})
		cur := getVMI(t, ns, "live")
		patch := client.MergeFrom(cur.DeepCopy())
		state.SnapshotUID, state.Layers = asked.SnapshotUID, asked.Layers
		cur.Status.SnapshotState = &state
		if err := k8s.Status().Patch(ctx, cur, patch); err != nil {
			t.Fatal(err)
		}
		return asked
	}

	if err := k8s.Create(ctx, vmSnapshot(ns, "hot", "live")); err != nil {
		t.Fatal(err)
	}
	asked := node("hot", v1alpha1.SnapshotState{Completed: true, GuestAgent: true, Quiesced: true, FrozenMilliseconds: 40})
	if len(asked.Layers) != 1 || !strings.HasPrefix(asked.Layers["root"], "layer-vmsnapshot-") || asked.FreezeTimeoutMilliseconds <= 0 {
		t.Errorf("the controller asked %+v; want the root disk frozen at its VolumeSnapshot's layer", asked)
	}
	vs := &unstructured.Unstructured{}
	vs.SetGroupVersionKind(volumeSnapshotGVK)
	polltest.Eventually(t, wait, "the VolumeSnapshot of the frozen layer exists", func() (bool, string) {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(volumeSnapshotGVK.GroupVersion().WithKind("VolumeSnapshotList"))
		if err := k8s.List(ctx, list, client.InNamespace(ns)); err != nil || len(list.Items) != 1 {
			return false, fmt.Sprint(err)
		}
		*vs = list.Items[0]
		return true, ""
	})
	if want := "layer-" + vs.GetName() + ".img"; asked.Layers["root"] != want {
		t.Errorf("layer %s, want %s: the CSI driver finds it by the VolumeSnapshot's name", asked.Layers["root"], want)
	}
	if err := unstructured.SetNestedField(vs.Object, true, "status", "readyToUse"); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Status().Update(ctx, vs); err != nil {
		t.Fatal(err)
	}
	s := waitSnapshot(t, ns, "hot", v1alpha1.SnapshotSucceeded)
	want := []v1alpha1.Indication{v1alpha1.IndicationOnline, v1alpha1.IndicationGuestAgent, v1alpha1.IndicationQuiesced}
	if fmt.Sprint(s.Status.Indications) != fmt.Sprint(want) {
		t.Errorf("indications %v, want %v", s.Status.Indications, want)
	}
	if heldBySnapshot(getVM(t, ns, "live")) {
		t.Error("an online snapshot held the running VM")
	}

	// Restored as a new VM, it does not start by itself.
	if err := k8s.Create(ctx, vmRestore(ns, "hot-copy", "cold", "hot")); err != nil {
		t.Fatal(err)
	}
	waitRestore(t, ns, "hot-copy", true)
	if rs := getVM(t, ns, "cold").Spec.RunStrategy; rs != v1alpha1.RunStrategyHalted {
		t.Errorf("a VM restored from a running VM's snapshot has run strategy %s, want Halted", rs)
	}

	// The node daemon could not switch: the snapshot fails saying why.
	if err := k8s.Create(ctx, vmSnapshot(ns, "broken", "live")); err != nil {
		t.Fatal(err)
	}
	node("broken", v1alpha1.SnapshotState{Error: "disk vda: no space left"})
	if s := waitSnapshot(t, ns, "broken", v1alpha1.SnapshotFailed); !strings.Contains(s.Status.Error.Message, "no space left") {
		t.Errorf("failed switch: %+v", s.Status.Error)
	}
}

// TestSnapshotRefusals: a missing VM, a restore of a failed snapshot and a
// restore onto another VM's name each fail with a reason, and leave the
// VM free.
func TestSnapshotRefusals(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	if err := k8s.Create(ctx, testVM(ns, "other", v1alpha1.RunStrategyHalted)); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Create(ctx, vmSnapshot(ns, "of-nothing", "nothing")); err != nil {
		t.Fatal(err)
	}
	if s := waitSnapshot(t, ns, "of-nothing", v1alpha1.SnapshotFailed); !strings.Contains(s.Status.Error.Message, "does not exist") {
		t.Errorf("snapshot of a missing VM: %+v", s.Status.Error)
	}
	// A failed snapshot cannot be restored; nor can one onto another VM.
	if err := k8s.Create(ctx, vmRestore(ns, "from-failed", "new", "of-nothing")); err != nil {
		t.Fatal(err)
	}
	if rs := waitRestore(t, ns, "from-failed", false); !strings.Contains(rs.Status.Error.Message, "failed") {
		t.Errorf("restore of a failed snapshot: %+v", rs.Status.Error)
	}
	// The finalizers are gone: deleting them is immediate.
	for _, o := range []client.Object{&v1alpha1.VirtualMachineSnapshot{}, &v1alpha1.VirtualMachineRestore{}} {
		if err := k8s.DeleteAllOf(ctx, o, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
	}
	polltest.Eventually(t, wait, "snapshots and restores are gone", func() (bool, string) {
		err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "of-nothing"}, &v1alpha1.VirtualMachineSnapshot{})
		return apierrors.IsNotFound(err), fmt.Sprint(err)
	})
	if heldBySnapshot(getVM(t, ns, "other")) {
		t.Error("a refused snapshot left a VM held")
	}
}
