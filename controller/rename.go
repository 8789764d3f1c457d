package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// Rename events.
const (
	ReasonRenaming      = "Renaming"
	ReasonRenamed       = "Renamed"
	ReasonRenameRefused = "RenameRefused"
)

// renameWait is how often a VM a rename made looks whether the old VM is gone.
const renameWait = time.Second

// rename carries a rename on, from either side; handled says the VM is the
// old or the new VM of a rename in progress and the reconcile ends here.
//
// The old VM (podvirt.io/rename-to: NEW, stopped) makes NEW as its copy
// with podvirt.io/renamed-from, relabels its disk-template claims to NEW,
// and deletes itself; NEW stays inert while the old VM exists, then drops
// the annotation and goes on as any VM (claiming the same MACs and
// addresses, adopting the claims). Every step is idempotent, so a
// controller that stops half-way finishes on its next reconcile, and there
// is always one VM that holds the disks.
func (r *VMReconciler) rename(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (res ctrl.Result, handled bool, err error) {
	if from := vm.Annotations[v1alpha1.RenamedFromAnnotation]; from != "" {
		return r.renamedFrom(ctx, orig, vm, from)
	}
	to := vm.Annotations[v1alpha1.RenameToAnnotation]
	if to == "" {
		return ctrl.Result{}, false, nil
	}
	if msg := renameRefusal(vm, vmi, to); msg != "" {
		return ctrl.Result{}, true, r.refuseRename(ctx, vm, to, msg)
	}
	renamed := &v1alpha1.VirtualMachine{}
	err = r.APIReader.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: to}, renamed)
	switch {
	case apierrors.IsNotFound(err):
		renamed = renamedCopy(vm, to)
		if err := r.Client.Create(ctx, renamed); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, true, fmt.Errorf("rename VM %s/%s: create VM %s: %w", vm.Namespace, vm.Name, to, err)
		}
		r.Recorder.Eventf(vm, renamed, corev1.EventTypeNormal, ReasonRenaming, "Rename", "renaming to %s: created it; moving the disks", to)
		r.Recorder.Eventf(renamed, vm, corev1.EventTypeNormal, ReasonRenaming, "Rename", "made by renaming VM %s", vm.Name)
	case err != nil:
		return ctrl.Result{}, true, fmt.Errorf("rename VM %s/%s: get VM %s: %w", vm.Namespace, vm.Name, to, err)
	case renamed.Annotations[v1alpha1.RenamedFromAnnotation] != vm.Name:
		return ctrl.Result{}, true, r.refuseRename(ctx, vm, to, fmt.Sprintf("VM %s exists already: choose another name, or delete it first", to))
	}
	if err := r.relabelDisks(ctx, vm, to); err != nil {
		return ctrl.Result{}, true, err
	}
	if err := r.Client.Delete(ctx, vm, client.Preconditions{UID: &vm.UID}); err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, true, fmt.Errorf("rename VM %s/%s: delete the old VM: %w", vm.Namespace, vm.Name, err)
	}
	return ctrl.Result{}, true, nil
}

// renameRefusal says why vm cannot be renamed to name now ("" if it can).
func renameRefusal(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance, name string) string {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return fmt.Sprintf("%q is not a valid VM name: %s", name, errs[0])
	}
	if name == vm.Name {
		return fmt.Sprintf("the VM is named %s already", name)
	}
	if vmi != nil {
		return fmt.Sprintf("the VM runs (VMI %s): stop it first (podvirtctl stop %s)", vmi.Name, vm.Name)
	}
	switch vm.Spec.RunStrategy {
	case v1alpha1.RunStrategyHalted, v1alpha1.RunStrategyManual:
		return ""
	}
	return fmt.Sprintf("run strategy %s would start the VM: stop it first (podvirtctl stop %s)", vm.Spec.RunStrategy, vm.Name)
}

// refuseRename drops the request and says why, on the VM.
func (r *VMReconciler) refuseRename(ctx context.Context, vm *v1alpha1.VirtualMachine, to, msg string) error {
	r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, ReasonRenameRefused, "Rename", "rename to %s refused: %s", to, msg)
	patch := client.MergeFrom(vm.DeepCopy())
	delete(vm.Annotations, v1alpha1.RenameToAnnotation)
	if err := r.Client.Patch(ctx, vm, patch); err != nil {
		return fmt.Errorf("VM %s/%s: drop the refused rename: %w", vm.Namespace, vm.Name, err)
	}
	return nil
}

// renamedCopy is vm under its new name: the same spec (MACs and addresses
// included), labels and annotations, marked as a rename's.
func renamedCopy(vm *v1alpha1.VirtualMachine, name string) *v1alpha1.VirtualMachine {
	annotations := map[string]string{}
	for k, v := range vm.Annotations {
		annotations[k] = v
	}
	delete(annotations, v1alpha1.RenameToAnnotation)
	annotations[v1alpha1.RenamedFromAnnotation] = vm.Name
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: vm.Namespace, Labels: vm.Labels, Annotations: annotations},
		Spec:       *vm.Spec.DeepCopy(),
	}
}

// relabelDisks gives vm's disk-template claims to the VM named to, so the
// old VM's deletion (whatever its retention policy) leaves them.
func (r *VMReconciler) relabelDisks(ctx context.Context, vm *v1alpha1.VirtualMachine, to string) error {
	for _, tmpl := range vm.Spec.DiskTemplates {
		pvc := &corev1.PersistentVolumeClaim{}
		err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: tmpl.ObjectMeta.Name}, pvc)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("rename VM %s/%s: get PVC %s: %w", vm.Namespace, vm.Name, tmpl.ObjectMeta.Name, err)
		}
		if pvc.Labels[v1alpha1.VMNameLabel] != vm.Name {
			continue
		}
		patch := client.MergeFrom(pvc.DeepCopy())
		pvc.Labels[v1alpha1.VMNameLabel] = to
		if err := r.Client.Patch(ctx, pvc, patch); err != nil {
			return fmt.Errorf("rename VM %s/%s: give PVC %s to %s: %w", vm.Namespace, vm.Name, pvc.Name, to, err)
		}
	}
	return nil
}

// renamedFrom keeps a VM a rename made inert until the old VM is gone, then
// lets it go on as any VM.
func (r *VMReconciler) renamedFrom(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, from string) (ctrl.Result, bool, error) {
	old := &v1alpha1.VirtualMachine{}
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: from}, old)
	if err == nil {
		if vm.Status.PrintableStatus != v1alpha1.PrintableStatusRenaming {
			vm.Status.PrintableStatus = v1alpha1.PrintableStatusRenaming
			if err := r.Client.Status().Patch(ctx, vm, client.MergeFrom(orig)); err != nil {
				return ctrl.Result{}, true, fmt.Errorf("VM %s/%s: status Renaming: %w", vm.Namespace, vm.Name, err)
			}
		}
		return ctrl.Result{RequeueAfter: renameWait}, true, nil
	}
	if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, true, fmt.Errorf("VM %s/%s: get the VM it is renamed from, %s: %w", vm.Namespace, vm.Name, from, err)
	}
	patch := client.MergeFrom(vm.DeepCopy())
	delete(vm.Annotations, v1alpha1.RenamedFromAnnotation)
	if err := r.Client.Patch(ctx, vm, patch); err != nil {
		return ctrl.Result{}, true, fmt.Errorf("VM %s/%s: finish the rename from %s: %w", vm.Namespace, vm.Name, from, err)
	}
	r.Recorder.Eventf(vm, nil, corev1.EventTypeNormal, ReasonRenamed, "Rename", "renamed from %s: this VM has its disks, MACs and addresses now", from)
	return ctrl.Result{}, true, nil // the patch brings the VM back
}
