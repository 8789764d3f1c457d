package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	crhandler "sigs.k8s.io/controller-runtime/pkg/handler"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// VM snapshots: the VM is held (it does not start) while a
// VirtualMachineSnapshotContent records its spec and one CSI VolumeSnapshot
// per PVC disk is taken; on podvirt's volumes each is O(1) (csi/volume
// Freeze). A running VM is not held: the node daemon switches its disks to
// new overlays with the guest frozen or paused (status.snapshotState), and
// the VolumeSnapshots keep the layers it froze.
const (
	// SnapshotFinalizer holds a snapshot or restore until the VM it held
	// is let go.
	SnapshotFinalizer = "podvirt.io/snapshot"

	ReasonSnapshotSucceeded = "SnapshotSucceeded"
	ReasonSnapshotFailed    = "SnapshotFailed"

	// defaultSnapshotDeadline is a snapshot's failure deadline when its
	// spec gives none.
	defaultSnapshotDeadline = 5 * time.Minute
	// snapshotPoll is how often a snapshot in progress looks again when no
	// event brings it back sooner (its VMI and VolumeSnapshots are
	// watched).
	snapshotPoll = 5 * time.Second
	// snapshotLabel on a VolumeSnapshot names the VM snapshot it is part of.
	snapshotLabel = "podvirt.io/vmsnapshot"
	// defaultClassAnnotation marks the default VolumeSnapshotClass.
	defaultClassAnnotation = "snapshot.storage.kubernetes.io/is-default-class"
)

var (
	volumeSnapshotGVK      = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshot"}
	volumeSnapshotClassGVK = schema.GroupVersionKind{Group: "snapshot.storage.k8s.io", Version: "v1", Kind: "VolumeSnapshotClassList"}
)

// SnapshotReconciler drives VirtualMachineSnapshots.
type SnapshotReconciler struct {
	Client    client.Client
	APIReader client.Reader
	Recorder  eventRecorder
	now       func() time.Time
}

// SetupWithManager watches snapshots and their contents.
func (r *SnapshotReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.now == nil {
		r.now = time.Now
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("snapshot").
		For(&v1alpha1.VirtualMachineSnapshot{}).
		Owns(&v1alpha1.VirtualMachineSnapshotContent{}).
		Watches(&v1alpha1.VirtualMachineInstance{}, crhandler.EnqueueRequestsFromMapFunc(r.snapshotOfVMI))
	// The VolumeSnapshots are watched when the cluster has their API; a
	// cluster without it only fails the snapshots that need it.
	if _, err := mgr.GetRESTMapper().RESTMapping(volumeSnapshotGVK.GroupKind(), volumeSnapshotGVK.Version); err == nil {
		vs := &unstructured.Unstructured{}
		vs.SetGroupVersionKind(volumeSnapshotGVK)
		b = b.Watches(vs, crhandler.EnqueueRequestsFromMapFunc(snapshotOfVolumeSnapshot))
	}
	return b.Complete(r)
}

// snapshotOfVMI maps a VMI whose online snapshot the node daemon works on
// to that snapshot.
func (r *SnapshotReconciler) snapshotOfVMI(ctx context.Context, o client.Object) []ctrl.Request {
	ss := o.(*v1alpha1.VirtualMachineInstance).Status.SnapshotState
	if ss == nil {
		return nil
	}
	list := &v1alpha1.VirtualMachineSnapshotList{}
	if err := r.Client.List(ctx, list, client.InNamespace(o.GetNamespace())); err != nil {
		return nil
	}
	for _, s := range list.Items {
		if s.UID == ss.SnapshotUID {
			return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: s.Namespace, Name: s.Name}}}
		}
	}
	return nil
}

// snapshotOfVolumeSnapshot maps a disk's VolumeSnapshot to its VM snapshot.
func snapshotOfVolumeSnapshot(_ context.Context, o client.Object) []ctrl.Request {
	if name := o.GetLabels()[snapshotLabel]; name != "" {
		return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
	}
	return nil
}

// Reconcile moves one snapshot a step.
func (r *SnapshotReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	s := &v1alpha1.VirtualMachineSnapshot{}
	if err := r.Client.Get(ctx, req.NamespacedName, s); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	vmName := s.Spec.Source.Name
	if s.DeletionTimestamp != nil || final(s.Status.Phase) {
		if err := releaseVM(ctx, r.Client, s.Namespace, vmName, v1alpha1.SnapshotInProgressAnnotation, s.Name); err != nil {
			return ctrl.Result{}, err
		}
		return ctrl.Result{}, removeFinalizer(ctx, r.Client, s)
	}
	if err := addFinalizer(ctx, r.Client, s); err != nil {
		return ctrl.Result{}, err
	}
	orig := s.DeepCopy()
	res, err := r.step(ctx, s)
	if uerr := r.Client.Status().Patch(ctx, s, client.MergeFrom(orig)); uerr != nil && !apierrors.IsNotFound(uerr) {
		return ctrl.Result{}, fmt.Errorf("update status of snapshot %s: %w", req, uerr)
	}
	// Once over, the status update brings the snapshot back to let the VM
	// go and drop the finalizer.
	return res, err
}

// step takes the snapshot as far as it can go now.
func (r *SnapshotReconciler) step(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot) (ctrl.Result, error) {
	deadline := defaultSnapshotDeadline
	if s.Spec.FailureDeadline != nil {
		deadline = s.Spec.FailureDeadline.Duration
	}
	if s.Status.Phase == "" {
		s.Status.Phase = v1alpha1.SnapshotInProgress
	}
	if r.now().After(s.CreationTimestamp.Add(deadline)) {
		msg := fmt.Sprintf("not done within its failure deadline of %s", deadline)
		if s.Status.Error != nil && s.Status.Error.Message != "" {
			msg += ": " + s.Status.Error.Message
		}
		r.fail(s, msg)
		return ctrl.Result{}, nil
	}
	src := s.Spec.Source
	if src.Kind != "VirtualMachine" || (src.APIGroup != nil && *src.APIGroup != v1alpha1.GroupName) {
		r.fail(s, fmt.Sprintf("source %s %s: only a VirtualMachine (podvirt.io) can be snapshotted", src.Kind, src.Name))
		return ctrl.Result{}, nil
	}
	content := &v1alpha1.VirtualMachineSnapshotContent{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: s.Namespace, Name: contentName(s)}, content)
	if apierrors.IsNotFound(err) {
		return r.capture(ctx, s)
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	return r.follow(ctx, s, content)
}

// capture holds the stopped VM and records it, with the VolumeSnapshots to
// take, in the snapshot's content.
func (r *SnapshotReconciler) capture(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot) (ctrl.Result, error) {
	vm := &v1alpha1.VirtualMachine{}
	key := types.NamespacedName{Namespace: s.Namespace, Name: s.Spec.Source.Name}
	if err := r.APIReader.Get(ctx, key, vm); err != nil {
		if apierrors.IsNotFound(err) {
			r.fail(s, fmt.Sprintf("VM %s does not exist", key.Name))
			return ctrl.Result{}, nil
		}
		return ctrl.Result{}, err
	}
	vmi := &v1alpha1.VirtualMachineInstance{}
	if err := r.APIReader.Get(ctx, key, vmi); err == nil {
		return r.captureOnline(ctx, s, vm, vmi)
	} else if !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	if held, err := holdVM(ctx, r.Client, vm, v1alpha1.SnapshotInProgressAnnotation, s.Name); err != nil || held != "" {
		if held != "" {
			return r.waiting(s, "waiting for "+held+" to finish with the VM")
		}
		return ctrl.Result{}, err
	}
	// A start that raced the hold would show now.
	if running, err := hasVMI(ctx, r.APIReader, vm); err != nil || running {
		if err == nil {
			r.fail(s, fmt.Sprintf("VM %s started while it was being snapshotted; snapshot it again", vm.Name))
		}
		return ctrl.Result{}, err
	}
	backups, err := r.volumeBackups(ctx, s, vm.Namespace, vm.Spec.Template.Spec.Volumes)
	if err != nil {
		return r.refused(s, err)
	}
	return r.record(ctx, s, vm, backups, []v1alpha1.Indication{v1alpha1.IndicationOffline})
}

// captureOnline asks the node daemon to switch the running VMI's disks to
// new overlays (status.snapshotState), each current image becoming the
// layer its VolumeSnapshot then keeps, and records the VM once it has.
func (r *SnapshotReconciler) captureOnline(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	waiting := func(msg string) (ctrl.Result, error) { return r.waiting(s, msg) }
	if vmi.Status.Phase != v1alpha1.Running {
		return waiting(fmt.Sprintf("VMI %s is %s: waiting for it to run or to be gone", vmi.Name, vmi.Status.Phase))
	}
	if vmi.MigrationInFlight() != nil {
		return waiting(fmt.Sprintf("VMI %s is migrating: waiting for the migration to end", vmi.Name))
	}
	backups, err := r.volumeBackups(ctx, s, vmi.Namespace, vmi.Spec.Volumes)
	if err != nil {
		return r.refused(s, err)
	}
	if len(backups) == 0 {
		return r.record(ctx, s, vm, nil, []v1alpha1.Indication{v1alpha1.IndicationOnline}) // no disk to freeze
	}
	ss := vmi.Status.SnapshotState
	switch {
	case ss != nil && ss.SnapshotUID == s.UID && ss.Error != "":
		r.fail(s, fmt.Sprintf("VMI %s could not switch its disks to new overlays: %s", vmi.Name, ss.Error))
		return ctrl.Result{}, nil
	case ss != nil && ss.SnapshotUID == s.UID && ss.Completed:
		return r.record(ctx, s, vm, backups, onlineIndications(ss))
	case ss != nil && ss.SnapshotUID == s.UID:
		return waiting(fmt.Sprintf("waiting for the node daemon to switch VMI %s's disks to new overlays", vmi.Name))
	case ss != nil && !ss.Completed && ss.Error == "":
		return waiting(fmt.Sprintf("waiting for another snapshot (%s) of VMI %s", ss.SnapshotUID, vmi.Name))
	}
	for _, b := range backups {
		if err := r.checkOnlineDisk(ctx, b); err != nil {
			return r.refused(s, err)
		}
	}
	layers := map[string]string{}
	for _, b := range backups {
		// The CSI driver finds the layer by the VolumeSnapshot's name.
		layers[b.VolumeName] = diskmeta.LayerName(b.VolumeSnapshotName)
	}
	// A JSON patch replaces the whole field: nothing of an earlier
	// snapshot's outcome stays.
	state := v1alpha1.SnapshotState{SnapshotUID: s.UID, Layers: layers, FreezeTimeoutMilliseconds: freezeTimeout.Milliseconds()}
	if s.Spec.IncludeMemory {
		state.MemoryVolume = backups[0].VolumeName // beside the first disk
	}
	patch, err := json.Marshal([]map[string]any{
		{"op": "test", "path": "/metadata/uid", "value": vmi.UID},
		{"op": "add", "path": "/status/snapshotState", "value": state},
	})
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Client.Status().Patch(ctx, vmi, client.RawPatch(types.JSONPatchType, patch)); err != nil {
		return ctrl.Result{}, fmt.Errorf("ask VMI %s/%s for an online snapshot: %w", vmi.Namespace, vmi.Name, err)
	}
	return waiting(fmt.Sprintf("waiting for the node daemon to switch VMI %s's disks to new overlays", vmi.Name))
}

// checkOnlineDisk refuses a disk that cannot switch to an overlay while
// the VM runs: only podvirt's own disks can.
func (r *SnapshotReconciler) checkOnlineDisk(ctx context.Context, b v1alpha1.VolumeBackup) error {
	claim := b.PersistentVolumeClaim // as volumeBackups just read it
	pv := &corev1.PersistentVolume{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Name: claim.Spec.VolumeName}, pv); err != nil {
		return fmt.Errorf("PVC %s: get its PV %s: %w", claim.Name, claim.Spec.VolumeName, err)
	}
	block := claim.Spec.VolumeMode != nil && *claim.Spec.VolumeMode == corev1.PersistentVolumeBlock
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != v1alpha1.CSIDriverName || block {
		return &refusal{ReasonSnapshotFailed, fmt.Sprintf("volume %s (PVC %s) is not a podvirt Filesystem disk: a running VM's snapshot needs every disk to be one; stop the VM to snapshot it", b.VolumeName, claim.Name)}
	}
	return nil
}

// freezeTimeout bounds the guest agent's freeze before the guest is paused
// instead.
const freezeTimeout = 5 * time.Second

func onlineIndications(ss *v1alpha1.SnapshotState) []v1alpha1.Indication {
	out := []v1alpha1.Indication{v1alpha1.IndicationOnline}
	switch {
	case ss.MemorySaved: // the agent is not asked: memory and disks are one instant
	case ss.GuestAgent:
		out = append(out, v1alpha1.IndicationGuestAgent)
	default:
		out = append(out, v1alpha1.IndicationNoGuestAgent)
	}
	if ss.Quiesced {
		out = append(out, v1alpha1.IndicationQuiesced)
	}
	if ss.Paused {
		out = append(out, v1alpha1.IndicationPaused)
	}
	if ss.MemorySaved {
		out = append(out, v1alpha1.IndicationMemoryIncluded)
	}
	return out
}

// waiting says what the snapshot waits for, and looks again later. The
// message keeps its time while it stays the same: a status that changed on
// every pass would bring the snapshot straight back.
func (r *SnapshotReconciler) waiting(s *v1alpha1.VirtualMachineSnapshot, msg string) (ctrl.Result, error) {
	if s.Status.Error == nil || s.Status.Error.Message != msg {
		s.Status.Error = &v1alpha1.SnapshotError{Time: ptr.To(metav1.NewTime(r.now())), Message: msg}
	}
	return ctrl.Result{RequeueAfter: snapshotPoll}, nil
}

// refused fails the snapshot for a refusal, or returns another error.
func (r *SnapshotReconciler) refused(s *v1alpha1.VirtualMachineSnapshot, err error) (ctrl.Result, error) {
	if rf, ok := asRefusal(err); ok {
		r.fail(s, rf.msg)
		return ctrl.Result{}, nil
	}
	return ctrl.Result{}, err
}

// record keeps the VM's spec and its disks' VolumeSnapshots to take in the
// snapshot's content.
func (r *SnapshotReconciler) record(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, vm *v1alpha1.VirtualMachine, backups []v1alpha1.VolumeBackup, indications []v1alpha1.Indication) (ctrl.Result, error) {
	content := &v1alpha1.VirtualMachineSnapshotContent{
		ObjectMeta: metav1.ObjectMeta{Name: contentName(s), Namespace: s.Namespace},
		Spec: v1alpha1.VirtualMachineSnapshotContentSpec{
			VirtualMachineSnapshotName: s.Name,
			Source: v1alpha1.SnapshotSourceVM{
				Name: vm.Name, Labels: vm.Labels, Annotations: withoutHolds(vm.Annotations), Spec: vm.Spec,
			},
			VolumeBackups: backups,
		},
	}
	if err := controllerutil.SetControllerReference(s, content, r.Client.Scheme()); err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Client.Create(ctx, content); err != nil && !apierrors.IsAlreadyExists(err) {
		return ctrl.Result{}, fmt.Errorf("snapshot %s/%s: create its content: %w", s.Namespace, s.Name, err)
	}
	uid := vm.UID
	now := metav1.NewTime(r.now())
	s.Status.SourceUID, s.Status.CreationTime = &uid, &now
	s.Status.VirtualMachineSnapshotContentName = content.Name
	s.Status.Indications = indications
	s.Status.ReadyToUse = ptr.To(false)
	s.Status.Error = nil
	return ctrl.Result{RequeueAfter: snapshotPoll}, nil
}

// volumeBackups lists the PVC disks of volumes with the VolumeSnapshot
// each gets.
func (r *SnapshotReconciler) volumeBackups(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, ns string, volumes []v1alpha1.Volume) ([]v1alpha1.VolumeBackup, error) {
	var out []v1alpha1.VolumeBackup
	for _, v := range volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		pvc := &corev1.PersistentVolumeClaim{}
		if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: v.PersistentVolumeClaim.ClaimName}, pvc); err != nil {
			if apierrors.IsNotFound(err) {
				return nil, &refusal{ReasonSnapshotFailed, fmt.Sprintf("volume %s: PVC %s does not exist", v.Name, v.PersistentVolumeClaim.ClaimName)}
			}
			return nil, err
		}
		if pvc.Status.Phase != corev1.ClaimBound {
			return nil, &refusal{ReasonSnapshotFailed, fmt.Sprintf("volume %s: PVC %s is %s, not Bound: its disk is made when the VM first starts; start it once, then snapshot", v.Name, pvc.Name, pvc.Status.Phase)}
		}
		out = append(out, v1alpha1.VolumeBackup{
			VolumeName: v.Name,
			PersistentVolumeClaim: v1alpha1.PersistentVolumeClaimBackup{
				Name: pvc.Name, Labels: pvc.Labels, Annotations: pvc.Annotations, Spec: pvc.Spec,
			},
			VolumeSnapshotName: fmt.Sprintf("vmsnapshot-%s-volume-%s", s.UID, v.Name),
			Node:               pvc.Annotations[selectedNodeAnnotation],
		})
	}
	return out, nil
}

// follow takes the content's VolumeSnapshots and waits for them.
func (r *SnapshotReconciler) follow(ctx context.Context, s *v1alpha1.VirtualMachineSnapshot, content *v1alpha1.VirtualMachineSnapshotContent) (ctrl.Result, error) {
	corig := content.DeepCopy()
	ready := true
	var statuses []v1alpha1.VolumeSnapshotStatus
	for _, b := range content.Spec.VolumeBackups {
		vs, err := r.ensureVolumeSnapshot(ctx, content, b)
		if err != nil {
			if rf, ok := asRefusal(err); ok {
				r.fail(s, rf.msg)
				return ctrl.Result{}, nil
			}
			return ctrl.Result{}, err
		}
		st := volumeSnapshotState(vs)
		statuses = append(statuses, st)
		if st.Error != nil && st.Error.Message != "" {
			r.fail(s, fmt.Sprintf("volume %s: VolumeSnapshot %s: %s", b.VolumeName, b.VolumeSnapshotName, st.Error.Message))
			return ctrl.Result{}, nil
		}
		ready = ready && st.ReadyToUse != nil && *st.ReadyToUse
	}
	content.Status.VolumeSnapshotStatus = statuses
	content.Status.ReadyToUse = ptr.To(ready)
	if content.Status.CreationTime == nil {
		content.Status.CreationTime = s.Status.CreationTime
	}
	if err := r.Client.Status().Patch(ctx, content, client.MergeFrom(corig)); err != nil {
		return ctrl.Result{}, fmt.Errorf("update status of snapshot content %s: %w", content.Name, err)
	}
	if !ready {
		return ctrl.Result{RequeueAfter: snapshotPoll}, nil
	}
	s.Status.Phase, s.Status.ReadyToUse, s.Status.Error = v1alpha1.SnapshotSucceeded, ptr.To(true), nil
	r.Recorder.Eventf(s, nil, corev1.EventTypeNormal, ReasonSnapshotSucceeded, "Snapshot", "VM %s: %d disks kept", s.Spec.Source.Name, len(content.Spec.VolumeBackups))
	return ctrl.Result{}, nil
}

// ensureVolumeSnapshot creates (once) the VolumeSnapshot of backup b and
// returns it.
func (r *SnapshotReconciler) ensureVolumeSnapshot(ctx context.Context, content *v1alpha1.VirtualMachineSnapshotContent, b v1alpha1.VolumeBackup) (*unstructured.Unstructured, error) {
	vs := &unstructured.Unstructured{}
	vs.SetGroupVersionKind(volumeSnapshotGVK)
	err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: content.Namespace, Name: b.VolumeSnapshotName}, vs)
	if err == nil || !apierrors.IsNotFound(err) {
		return vs, err
	}
	class, err := r.snapshotClass(ctx, content.Namespace, b.PersistentVolumeClaim.Name)
	if err != nil {
		return nil, err
	}
	vs = &unstructured.Unstructured{Object: map[string]any{
		"spec": map[string]any{
			"volumeSnapshotClassName": class,
			"source":                  map[string]any{"persistentVolumeClaimName": b.PersistentVolumeClaim.Name},
		},
	}}
	vs.SetGroupVersionKind(volumeSnapshotGVK)
	vs.SetNamespace(content.Namespace)
	vs.SetName(b.VolumeSnapshotName)
	vs.SetLabels(map[string]string{v1alpha1.VMNameLabel: content.Spec.Source.Name, snapshotLabel: content.Spec.VirtualMachineSnapshotName})
	if err := controllerutil.SetControllerReference(content, vs, r.Client.Scheme()); err != nil {
		return nil, err
	}
	if err := r.Client.Create(ctx, vs); err != nil && !apierrors.IsAlreadyExists(err) {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			return nil, &refusal{ReasonSnapshotFailed, "the cluster has no VolumeSnapshot API (snapshot.storage.k8s.io/v1): install the external-snapshotter CRDs and snapshot controller (the podvirt chart installs the controller)"}
		}
		return nil, fmt.Errorf("create VolumeSnapshot %s: %w", b.VolumeSnapshotName, err)
	}
	return vs, nil
}

// snapshotClass picks the VolumeSnapshotClass for the claim's CSI driver:
// the default one of that driver, or its only one.
func (r *SnapshotReconciler) snapshotClass(ctx context.Context, ns, claim string) (string, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: ns, Name: claim}, pvc); err != nil {
		if apierrors.IsNotFound(err) {
			return "", &refusal{ReasonSnapshotFailed, fmt.Sprintf("PVC %s was deleted before its snapshot was taken", claim)}
		}
		return "", err
	}
	pv := &corev1.PersistentVolume{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return "", fmt.Errorf("PVC %s: get its PV %s: %w", claim, pvc.Spec.VolumeName, err)
	}
	if pv.Spec.CSI == nil {
		return "", &refusal{ReasonSnapshotFailed, fmt.Sprintf("PVC %s is not a CSI volume: it cannot be snapshotted", claim)}
	}
	classes := &unstructured.UnstructuredList{}
	classes.SetGroupVersionKind(volumeSnapshotClassGVK)
	if err := r.APIReader.List(ctx, classes); err != nil {
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) {
			return "", &refusal{ReasonSnapshotFailed, "the cluster has no VolumeSnapshotClass API (snapshot.storage.k8s.io/v1): install the external-snapshotter CRDs"}
		}
		return "", fmt.Errorf("list VolumeSnapshotClasses: %w", err)
	}
	var found []string
	for _, c := range classes.Items {
		if driver, _, _ := unstructured.NestedString(c.Object, "driver"); driver != pv.Spec.CSI.Driver {
			continue
		}
		if c.GetAnnotations()[defaultClassAnnotation] == "true" {
			return c.GetName(), nil
		}
		found = append(found, c.GetName())
	}
	switch len(found) {
	case 0:
		return "", &refusal{ReasonSnapshotFailed, fmt.Sprintf("no VolumeSnapshotClass has driver %s (PVC %s): create one (the podvirt chart does with volumeSnapshotClass.create=true)", pv.Spec.CSI.Driver, claim)}
	case 1:
		return found[0], nil
	}
	return "", &refusal{ReasonSnapshotFailed, fmt.Sprintf("VolumeSnapshotClasses %v all have driver %s and none is the default: annotate one %s=true", found, pv.Spec.CSI.Driver, defaultClassAnnotation)}
}

// volumeSnapshotState reads a VolumeSnapshot's status.
func volumeSnapshotState(vs *unstructured.Unstructured) v1alpha1.VolumeSnapshotStatus {
	st := v1alpha1.VolumeSnapshotStatus{VolumeSnapshotName: vs.GetName()}
	if ready, ok, _ := unstructured.NestedBool(vs.Object, "status", "readyToUse"); ok {
		st.ReadyToUse = ptr.To(ready)
	}
	if t, ok, _ := unstructured.NestedString(vs.Object, "status", "creationTime"); ok {
		if parsed, err := time.Parse(time.RFC3339, t); err == nil {
			st.CreationTime = ptr.To(metav1.NewTime(parsed))
		}
	}
	if msg, ok, _ := unstructured.NestedString(vs.Object, "status", "error", "message"); ok && msg != "" {
		st.Error = &v1alpha1.SnapshotError{Message: msg}
	}
	return st
}

func (r *SnapshotReconciler) fail(s *v1alpha1.VirtualMachineSnapshot, msg string) {
	now := metav1.NewTime(r.now())
	s.Status.Phase, s.Status.ReadyToUse = v1alpha1.SnapshotFailed, ptr.To(false)
	s.Status.Error = &v1alpha1.SnapshotError{Time: &now, Message: msg}
	r.Recorder.Eventf(s, nil, corev1.EventTypeWarning, ReasonSnapshotFailed, "Snapshot", "%s", msg)
}

func contentName(s *v1alpha1.VirtualMachineSnapshot) string {
	return "vmsnapshot-content-" + string(s.UID)
}

func final(p v1alpha1.SnapshotPhase) bool {
	return p == v1alpha1.SnapshotSucceeded || p == v1alpha1.SnapshotFailed
}

// hasVMI reports whether the VM has a VMI (running, starting or stopping).
func hasVMI(ctx context.Context, c client.Reader, vm *v1alpha1.VirtualMachine) (bool, error) {
	err := c.Get(ctx, types.NamespacedName{Namespace: vm.Namespace, Name: vm.Name}, &v1alpha1.VirtualMachineInstance{})
	if apierrors.IsNotFound(err) {
		return false, nil
	}
	return err == nil, err
}

// holdVM marks vm held by owner (annotation key, value owner's name) so it
// does not start; it returns who else holds it, if anyone does.
func holdVM(ctx context.Context, c client.Client, vm *v1alpha1.VirtualMachine, key, owner string) (string, error) {
	for _, k := range []string{v1alpha1.SnapshotInProgressAnnotation, v1alpha1.RestoreInProgressAnnotation} {
		if h := vm.Annotations[k]; h != "" && (k != key || h != owner) {
			return fmt.Sprintf("%s %s", map[string]string{v1alpha1.SnapshotInProgressAnnotation: "snapshot", v1alpha1.RestoreInProgressAnnotation: "restore"}[k], h), nil
		}
	}
	if vm.Annotations[key] == owner {
		return "", nil
	}
	patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if vm.Annotations == nil {
		vm.Annotations = map[string]string{}
	}
	vm.Annotations[key] = owner
	if err := c.Patch(ctx, vm, patch); err != nil {
		return "", fmt.Errorf("hold VM %s/%s: %w", vm.Namespace, vm.Name, err)
	}
	return "", nil
}

// heldBySnapshot reports whether a snapshot or restore holds vm.
func heldBySnapshot(vm *v1alpha1.VirtualMachine) bool {
	return vm.Annotations[v1alpha1.SnapshotInProgressAnnotation] != "" || vm.Annotations[v1alpha1.RestoreInProgressAnnotation] != ""
}

// releaseVM removes owner's hold on VM name, if it still has it.
func releaseVM(ctx context.Context, c client.Client, ns, name, key, owner string) error {
	vm := &v1alpha1.VirtualMachine{}
	if err := c.Get(ctx, types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		return client.IgnoreNotFound(err)
	}
	if vm.Annotations[key] != owner {
		return nil
	}
	patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
	delete(vm.Annotations, key)
	if err := c.Patch(ctx, vm, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("let VM %s/%s go: %w", ns, name, err)
	}
	return nil
}

// withoutHolds is a VM's annotations without the holds of snapshots and
// restores.
func withoutHolds(a map[string]string) map[string]string {
	out := maps.Clone(a)
	delete(out, v1alpha1.SnapshotInProgressAnnotation)
	delete(out, v1alpha1.RestoreInProgressAnnotation)
	return out
}

func addFinalizer(ctx context.Context, c client.Client, o client.Object) error {
	if controllerutil.ContainsFinalizer(o, SnapshotFinalizer) {
		return nil
	}
	patch := client.MergeFrom(o.DeepCopyObject().(client.Object))
	controllerutil.AddFinalizer(o, SnapshotFinalizer)
	if err := c.Patch(ctx, o, patch); err != nil {
		return fmt.Errorf("add finalizer to %s: %w", o.GetName(), err)
	}
	return nil
}

func removeFinalizer(ctx context.Context, c client.Client, o client.Object) error {
	if !controllerutil.ContainsFinalizer(o, SnapshotFinalizer) {
		return nil
	}
	patch := client.MergeFrom(o.DeepCopyObject().(client.Object))
	controllerutil.RemoveFinalizer(o, SnapshotFinalizer)
	if err := c.Patch(ctx, o, patch); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("remove finalizer of %s: %w", o.GetName(), err)
	}
	return nil
}
