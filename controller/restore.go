package controller

import (
	"context"
	"fmt"
	"maps"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	crhandler "sigs.k8s.io/controller-runtime/pkg/handler"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// Restore events.
const (
	ReasonRestoreSucceeded = "RestoreSucceeded"
	ReasonRestoreFailed    = "RestoreFailed"
)

// RestoreReconciler drives VirtualMachineRestores: claims made from the
// snapshot's VolumeSnapshots (on podvirt's volumes, overlays on the frozen
// layers: O(1)) and the VM set back to the snapshot's spec.
//
// Into the snapshot's own VM (stopped, held meanwhile): each disk's claim
// is deleted and made again, of the same name, from its snapshot. As a new
// VM: claims NEW-VOLUME, and the VM made last, so it finds its disks; it
// gets new MACs and addresses while the snapshot's VM still exists.
// Neither starts the VM: it keeps its run strategy, or a new one is Halted
// (Manual stays Manual).
type RestoreReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  eventRecorder
}

// SetupWithManager watches restores.
func (r *RestoreReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("restore").
		For(&v1alpha1.VirtualMachineRestore{}).
		Watches(&v1alpha1.VirtualMachineSnapshot{}, crhandler.EnqueueRequestsFromMapFunc(r.restoresOf(func(rs *v1alpha1.VirtualMachineRestore, o client.Object) bool {
			return rs.Spec.VirtualMachineSnapshotName == o.GetName()
		}))).
		// A claim replaced in place is deleted first: its deletion moves
		// the restore on.
		Watches(&corev1.PersistentVolumeClaim{}, crhandler.EnqueueRequestsFromMapFunc(r.restoresOf(func(rs *v1alpha1.VirtualMachineRestore, o client.Object) bool {
			return rs.Spec.Target.Name == o.GetLabels()[v1alpha1.VMNameLabel]
		}))).
		Complete(r)
}

// restoresOf maps an object to the unfinished restores in its namespace
// that match says are about it.
func (r *RestoreReconciler) restoresOf(match func(*v1alpha1.VirtualMachineRestore, client.Object) bool) crhandler.MapFunc {
	return func(ctx context.Context, o client.Object) []ctrl.Request {
		list := &v1alpha1.VirtualMachineRestoreList{}
		if err := r.Client.List(ctx, list, client.InNamespace(o.GetNamespace())); err != nil {
			return nil
		}
		var reqs []ctrl.Request
		for i := range list.Items {
			if rs := &list.Items[i]; !restoreOver(rs) && match(rs, o) {
				reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: rs.Namespace, Name: rs.Name}})
			}
		}
		return reqs
	}
}

// Reconcile moves one restore a step.
func (r *RestoreReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	rs := &v1alpha1.VirtualMachineRestore{}
	if err := r.Client.Get(ctx, req.NamespacedName, rs); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if rs.DeletionTimestamp != nil || restoreOver(rs) {
		if err := releaseVM(ctx, r.Client, rs.Namespace, rs.Spec.Target.Name, v1alpha1.RestoreInProgressAnnotation, rs.Name); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, removeFinalizer(ctx, r.Client, rs)
	}
	if err := addFinalizer(ctx, r.Client, rs); err != nil {
		return ctrl.Result{}, err
	}
	orig := rs.DeepCopy()
	res, err := r.step(ctx, rs)
	if rf, ok := asRefusal(err); ok {
		r.fail(rs, rf.msg)
		res, err = ctrl.Result{}, nil
	}
	if uerr := r.Client.Status().Patch(ctx, rs, client.MergeFrom(orig)); uerr != nil && !apierrors.IsNotFound(uerr) {
		return ctrl.Result{}, fmt.Errorf("update status of restore %s: %w", req, uerr)
	}
	// Once over, the status update brings the restore back to let the VM
	// go and drop the finalizer.
	return res, err
}

// restoreOver: it succeeded or failed for good.
func restoreOver(rs *v1alpha1.VirtualMachineRestore) bool { return rs.Status.Complete != nil }

func (r *RestoreReconciler) step(ctx context.Context, rs *v1alpha1.VirtualMachineRestore) (ctrl.Result, error) {
	t := rs.Spec.Target
	if t.Kind != "VirtualMachine" || (t.APIGroup != nil && *t.APIGroup != v1alpha1.GroupName) {
		return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("target %s %s: only a VirtualMachine (podvirt.io) can be restored into", t.Kind, t.Name)}
	}
	snap := &v1alpha1.VirtualMachineSnapshot{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: rs.Spec.VirtualMachineSnapshotName}, snap); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("snapshot %s does not exist", rs.Spec.VirtualMachineSnapshotName)}
		}
		return ctrl.Result{}, err
	}
	switch snap.Status.Phase {
	case v1alpha1.SnapshotFailed:
		return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("snapshot %s failed; it cannot be restored", snap.Name)}
	case v1alpha1.SnapshotSucceeded:
	default:
		rs.Status.Error = &v1alpha1.SnapshotError{Message: fmt.Sprintf("waiting for snapshot %s to be ready", snap.Name)}
		return ctrl.Result{RequeueAfter: snapshotPoll}, nil
	}
	content := &v1alpha1.VirtualMachineSnapshotContent{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: snap.Status.VirtualMachineSnapshotContentName}, content); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("snapshot %s has lost its content %s", snap.Name, snap.Status.VirtualMachineSnapshotContentName)}
		}
		return ctrl.Result{}, err
	}

	vm := &v1alpha1.VirtualMachine{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: t.Name}, vm)
	switch {
	case apierrors.IsNotFound(err):
		return r.toNewVM(ctx, rs, snap, content)
	case err != nil:
		return ctrl.Result{}, err
	case vm.Annotations[v1alpha1.RestoredByAnnotation] == string(rs.UID):
		r.complete(rs, vm) // made by this restore, which stopped before recording it
		return ctrl.Result{}, nil
	case snap.Status.SourceUID == nil || vm.UID != *snap.Status.SourceUID:
		return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("VM %s exists and is not the VM snapshot %s was taken of: restore to a new name, or delete VM %s first", vm.Name, snap.Name, vm.Name)}
	}
	return r.inPlace(ctx, rs, content, vm)
}

// inPlace restores the snapshot's own, stopped VM.
func (r *RestoreReconciler) inPlace(ctx context.Context, rs *v1alpha1.VirtualMachineRestore, content *v1alpha1.VirtualMachineSnapshotContent, vm *v1alpha1.VirtualMachine) (ctrl.Result, error) {
	if running, err := hasVMI(ctx, r.APIReader, vm); err != nil || running {
		if err == nil {
			return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("VM %s is running: stop it (podvirtctl stop %s) and restore again", vm.Name, vm.Name)}
		}
		return ctrl.Result{}, err
	}
	if held, err := holdVM(ctx, r.Client, vm, v1alpha1.RestoreInProgressAnnotation, rs.Name); err != nil || held != "" {
		if held != "" {
			rs.Status.Error = &v1alpha1.SnapshotError{Message: "waiting for " + held + " to finish with the VM"}
			return ctrl.Result{RequeueAfter: snapshotPoll}, nil
		}
		return ctrl.Result{}, err
	}
	if running, err := hasVMI(ctx, r.APIReader, vm); err != nil || running {
		if err == nil {
			return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("VM %s started while it was being restored; stop it and restore again", vm.Name)}
		}
		return ctrl.Result{}, err
	}
	var restores []v1alpha1.VolumeRestore
	for _, b := range content.Spec.VolumeBackups {
		name := b.PersistentVolumeClaim.Name
		made, err := r.replaceClaim(ctx, rs, b, name, vm.Name)
		if err != nil {
			return ctrl.Result{}, err
		}
		if !made {
			rs.Status.Error = &v1alpha1.SnapshotError{Message: fmt.Sprintf("waiting for the old PVC %s to be deleted", name)}
			return ctrl.Result{RequeueAfter: snapshotPoll}, nil
		}
		restores = append(restores, v1alpha1.VolumeRestore{VolumeName: b.VolumeName, PersistentVolumeClaimName: name, VolumeSnapshotName: b.VolumeSnapshotName})
	}
	rs.Status.Restores = restores
	// The spec as it was, keeping the MACs and addresses the VM holds now,
	// and its run strategy: a restore does not start the VM.
	spec := content.Spec.Source.Spec.DeepCopy()
	keepIdentity(spec, &vm.Spec)
	spec.RunStrategy = vm.Spec.RunStrategy
	patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
	vm.Spec = *spec
	if err := r.Client.Patch(ctx, vm, patch); err != nil {
		return requeueOnConflict(fmt.Errorf("restore VM %s/%s: set its spec back: %w", vm.Namespace, vm.Name, err))
	}
	r.complete(rs, vm)
	return ctrl.Result{}, nil
}

// replaceClaim makes claim name from backup b's snapshot, deleting the
// claim of that name first unless this restore made it; made says the
// claim from the snapshot exists.
func (r *RestoreReconciler) replaceClaim(ctx context.Context, rs *v1alpha1.VirtualMachineRestore, b v1alpha1.VolumeBackup, name, vmName string) (made bool, err error) {
	old := &corev1.PersistentVolumeClaim{}
	err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: name}, old)
	switch {
	case err == nil && old.Annotations[v1alpha1.RestoredByAnnotation] == string(rs.UID):
		return true, nil
	case err == nil:
		if old.DeletionTimestamp == nil {
			if err := r.Client.Delete(ctx, old, client.Preconditions{UID: &old.UID}); err != nil && !apierrors.IsNotFound(err) {
				return false, fmt.Errorf("restore: delete PVC %s: %w", name, err)
			}
			r.Recorder.Eventf(rs, old, corev1.EventTypeNormal, "ReplacingDisk", "Restore", "deleted PVC %s to make it again from VolumeSnapshot %s", name, b.VolumeSnapshotName)
		}
		return false, nil
	case !apierrors.IsNotFound(err):
		return false, err
	}
	claim := restoredClaim(rs, b, name, vmName)
	if err := r.Client.Create(ctx, claim); err != nil && !apierrors.IsAlreadyExists(err) {
		return false, fmt.Errorf("restore: create PVC %s from VolumeSnapshot %s: %w", name, b.VolumeSnapshotName, err)
	}
	return true, nil
}

// toNewVM restores the snapshot as a new VM named by the target.
func (r *RestoreReconciler) toNewVM(ctx context.Context, rs *v1alpha1.VirtualMachineRestore, snap *v1alpha1.VirtualMachineSnapshot, content *v1alpha1.VirtualMachineSnapshotContent) (ctrl.Result, error) {
	name := rs.Spec.Target.Name
	src := content.Spec.Source
	claims := map[string]string{} // old claim → new
	var restores []v1alpha1.VolumeRestore
	for _, b := range content.Spec.VolumeBackups {
		claim := b.PersistentVolumeClaim.Name
		if name != src.Name {
			claim = name + "-" + b.VolumeName
		}
		existing := &corev1.PersistentVolumeClaim{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: claim}, existing)
		switch {
		case apierrors.IsNotFound(err):
			if err := r.Client.Create(ctx, restoredClaim(rs, b, claim, name)); err != nil && !apierrors.IsAlreadyExists(err) {
				return ctrl.Result{}, fmt.Errorf("restore: create PVC %s from VolumeSnapshot %s: %w", claim, b.VolumeSnapshotName, err)
			}
		case err != nil:
			return ctrl.Result{}, err
		case existing.Annotations[v1alpha1.RestoredByAnnotation] != string(rs.UID):
			return ctrl.Result{}, &refusal{ReasonRestoreFailed, fmt.Sprintf("PVC %s exists already: delete it, or restore to another name", claim)}
		}
		claims[b.PersistentVolumeClaim.Name] = claim
		restores = append(restores, v1alpha1.VolumeRestore{VolumeName: b.VolumeName, PersistentVolumeClaimName: claim, VolumeSnapshotName: b.VolumeSnapshotName})
	}
	rs.Status.Restores = restores

	spec := src.Spec.DeepCopy()
	for i := range spec.Template.Spec.Volumes {
		if c := spec.Template.Spec.Volumes[i].PersistentVolumeClaim; c != nil && claims[c.ClaimName] != "" {
			c.ClaimName = claims[c.ClaimName]
		}
	}
	for i := range spec.DiskTemplates {
		if n := claims[spec.DiskTemplates[i].ObjectMeta.Name]; n != "" {
			spec.DiskTemplates[i].ObjectMeta.Name = n
		}
	}
	// A restore does not start the VM (a snapshot of a running VM says
	// Always): it is Halted, or Manual if it was.
	if spec.RunStrategy != v1alpha1.RunStrategyManual {
		spec.RunStrategy = v1alpha1.RunStrategyHalted
	}
	// The MACs and addresses are the source VM's: they stay with it while
	// it exists.
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: rs.Namespace, Name: src.Name}, &v1alpha1.VirtualMachine{}); err == nil {
		forgetIdentity(spec)
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	annotations := withoutHolds(src.Annotations)
	if annotations == nil {
		annotations = map[string]string{}
	}
	annotations[v1alpha1.RestoredByAnnotation] = string(rs.UID)
	vm := &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rs.Namespace, Labels: src.Labels, Annotations: annotations},
		Spec:       *spec,
	}
	if err := r.Client.Create(ctx, vm); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return ctrl.Result{RequeueAfter: time.Second}, nil // ours or another's: the next pass tells
		}
		return ctrl.Result{}, fmt.Errorf("restore: create VM %s: %w", name, err)
	}
	r.Recorder.Eventf(vm, rs, corev1.EventTypeNormal, ReasonRestoreSucceeded, "Restore", "made from snapshot %s of VM %s", snap.Name, src.Name)
	r.complete(rs, vm)
	return ctrl.Result{}, nil
}

// restoredClaim is claim name of VM vmName made from backup b's snapshot,
// on the node that holds the snapshot.
func restoredClaim(rs *v1alpha1.VirtualMachineRestore, b v1alpha1.VolumeBackup, name, vmName string) *corev1.PersistentVolumeClaim {
	spec := b.PersistentVolumeClaim.Spec.DeepCopy()
	spec.VolumeName = ""
	spec.DataSourceRef = nil
	spec.DataSource = &corev1.TypedLocalObjectReference{APIGroup: ptr.To(volumeSnapshotGVK.Group), Kind: volumeSnapshotGVK.Kind, Name: b.VolumeSnapshotName}
	labels := maps.Clone(b.PersistentVolumeClaim.Labels)
	if _, ok := labels[v1alpha1.VMNameLabel]; ok {
		labels[v1alpha1.VMNameLabel] = vmName
	}
	annotations := map[string]string{v1alpha1.RestoredByAnnotation: string(rs.UID)}
	for k, v := range b.PersistentVolumeClaim.Annotations {
		if !provisioningAnnotation(k) {
			annotations[k] = v
		}
	}
	if b.Node != "" {
		annotations[selectedNodeAnnotation] = b.Node
	}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: rs.Namespace, Labels: labels, Annotations: annotations},
		Spec:       *spec,
	}
}

// provisioningAnnotation: an annotation the old claim's provisioning or
// import wrote, which a claim made from a snapshot must not carry (an
// image source would be imported instead of the snapshot).
func provisioningAnnotation(k string) bool {
	for _, p := range []string{"pv.kubernetes.io/", "volume.kubernetes.io/", "volume.beta.kubernetes.io/", "disk.podvirt.io/", "podvirt.io/"} {
		if strings.HasPrefix(k, p) {
			return true
		}
	}
	return false
}

// keepIdentity gives spec the MACs and addresses the VM has now, by
// interface name.
func keepIdentity(spec, now *v1alpha1.VirtualMachineSpec) {
	current := map[string]v1alpha1.Interface{}
	for _, ifc := range now.Template.Spec.Domain.Devices.Interfaces {
		current[ifc.Name] = ifc
	}
	for i := range spec.Template.Spec.Domain.Devices.Interfaces {
		ifc := &spec.Template.Spec.Domain.Devices.Interfaces[i]
		if c, ok := current[ifc.Name]; ok {
			ifc.MACAddress, ifc.IPAddress = c.MACAddress, c.IPAddress
		}
	}
}

// forgetIdentity clears the MACs and addresses of spec, for the
// controller to give fresh ones.
func forgetIdentity(spec *v1alpha1.VirtualMachineSpec) {
	for i := range spec.Template.Spec.Domain.Devices.Interfaces {
		spec.Template.Spec.Domain.Devices.Interfaces[i].MACAddress = ""
		spec.Template.Spec.Domain.Devices.Interfaces[i].IPAddress = ""
	}
}

func (r *RestoreReconciler) complete(rs *v1alpha1.VirtualMachineRestore, vm *v1alpha1.VirtualMachine) {
	rs.Status.Complete, rs.Status.Error = ptr.To(true), nil
	rs.Status.RestoreTime = ptr.To(metav1.Now())
	r.Recorder.Eventf(rs, vm, corev1.EventTypeNormal, ReasonRestoreSucceeded, "Restore", "VM %s restored from snapshot %s", vm.Name, rs.Spec.VirtualMachineSnapshotName)
}

func (r *RestoreReconciler) fail(rs *v1alpha1.VirtualMachineRestore, msg string) {
	rs.Status.Complete = ptr.To(false)
	rs.Status.Error = &v1alpha1.SnapshotError{Time: ptr.To(metav1.Now()), Message: msg}
	r.Recorder.Eventf(rs, nil, corev1.EventTypeWarning, ReasonRestoreFailed, "Restore", "%s", msg)
}
