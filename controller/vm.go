package controller

import (
	"context"
	"fmt"
	"slices"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller/identity"
)

// VM condition types and reasons.
const (
	ConditionFailure = "Failure"

	ReasonVMIConflict   = "VMIConflict"
	ReasonDiskInUse     = "DiskInUse"
	ReasonDiskCreate    = "FailedCreateDisk"
	ReasonVMICreate     = "FailedCreateVMI"
	ReasonVMIDelete     = "FailedDeleteVMI"
	ReasonVMIFailed     = "VMIFailed"
	ReasonNoFailure     = "NoFailure"
	ReasonIgnoredChange = "StateChangeIgnored"
	// ReasonIdentityAssigned: the controller recorded MACs and addresses
	// in the VM's spec.
	ReasonIdentityAssigned = "IdentityAssigned"
)

// VMReconciler applies a VM's run strategy: it creates and deletes the VM's
// VMI (named like the VM, controlled by it), makes its disk-template PVCs,
// and keeps or deletes those PVCs when the VM goes.
type VMReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  eventRecorder
	Config    *Config
	Now       func() time.Time

	metrics *instruments
	claims  *identity.Claims
}

func (r *VMReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the reconciler with mgr.
func (r *VMReconciler) SetupWithManager(mgr ctrl.Manager) error {
	ctx := context.Background()
	if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.VirtualMachine{}, indexMAC, macIndex); err != nil {
		return fmt.Errorf("index VMs by MAC: %w", err)
	}
	if err := mgr.GetFieldIndexer().IndexField(ctx, &v1alpha1.VirtualMachine{}, indexAddress, addressIndex); err != nil {
		return fmt.Errorf("index VMs by address: %w", err)
	}
	// Longer than the cache takes to show an update, so a value handed
	// out is never handed out again before the cache has it.
	r.claims = identity.NewClaims(2 * time.Minute)
	return ctrl.NewControllerManagedBy(mgr).
		Named("vm").
		For(&v1alpha1.VirtualMachine{}).
		Owns(&v1alpha1.VirtualMachineInstance{}).
		// A disk's import progress shows in the VM's status.
		Watches(&corev1.PersistentVolumeClaim{}, handler.EnqueueRequestsFromMapFunc(vmOfClaim), builder.WithPredicates(importChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Config.VMWorkers}).
		Complete(r)
}

// Reconcile applies one VM's run strategy once.
func (r *VMReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	vm := &v1alpha1.VirtualMachine{}
	if err := r.Client.Get(ctx, req.NamespacedName, vm); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := vm.DeepCopy()

	vmi, conflict, err := r.getVMI(ctx, vm)
	if err != nil {
		return ctrl.Result{}, err
	}
	if vm.DeletionTimestamp != nil {
		return r.finalize(ctx, orig, vm, vmi)
	}
	if conflict != nil {
		msg := fmt.Sprintf("VMI %s/%s exists and does not belong to this VM: delete it or rename the VM", conflict.Namespace, conflict.Name)
		r.fail(vm, ReasonVMIConflict, "Start", msg)
		return r.updateStatus(ctx, orig, vm, nil)
	}
	if !controllerutil.ContainsFinalizer(vm, v1alpha1.VMFinalizer) {
		patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(vm, v1alpha1.VMFinalizer)
		if err := r.Client.Patch(ctx, vm, patch); err != nil {
			return requeueOnConflict(fmt.Errorf("add finalizer to VM %s/%s: %w", vm.Namespace, vm.Name, err))
		}
		orig = vm.DeepCopy()
	}

	if res, handled, err := r.rename(ctx, orig, vm, vmi); handled {
		return res, err
	}
	if heldBySnapshot(vm) && vmi == nil {
		// A snapshot or restore has the stopped VM: no start, and no
		// disk-template claim made again while a restore replaces it.
		return r.updateStatus(ctx, orig, vm, nil)
	}

	changed, err := r.assignIdentity(ctx, vm)
	if rf, ok := asRefusal(err); ok {
		r.fail(vm, rf.reason, "Start", rf.msg)
		if res, uerr := r.updateStatus(ctx, orig, vm, vmi); uerr != nil {
			return res, uerr
		}
		// The holder may go, or a NAD appear, without this VM changing.
		return ctrl.Result{RequeueAfter: 30 * time.Second}, nil
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if changed {
		if err := r.Client.Update(ctx, vm); err != nil {
			return requeueOnConflict(fmt.Errorf("record MACs and addresses of VM %s/%s: %w", vm.Namespace, vm.Name, err))
		}
		r.Recorder.Eventf(vm, nil, corev1.EventTypeNormal, ReasonIdentityAssigned, "Start", "%s", identityOf(vm))
		return ctrl.Result{}, nil // the update brings the VM back with its new generation
	}

	if err := r.ensureDisks(ctx, vm); err != nil {
		if res, uerr := r.updateStatus(ctx, orig, vm, vmi); uerr != nil {
			return res, uerr
		}
		return ctrl.Result{}, err
	}
	failure := meta.FindStatusCondition(vm.Status.Conditions, ConditionFailure)
	if failure != nil && failure.Status == metav1.ConditionTrue && failure.Reason != ReasonVMIFailed {
		// The disks are fine now; only a failed VMI still counts.
		meta.RemoveStatusCondition(&vm.Status.Conditions, ConditionFailure)
	}

	// A new run strategy starts with a clean slate.
	if vm.Status.RunStrategy != vm.Spec.RunStrategy {
		vm.Status.RunStrategy = vm.Spec.RunStrategy
		vm.Status.LastVMIUID = ""
		vm.Status.StartFailure = nil
	}

	res, err := r.apply(ctx, orig, vm, vmi)
	if err != nil {
		if _, uerr := r.updateStatus(ctx, orig, vm, vmi); uerr != nil {
			return ctrl.Result{}, uerr
		}
		return res, err
	}
	ures, uerr := r.updateStatus(ctx, orig, vm, vmi)
	if uerr != nil {
		return ures, uerr
	}
	return sooner(res, ures), nil
}

// sooner is the result that looks again first.
func sooner(a, b ctrl.Result) ctrl.Result {
	if a.RequeueAfter == 0 || (b.RequeueAfter > 0 && b.RequeueAfter < a.RequeueAfter) {
		return b
	}
	return a
}

// apply carries out the pending start/stop request and the run strategy.
// It may replace vmi (created) in place: the caller's status reflects it.
func (r *VMReconciler) apply(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	now := r.now()
	strategy := vm.Spec.RunStrategy
	deleting := vmi != nil && vmi.DeletionTimestamp != nil

	if vmi != nil && strategy == v1alpha1.RunStrategyOnce {
		vm.Status.LastVMIUID = vmi.UID
	}

	// The user's start/stop requests, oldest first.
	if len(vm.Status.StateChangeRequests) > 0 {
		req := vm.Status.StateChangeRequests[0]
		switch req.Action {
		case v1alpha1.StopRequest:
			vm.Status.StateChangeRequests = vm.Status.StateChangeRequests[1:]
			if vmi != nil && !deleting && (req.UID == nil || *req.UID == vmi.UID) {
				if err := r.stop(ctx, orig, vm, vmi); err != nil {
					return ctrl.Result{}, err
				}
				return ctrl.Result{}, nil
			}
		case v1alpha1.StartRequest:
			switch {
			case strategy == v1alpha1.RunStrategyAlways || strategy == v1alpha1.RunStrategyHalted:
				vm.Status.StateChangeRequests = vm.Status.StateChangeRequests[1:]
				r.Recorder.Eventf(vm, nil, corev1.EventTypeNormal, ReasonIgnoredChange, "Start",
					"start request ignored under runStrategy %s: set spec.runStrategy instead", strategy)
			case deleting:
				return ctrl.Result{}, nil // wait until the old VMI is gone
			case vmi != nil && vmi.Status.Phase.IsFinal():
				return ctrl.Result{}, r.stop(ctx, orig, vm, vmi) // replace the finished VMI
			case vmi != nil:
				vm.Status.StateChangeRequests = vm.Status.StateChangeRequests[1:] // already running
			default:
				if err := r.start(ctx, vm, &vmi); err != nil {
					return ctrl.Result{}, err
				}
				vm.Status.StateChangeRequests = vm.Status.StateChangeRequests[1:]
				return ctrl.Result{}, nil
			}
		}
	}

	if deleting {
		return ctrl.Result{}, nil // the VMI's deletion wakes us when it is gone
	}

	switch strategy {
	case v1alpha1.RunStrategyHalted:
		if vmi != nil {
			return ctrl.Result{}, r.stop(ctx, orig, vm, vmi)
		}

	case v1alpha1.RunStrategyAlways, v1alpha1.RunStrategyRerunOnFailure:
		if vmi != nil {
			phase := vmi.Status.Phase
			if phase == v1alpha1.Failed || (phase == v1alpha1.Succeeded && strategy == v1alpha1.RunStrategyAlways) {
				if phase == v1alpha1.Failed {
					r.recordFailure(vm, vmi, now)
				}
				return ctrl.Result{}, r.stop(ctx, orig, vm, vmi)
			}
			return r.resetBackoff(vm, vmi, now), nil
		}
		if f := vm.Status.StartFailure; f != nil && f.RetryAfterTimestamp != nil && now.Before(f.RetryAfterTimestamp.Time) {
			return ctrl.Result{RequeueAfter: f.RetryAfterTimestamp.Sub(now)}, nil
		}
		return ctrl.Result{}, r.start(ctx, vm, &vmi)

	case v1alpha1.RunStrategyOnce:
		if vmi == nil && vm.Status.LastVMIUID == "" {
			return ctrl.Result{}, r.start(ctx, vm, &vmi)
		}

	case v1alpha1.RunStrategyManual:
		// Only requests act.
	}
	return ctrl.Result{}, nil
}

// start creates the VM's VMI from its template and points *vmi at it.
func (r *VMReconciler) start(ctx context.Context, vm *v1alpha1.VirtualMachine, vmi **v1alpha1.VirtualMachineInstance) error {
	tmpl := vm.Spec.Template
	labels := map[string]string{}
	for k, v := range tmpl.ObjectMeta.Labels {
		labels[k] = v
	}
	labels[v1alpha1.VMNameLabel] = vm.Name
	created := &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{
			Name:            vm.Name,
			Namespace:       vm.Namespace,
			Labels:          labels,
			Annotations:     tmpl.ObjectMeta.Annotations,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vm, v1alpha1.GroupVersion.WithKind("VirtualMachine"))},
			// Set here, it saves the VMI reconciler a write.
			Finalizers: []string{v1alpha1.VMIFinalizer},
		},
		Spec: *tmpl.Spec.DeepCopy(),
	}
	if err := r.Client.Create(ctx, created); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return nil // the cache is behind; the VMI's event brings us back
		}
		r.fail(vm, ReasonVMICreate, "Start", fmt.Sprintf("create VMI: %v", err))
		return fmt.Errorf("create VMI %s/%s: %w", vm.Namespace, vm.Name, err)
	}
	r.metrics.vmiStarts.WithLabelValues(string(vm.Spec.RunStrategy)).Inc()
	r.Recorder.Eventf(vm, created, corev1.EventTypeNormal, "SuccessfulCreate", "Start", "created VMI %s", created.Name)
	vm.Status.LastVMIUID = created.UID
	*vmi = created
	return nil
}

// stop deletes the VM's VMI. The VM's status is written first, so what it
// recorded about the VMI (a failure) survives the VMI.
func (r *VMReconciler) stop(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) error {
	if !equality.Semantic.DeepEqual(orig.Status, vm.Status) {
		if err := r.Client.Status().Patch(ctx, vm, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
			return fmt.Errorf("update status of VM %s/%s: %w", vm.Namespace, vm.Name, err)
		}
		*orig = *vm.DeepCopy()
	}
	if err := r.Client.Delete(ctx, vmi, client.Preconditions{UID: &vmi.UID}); err != nil && !apierrors.IsNotFound(err) {
		r.fail(vm, ReasonVMIDelete, "Stop", fmt.Sprintf("delete VMI: %v", err))
		return fmt.Errorf("delete VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	now := metav1.NewTime(r.now())
	vmi.DeletionTimestamp = &now // for this reconcile's status
	return nil
}

// recordFailure counts a failed VMI once and sets when the next may start.
func (r *VMReconciler) recordFailure(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance, now time.Time) {
	f := vm.Status.StartFailure
	if f != nil && f.LastFailedVMIUID == vmi.UID {
		return
	}
	if f == nil {
		f = &v1alpha1.VirtualMachineStartFailure{}
	}
	f.ConsecutiveFailCount++
	f.LastFailedVMIUID = vmi.UID
	delay := r.Config.RestartBackoff
	for i := int32(1); i < f.ConsecutiveFailCount && delay < r.Config.MaxRestartBackoff; i++ {
		delay *= 2
	}
	delay = min(delay, r.Config.MaxRestartBackoff)
	retry := metav1.NewTime(now.Add(delay))
	f.RetryAfterTimestamp = &retry
	vm.Status.StartFailure = f
	r.fail(vm, ReasonVMIFailed, "Run", fmt.Sprintf("VMI %s failed (%s: %s); %d in a row, next start after %s",
		vmi.Name, vmi.Status.Reason, vmi.Status.Message, f.ConsecutiveFailCount, delay))
}

// resetBackoff clears the failure count once a VMI has run long enough, and
// otherwise says when to look again.
func (r *VMReconciler) resetBackoff(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance, now time.Time) ctrl.Result {
	if vm.Status.StartFailure == nil || vmi.Status.Phase != v1alpha1.Running {
		return ctrl.Result{}
	}
	var since time.Time
	for _, t := range vmi.Status.PhaseTransitionTimestamps {
		if t.Phase == v1alpha1.Running {
			since = t.PhaseTransitionTimestamp.Time
		}
	}
	if left := r.Config.BackoffResetAfter - now.Sub(since); left > 0 {
		return ctrl.Result{RequeueAfter: left}
	}
	vm.Status.StartFailure = nil
	meta.RemoveStatusCondition(&vm.Status.Conditions, ConditionFailure)
	return ctrl.Result{}
}

// getVMI returns the VM's VMI (nil if none), or the same-named VMI that
// belongs to something else as conflict.
func (r *VMReconciler) getVMI(ctx context.Context, vm *v1alpha1.VirtualMachine) (vmi, conflict *v1alpha1.VirtualMachineInstance, err error) {
	got := &v1alpha1.VirtualMachineInstance{}
	if err := r.Client.Get(ctx, client.ObjectKeyFromObject(vm), got); apierrors.IsNotFound(err) {
		return nil, nil, nil
	} else if err != nil {
		return nil, nil, fmt.Errorf("get VMI %s/%s: %w", vm.Namespace, vm.Name, err)
	}
	if !metav1.IsControlledBy(got, vm) {
		return nil, got, nil
	}
	return got, nil, nil
}

// ensureDisks creates the PVCs of the VM's disk templates that do not exist,
// and adopts retained ones that no other live VM uses.
func (r *VMReconciler) ensureDisks(ctx context.Context, vm *v1alpha1.VirtualMachine) error {
	for _, tmpl := range vm.Spec.DiskTemplates {
		if slices.Contains(vm.Status.DiskClaims, tmpl.ObjectMeta.Name) {
			continue
		}
		key := types.NamespacedName{Namespace: vm.Namespace, Name: tmpl.ObjectMeta.Name}
		pvc := &corev1.PersistentVolumeClaim{}
		err := r.APIReader.Get(ctx, key, pvc)
		switch {
		case apierrors.IsNotFound(err):
			pvc = diskPVC(vm, &tmpl)
			if err := r.Client.Create(ctx, pvc); err != nil && !apierrors.IsAlreadyExists(err) {
				r.fail(vm, ReasonDiskCreate, "CreateDisk", fmt.Sprintf("create PVC %s from diskTemplate: %v", key.Name, err))
				return fmt.Errorf("create PVC %s for VM %s: %w", key, vm.Name, err)
			}
			r.Recorder.Eventf(vm, pvc, corev1.EventTypeNormal, "SuccessfulCreate", "CreateDisk", "created PVC %s", key.Name)
		case err != nil:
			return fmt.Errorf("get PVC %s for VM %s: %w", key, vm.Name, err)
		default:
			owner := pvc.Labels[v1alpha1.VMNameLabel]
			if owner != "" && owner != vm.Name {
				other := &v1alpha1.VirtualMachine{}
				err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: owner}, other)
				if err == nil {
					msg := fmt.Sprintf("PVC %s from diskTemplate belongs to VM %s: delete that VM or rename the diskTemplate", key.Name, owner)
					r.fail(vm, ReasonDiskInUse, "CreateDisk", msg)
					return fmt.Errorf("VM %s/%s: %s", vm.Namespace, vm.Name, msg)
				} else if !apierrors.IsNotFound(err) {
					return fmt.Errorf("get VM %s/%s: %w", vm.Namespace, owner, err)
				}
			}
			if owner != vm.Name {
				patch := client.MergeFrom(pvc.DeepCopy())
				if pvc.Labels == nil {
					pvc.Labels = map[string]string{}
				}
				pvc.Labels[v1alpha1.VMNameLabel] = vm.Name
				if err := r.Client.Patch(ctx, pvc, patch); err != nil {
					return fmt.Errorf("adopt PVC %s for VM %s: %w", key, vm.Name, err)
				}
				r.Recorder.Eventf(vm, pvc, corev1.EventTypeNormal, "DiskReused", "CreateDisk", "using existing PVC %s", key.Name)
			}
		}
		vm.Status.DiskClaims = append(vm.Status.DiskClaims, key.Name)
	}
	return nil
}

// diskPVC is the PVC a disk template describes.
func diskPVC(vm *v1alpha1.VirtualMachine, tmpl *v1alpha1.DiskTemplate) *corev1.PersistentVolumeClaim {
	labels := map[string]string{}
	for k, v := range tmpl.ObjectMeta.Labels {
		labels[k] = v
	}
	labels[v1alpha1.VMNameLabel] = vm.Name
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:        tmpl.ObjectMeta.Name,
			Namespace:   vm.Namespace,
			Labels:      labels,
			Annotations: tmpl.ObjectMeta.Annotations,
		},
		Spec: *tmpl.Spec.DeepCopy(),
	}
}

// finalize stops a deleted VM's VMI, then deletes or keeps its disks as its
// retention policy says, then lets the VM go.
func (r *VMReconciler) finalize(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(vm, v1alpha1.VMFinalizer) {
		return ctrl.Result{}, nil
	}
	if vmi != nil {
		if vmi.DeletionTimestamp == nil {
			if err := r.Client.Delete(ctx, vmi, client.Preconditions{UID: &vmi.UID}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("delete VMI %s/%s of deleted VM: %w", vmi.Namespace, vmi.Name, err)
			}
		}
		vm.Status.PrintableStatus = v1alpha1.PrintableStatusTerminating
		return r.updateStatus(ctx, orig, vm, vmi)
	}
	if vm.Spec.DiskRetentionPolicy == v1alpha1.DiskDelete {
		for _, tmpl := range vm.Spec.DiskTemplates {
			pvc := &corev1.PersistentVolumeClaim{}
			key := types.NamespacedName{Namespace: vm.Namespace, Name: tmpl.ObjectMeta.Name}
			if err := r.APIReader.Get(ctx, key, pvc); apierrors.IsNotFound(err) {
				continue
			} else if err != nil {
				return ctrl.Result{}, fmt.Errorf("get PVC %s of deleted VM: %w", key, err)
			}
			if pvc.Labels[v1alpha1.VMNameLabel] != vm.Name {
				continue // adopted by another VM since
			}
			if err := r.Client.Delete(ctx, pvc, client.Preconditions{UID: &pvc.UID}); err != nil && !apierrors.IsNotFound(err) {
				return ctrl.Result{}, fmt.Errorf("delete PVC %s of deleted VM: %w", key, err)
			}
		}
	}
	patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(vm, v1alpha1.VMFinalizer)
	if err := r.Client.Patch(ctx, vm, patch); err != nil && !apierrors.IsNotFound(err) {
		return requeueOnConflict(fmt.Errorf("remove finalizer from VM %s/%s: %w", vm.Namespace, vm.Name, err))
	}
	r.claims.Release(string(vm.UID)) // its MACs and addresses are free now
	return ctrl.Result{}, nil
}

// fail records a failure on the VM: a Warning event and the Failure
// condition.
func (r *VMReconciler) fail(vm *v1alpha1.VirtualMachine, reason, action, msg string) {
	r.metrics.failures.WithLabelValues("VirtualMachine", reason).Inc()
	r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, reason, action, "%s", msg)
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: ConditionFailure, Status: metav1.ConditionTrue, Reason: reason, Message: msg, ObservedGeneration: vm.Generation,
	})
}

// updateStatus derives the VM's printable status and readiness from vmi and
// its disks, and writes the status if it changed.
func (r *VMReconciler) updateStatus(ctx context.Context, orig, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	d, err := r.readDisks(ctx, vm, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	var res ctrl.Result
	if d.uncached && d.state != diskReady {
		res.RequeueAfter = uncachedDiskRetry
	}
	r.setDisksReady(vm, d)
	r.setRestartRequired(vm, vmi)
	setMigrating(vm, vmi)
	s := &vm.Status
	s.ObservedGeneration = vm.Generation
	s.Created = vmi != nil
	s.Ready, s.NodeName, s.IP = false, "", ""
	ready := metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, Reason: "VMINotReady", ObservedGeneration: vm.Generation}
	if vmi == nil {
		ready.Reason = "NoVMI"
	} else {
		s.NodeName = vmi.Status.NodeName
		if len(vmi.Status.Interfaces) > 0 {
			s.IP = vmi.Status.Interfaces[0].IP
		}
		c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionReady)
		switch {
		case c != nil && c.Status == metav1.ConditionTrue && vmi.DeletionTimestamp == nil:
			s.Ready = true
			ready.Status, ready.Reason = metav1.ConditionTrue, "VMIReady"
		case vmi.Status.Phase == v1alpha1.Unknown:
			// Says which node is down and that the disks wait there.
			ready.Reason, ready.Message = ReasonNodeUnreachable, vmi.Status.Message
		default:
			if c := unschedulable(vmi); c != nil {
				// The scheduler's words: which resource, taint or
				// affinity no node satisfies.
				ready.Reason, ready.Message = ReasonUnschedulable, "the launcher pod cannot be scheduled: "+c.Message
			}
		}
	}
	meta.SetStatusCondition(&s.Conditions, ready)
	if vm.DeletionTimestamp != nil {
		s.PrintableStatus = v1alpha1.PrintableStatusTerminating
	} else {
		s.PrintableStatus = printableStatus(vm, vmi, d.state, r.now())
	}
	if equality.Semantic.DeepEqual(orig.Status, vm.Status) {
		return res, nil
	}
	if err := r.Client.Status().Patch(ctx, vm, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return requeueOnConflict(fmt.Errorf("update status of VM %s/%s: %w", vm.Namespace, vm.Name, err))
	}
	return res, nil
}

// unschedulable is the VMI's PodScheduled condition when the scheduler
// found no node for the launcher pod, else nil.
func unschedulable(vmi *v1alpha1.VirtualMachineInstance) *metav1.Condition {
	c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionPodScheduled)
	if c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonUnschedulable {
		return c
	}
	return nil
}

// printableStatus is the VM's state in one word. While the VM starts, its
// disks come first: a failed import, or one under way, is why it has not
// started; a PVC that merely waits for a volume yields to the launcher
// pod's own trouble, which may be what holds the volume back (with
// WaitForFirstConsumer it is made once the pod has a node).
func printableStatus(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance, disks diskState, now time.Time) v1alpha1.VirtualMachinePrintableStatus {
	if vmi == nil {
		if f := vm.Status.StartFailure; f != nil && f.RetryAfterTimestamp != nil && now.Before(f.RetryAfterTimestamp.Time) {
			return v1alpha1.PrintableStatusCrashLoopBackOff
		}
		return v1alpha1.PrintableStatusStopped
	}
	if vmi.DeletionTimestamp != nil {
		return v1alpha1.PrintableStatusStopping
	}
	switch vmi.Status.Phase {
	case v1alpha1.Running:
		if vmi.MigrationInFlight() != nil {
			return v1alpha1.PrintableStatusMigrating
		}
		if d := vmi.Status.Domain; d != nil && d.State == v1alpha1.DomainPaused {
			return v1alpha1.PrintableStatusPaused
		}
		return v1alpha1.PrintableStatusRunning
	case v1alpha1.Succeeded:
		return v1alpha1.PrintableStatusStopped
	case v1alpha1.Failed:
		return v1alpha1.PrintableStatusFailed
	case v1alpha1.Unknown:
		return v1alpha1.PrintableStatusUnknown
	}
	switch disks {
	case diskImportFailed:
		return v1alpha1.PrintableStatusDiskImportFailure
	case diskImporting:
		return v1alpha1.PrintableStatusProvisioning
	}
	if c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionSynchronized); c != nil && c.Status == metav1.ConditionFalse {
		switch c.Reason {
		case ReasonPVCNotFound:
			return v1alpha1.PrintableStatusPvcNotFound
		case ReasonPodCreateFailed:
			return v1alpha1.PrintableStatusLauncherPodFailure
		}
	}
	if unschedulable(vmi) != nil {
		return v1alpha1.PrintableStatusUnschedulable
	}
	if disks == diskClaimPending {
		return v1alpha1.PrintableStatusProvisioning
	}
	return v1alpha1.PrintableStatusStarting
}
