package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// eventRecorder is the part of the events API the reconcilers use.
type eventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// pvcRetry is how soon a VMI waiting for a missing PVC is looked at again.
const pvcRetry = 5 * time.Second

// VMIReconciler keeps exactly one launcher pod per VMI and the VMI's phase
// and conditions in step with that pod and with the node daemon's report.
type VMIReconciler struct {
	Client client.Client
	// APIReader reads from the API server directly, for what the cache
	// may not show yet.
	APIReader client.Reader
	Recorder  eventRecorder
	Config    *Config
	// Now is the clock (time.Now when nil).
	Now func() time.Time

	metrics *instruments
}

func (r *VMIReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// SetupWithManager registers the reconciler with mgr.
func (r *VMIReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.VirtualMachineInstance{}, indexNode, nodeIndex); err != nil {
		return fmt.Errorf("index VMIs by node: %w", err)
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("vmi").
		For(&v1alpha1.VirtualMachineInstance{}).
		Owns(&corev1.Pod{}).
		// A node that stops being Ready makes its VMIs' state unknown.
		Watches(&corev1.Node{}, handler.EnqueueRequestsFromMapFunc(r.vmisOnNode), builder.WithPredicates(readinessChanged)).
		WithOptions(controller.Options{MaxConcurrentReconciles: r.Config.VMIWorkers}).
		Complete(r)
}

// Reconcile brings one VMI a step closer to what its spec and its launcher
// pod say.
func (r *VMIReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	vmi := &v1alpha1.VirtualMachineInstance{}
	if err := r.Client.Get(ctx, req.NamespacedName, vmi); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if vmi.DeletionTimestamp != nil {
		return r.finalize(ctx, vmi)
	}
	if !controllerutil.ContainsFinalizer(vmi, v1alpha1.VMIFinalizer) {
		patch := client.MergeFromWithOptions(vmi.DeepCopy(), client.MergeFromWithOptimisticLock{})
		controllerutil.AddFinalizer(vmi, v1alpha1.VMIFinalizer)
		if err := r.Client.Patch(ctx, vmi, patch); err != nil {
			return requeueOnConflict(fmt.Errorf("add finalizer to VMI %s/%s: %w", vmi.Namespace, vmi.Name, err))
		}
	}

	orig := vmi.DeepCopy()
	now := r.now()
	var result ctrl.Result
	if ms := vmi.Status.MigrationState; ms != nil && ms.Completed && ms.TargetPod != "" && vmi.Status.LauncherPod != ms.TargetPod {
		// Migrated: the target pod is the VMI's launcher pod now.
		vmi.Status.LauncherPod, vmi.Status.NodeName = ms.TargetPod, ms.TargetNode
		for i := range vmi.Status.VolumeStatus {
			if vs := &vmi.Status.VolumeStatus[i]; vs.ClaimName == ms.SourcePod+"-"+vs.Name {
				vs.ClaimName = ms.TargetPod + "-" + vs.Name // a containerDisk's ephemeral claim
			}
		}
	}
	// A migration renames the claims in the spec; the status follows.
	for i := range vmi.Status.VolumeStatus {
		vs := &vmi.Status.VolumeStatus[i]
		for _, v := range vmi.Spec.Volumes {
			if v.Name == vs.Name && v.PersistentVolumeClaim != nil {
				vs.ClaimName = v.PersistentVolumeClaim.ClaimName
			}
		}
	}
	pod, err := r.getLauncherPod(ctx, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	if vmi.MigrationInFlight() != nil && pod != nil && podFinished(pod) {
		// The source launcher ends when its domain has left; the node
		// daemon says whether for the target: wait for its word.
		if _, err := r.updateStatus(ctx, orig, vmi); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
	}

	switch {
	case vmi.Status.Phase.IsFinal():
		// A finished VMI keeps nothing running.
		if err := r.deletePod(ctx, vmi, pod); err != nil {
			return ctrl.Result{}, err
		}
		setConditions(vmi, pod)

	case pod == nil && vmi.Status.LauncherPod == "":
		setPhase(vmi, v1alpha1.Pending, now)
		created, retry, err := r.createPod(ctx, vmi)
		if err != nil {
			r.setSynchronized(vmi, metav1.ConditionFalse, ReasonPodCreateFailed, err.Error())
			if _, uerr := r.updateStatus(ctx, orig, vmi); uerr != nil {
				return ctrl.Result{}, uerr
			}
			return ctrl.Result{}, err
		}
		if !created {
			result.RequeueAfter = retry
			break
		}
		r.setSynchronized(vmi, metav1.ConditionTrue, ReasonPodCreated, "")
		setPhase(vmi, v1alpha1.Scheduling, now)

	default:
		obs := observe(vmi, pod)
		// While its node is lost, a pod that was running may still run:
		// neither it nor a deletion it cannot confirm makes the VMI final.
		if obs.phase != v1alpha1.Failed || obs.reason == ReasonPodDeleted {
			lost, err := r.nodeLost(ctx, vmi)
			if err != nil {
				return ctrl.Result{}, err
			}
			if lost != "" && pod != nil {
				obs = observation{v1alpha1.Unknown, ReasonNodeUnreachable, lost}
			}
		}
		next := advance(vmi.Status.Phase, obs.phase)
		if next == v1alpha1.Unknown && vmi.Status.Message != obs.message {
			if vmi.Status.Phase != v1alpha1.Unknown {
				r.warn(vmi, obs.reason, "Watch", "%s", obs.message)
			}
			vmi.Status.Reason, vmi.Status.Message = obs.reason, obs.message
		} else if vmi.Status.Phase == v1alpha1.Unknown && next != v1alpha1.Unknown {
			vmi.Status.Reason, vmi.Status.Message = "", "" // the node is back
		}
		if next != vmi.Status.Phase {
			setPhase(vmi, next, now)
			if next.IsFinal() {
				vmi.Status.Reason, vmi.Status.Message = obs.reason, obs.message
				if next == v1alpha1.Failed {
					r.warn(vmi, obs.reason, "Run", "VMI failed: %s", obs.message)
				} else {
					r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, obs.reason, "Run", "VMI succeeded")
				}
			}
		}
		if pod != nil {
			vmi.Status.NodeName = pod.Spec.NodeName
			if c := podCondition(pod, corev1.PodScheduled); c != nil && c.Status == corev1.ConditionFalse && c.Reason == corev1.PodReasonUnschedulable &&
				!meta.IsStatusConditionPresentAndEqual(vmi.Status.Conditions, ConditionPodScheduled, metav1.ConditionFalse) {
				r.warn(vmi, ReasonUnschedulable, "Schedule", "launcher pod %s cannot be scheduled: %s", pod.Name, c.Message)
			}
		}
		setConditions(vmi, pod)
		if vmi.Status.Phase.IsFinal() {
			if err := r.deletePod(ctx, vmi, pod); err != nil {
				return ctrl.Result{}, err
			}
		}
	}

	if err := syncDisruptionBudget(ctx, r.Client, vmi, r.Config, vmi.MigrationInFlight() != nil); err != nil {
		return ctrl.Result{}, err
	}
	if res, err := r.updateStatus(ctx, orig, vmi); err != nil || res.RequeueAfter > 0 {
		return res, err
	}
	return result, nil
}

// getLauncherPod returns vmi's launcher pod, or nil when there is none. A
// pod the cache does not show but the VMI's status names is looked up on the
// API server, so a slow cache is not mistaken for a lost pod.
func (r *VMIReconciler) getLauncherPod(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance) (*corev1.Pod, error) {
	name := vmi.Status.LauncherPod // after a migration, not the first pod's name
	if name == "" {
		name = launcherPodName(vmi)
	}
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: name}
	pod := &corev1.Pod{}
	err := r.Client.Get(ctx, key, pod)
	if apierrors.IsNotFound(err) && vmi.Status.LauncherPod != "" {
		err = r.APIReader.Get(ctx, key, pod)
	}
	switch {
	case apierrors.IsNotFound(err):
		return nil, nil
	case err != nil:
		return nil, fmt.Errorf("get launcher pod %s: %w", key, err)
	}
	if !metav1.IsControlledBy(pod, vmi) {
		return nil, fmt.Errorf("pod %s exists but does not belong to VMI %s/%s (uid %s)", key, vmi.Namespace, vmi.Name, vmi.UID)
	}
	return pod, nil
}

// createPod makes vmi's launcher pod. It returns created=false and a retry
// delay when a PVC the VMI needs does not exist yet, or when the nodes'
// KVM probe it needs to choose emulation has not been reported yet.
func (r *VMIReconciler) createPod(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance) (created bool, retry time.Duration, err error) {
	claims := map[string]volumeClaim{}
	for _, v := range vmi.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		pvc := &corev1.PersistentVolumeClaim{}
		key := types.NamespacedName{Namespace: vmi.Namespace, Name: v.PersistentVolumeClaim.ClaimName}
		if err := r.APIReader.Get(ctx, key, pvc); apierrors.IsNotFound(err) {
			msg := fmt.Sprintf("volume %s: PVC %s does not exist; the VMI starts when it does", v.Name, key)
			if !meta.IsStatusConditionPresentAndEqual(vmi.Status.Conditions, ConditionSynchronized, metav1.ConditionFalse) {
				r.warn(vmi, ReasonPVCNotFound, "CreateLauncherPod", "%s", msg)
			}
			r.setSynchronized(vmi, metav1.ConditionFalse, ReasonPVCNotFound, msg)
			return false, pvcRetry, nil
		} else if err != nil {
			return false, 0, fmt.Errorf("volume %s: get PVC %s: %w", v.Name, key, err)
		}
		mode := corev1.PersistentVolumeFilesystem
		if pvc.Spec.VolumeMode != nil {
			mode = *pvc.Spec.VolumeMode
		}
		readOnly := len(pvc.Spec.AccessModes) == 1 && pvc.Spec.AccessModes[0] == corev1.ReadOnlyMany
		claims[key.Name] = volumeClaim{mode: mode, readOnly: readOnly}
	}
	emulate, wait, err := r.emulation(ctx, vmi)
	if err != nil {
		return false, 0, err
	}
	if wait != "" {
		if !meta.IsStatusConditionPresentAndEqual(vmi.Status.Conditions, ConditionSynchronized, metav1.ConditionFalse) {
			r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonWaitingForKVMProbe, "CreateLauncherPod", "%s", wait)
		}
		r.setSynchronized(vmi, metav1.ConditionFalse, ReasonWaitingForKVMProbe, wait)
		return false, probeRetry, nil
	}
	cfg := *r.Config
	cfg.UseEmulation = emulate
	pod, volumes, err := launcherPod(vmi, claims, &cfg)
	if err != nil {
		r.warn(vmi, ReasonPodCreateFailed, "CreateLauncherPod", "build launcher pod: %v", err)
		return false, 0, err
	}
	if err := r.Client.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		r.warn(vmi, ReasonPodCreateFailed, "CreateLauncherPod", "create launcher pod %s: %v", pod.Name, err)
		return false, 0, fmt.Errorf("create launcher pod %s/%s: %w", pod.Namespace, pod.Name, err)
	} else if err == nil {
		r.metrics.launcherPodsCreated.Inc()
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeNormal, "SuccessfulCreate", "CreateLauncherPod", "created launcher pod %s (%s)", pod.Name, accel(emulate))
	}
	vmi.Status.LauncherPod = pod.Name
	vmi.Status.VolumeStatus = volumes
	return true, 0, nil
}

// deletePod deletes a launcher pod that is still running.
func (r *VMIReconciler) deletePod(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance, pod *corev1.Pod) error {
	if pod == nil || pod.DeletionTimestamp != nil || podFinished(pod) {
		return nil
	}
	if err := r.Client.Delete(ctx, pod, client.Preconditions{UID: &pod.UID}); err != nil && !apierrors.IsNotFound(err) {
		r.warn(vmi, "FailedDelete", "DeleteLauncherPod", "delete launcher pod %s: %v", pod.Name, err)
		return fmt.Errorf("delete launcher pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	return nil
}

// finalize deletes a deleted VMI's launcher pod, and lets the VMI go once
// the pod is gone, has finished, or never reached a node.
func (r *VMIReconciler) finalize(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	if !controllerutil.ContainsFinalizer(vmi, v1alpha1.VMIFinalizer) {
		return ctrl.Result{}, nil
	}
	pod, err := r.getLauncherPod(ctx, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.deletePod(ctx, vmi, pod); err != nil {
		return ctrl.Result{}, err
	}
	if pod != nil && !podFinished(pod) && pod.Spec.NodeName != "" {
		// The kubelet is stopping the launcher, which shuts the guest
		// down; the pod's deletion wakes us up again.
		log.FromContext(ctx).V(1).Info("waiting for launcher pod to terminate", "pod", pod.Name)
		return ctrl.Result{}, nil
	}
	patch := client.MergeFromWithOptions(vmi.DeepCopy(), client.MergeFromWithOptimisticLock{})
	controllerutil.RemoveFinalizer(vmi, v1alpha1.VMIFinalizer)
	if err := r.Client.Patch(ctx, vmi, patch); err != nil && !apierrors.IsNotFound(err) {
		return requeueOnConflict(fmt.Errorf("remove finalizer from VMI %s/%s: %w", vmi.Namespace, vmi.Name, err))
	}
	return ctrl.Result{}, nil
}

func (r *VMIReconciler) setSynchronized(vmi *v1alpha1.VirtualMachineInstance, status metav1.ConditionStatus, reason, message string) {
	meta.SetStatusCondition(&vmi.Status.Conditions, metav1.Condition{
		Type: ConditionSynchronized, Status: status, Reason: reason, Message: message, ObservedGeneration: vmi.Generation,
	})
}

// updateStatus writes vmi's status if it changed since orig, and records the
// phase transitions it made.
func (r *VMIReconciler) updateStatus(ctx context.Context, orig, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	if equality.Semantic.DeepEqual(orig.Status, vmi.Status) {
		return ctrl.Result{}, nil
	}
	if err := r.Client.Status().Patch(ctx, vmi, client.MergeFromWithOptions(orig, client.MergeFromWithOptimisticLock{})); err != nil {
		return requeueOnConflict(fmt.Errorf("update status of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err))
	}
	// Record each phase this write entered.
	seen := len(orig.Status.PhaseTransitionTimestamps)
	for i := seen; i < len(vmi.Status.PhaseTransitionTimestamps); i++ {
		t := vmi.Status.PhaseTransitionTimestamps[i]
		view := orig.DeepCopy()
		view.Status.PhaseTransitionTimestamps = vmi.Status.PhaseTransitionTimestamps[:i]
		r.metrics.observePhase(view, t.Phase, t.PhaseTransitionTimestamp.Time)
	}
	return ctrl.Result{}, nil
}

func (r *VMIReconciler) warn(obj runtime.Object, reason, action, format string, args ...any) {
	r.metrics.failures.WithLabelValues("VirtualMachineInstance", reason).Inc()
	r.Recorder.Eventf(obj, nil, corev1.EventTypeWarning, reason, action, format, args...)
}

// setPhase moves vmi into phase at now, recording the transition.
func setPhase(vmi *v1alpha1.VirtualMachineInstance, phase v1alpha1.VirtualMachineInstancePhase, now time.Time) {
	if vmi.Status.Phase == phase {
		return
	}
	vmi.Status.Phase = phase
	vmi.Status.PhaseTransitionTimestamps = append(vmi.Status.PhaseTransitionTimestamps, v1alpha1.VirtualMachineInstancePhaseTransitionTimestamp{
		Phase: phase, PhaseTransitionTimestamp: metav1.NewTime(now),
	})
}

func podFinished(pod *corev1.Pod) bool {
	return pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
}

// requeueOnConflict turns a write conflict (someone else updated the object
// first) into a quiet retry, and passes other errors on.
func requeueOnConflict(err error) (ctrl.Result, error) {
	if apierrors.IsConflict(err) {
		return ctrl.Result{RequeueAfter: 50 * time.Millisecond}, nil
	}
	return ctrl.Result{}, err
}
