package controller

import (
	"cmp"
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// The VM's DisksReady condition (KubeVirt's DataVolumesReady): True once
// every PVC the VM starts from has its volume; otherwise False, naming each
// PVC that has not and why, from the CSI driver's import annotations
// (v1alpha1.ImportPhaseAnnotation and the rest).
const (
	ConditionDisksReady = "DisksReady"

	ReasonDisksReady = "AllDisksReady"
	// ReasonDiskImporting: an import runs, retries or waits to resume.
	ReasonDiskImporting = "Importing"
	// ReasonDiskImportFailed: an import failed for good; also the reason
	// of the Warning event on the VM.
	ReasonDiskImportFailed = "DiskImportFailed"
	// ReasonDiskClaimPending: a PVC waits for a volume and no import has
	// reported yet.
	ReasonDiskClaimPending = "ClaimPending"
)

// uncachedDiskRetry is how soon a VM is looked at again while a disk whose
// PVC it does not own (so the cache does not hold, nor watch) is not ready.
const uncachedDiskRetry = 10 * time.Second

// diskState is how far a disk is from ready; a VM's disks are as far as
// the farthest.
type diskState int

const (
	diskReady diskState = iota
	// diskClaimPending: the PVC has no volume yet, and no import has
	// reported (none needed, or the claim has not reached the driver).
	diskClaimPending
	diskImporting
	diskImportFailed
)

// disks is what a VM's disks say: their state, and a note per disk that
// is not ready.
type disks struct {
	state diskState
	notes []diskNote
	// uncached: a disk that is not ready was read around the cache, so no
	// event brings its progress.
	uncached bool
}

type diskNote struct {
	state diskState
	text  string
}

// message is one line per disk that is not ready, the farthest from ready
// (a failure) first.
func (d disks) message() string {
	notes := slices.Clone(d.notes)
	slices.SortStableFunc(notes, func(a, b diskNote) int { return cmp.Compare(b.state, a.state) })
	lines := make([]string, len(notes))
	for i, n := range notes {
		lines[i] = n.text
	}
	msg := strings.Join(lines, "; ")
	// The API server takes at most 32768 bytes in a condition's message.
	const limit = 32000
	if len(msg) > limit {
		msg = strings.ToValidUTF8(msg[:limit], "") + "…"
	}
	return msg
}

// claimState says how far the PVC is from ready, and why, in a line that
// names it.
func claimState(pvc *corev1.PersistentVolumeClaim) (diskState, string) {
	if pvc.Status.Phase == corev1.ClaimBound {
		return diskReady, "" // a disk.podvirt.io volume is filled before it is bound
	}
	a := pvc.Annotations
	progress, mirror := a[v1alpha1.ImportProgressAnnotation], a[v1alpha1.ImportMirrorAnnotation]
	var at string
	if progress != "" {
		at = " at " + progress
	}
	switch phase := v1alpha1.DiskImportPhase(a[v1alpha1.ImportPhaseAnnotation]); phase {
	case v1alpha1.ImportSucceeded:
		return diskReady, ""
	case v1alpha1.ImportFailed:
		return diskImportFailed, fmt.Sprintf("pvc %s: import failed: %s", pvc.Name, a[v1alpha1.ImportErrorAnnotation])
	case v1alpha1.ImportRetrying:
		return diskImporting, fmt.Sprintf("pvc %s: import retrying%s: %s", pvc.Name, at, a[v1alpha1.ImportErrorAnnotation])
	case v1alpha1.ImportPending:
		return diskImporting, fmt.Sprintf("pvc %s: import interrupted%s, resumes when the CSI driver is back", pvc.Name, at)
	case v1alpha1.ImportImporting:
		msg := "pvc " + pvc.Name + ": importing"
		if progress != "" {
			msg += " " + progress
		}
		if from := cmp.Or(mirror, a[v1alpha1.DiskSourceAnnotation]); from != "" {
			msg += " from " + from
		}
		return diskImporting, msg
	}
	if pvc.Status.Phase == corev1.ClaimPending || pvc.Status.Phase == "" {
		msg := fmt.Sprintf("pvc %s: waiting for its volume (claim Pending)", pvc.Name)
		if src := a[v1alpha1.DiskSourceAnnotation]; src != "" {
			msg = fmt.Sprintf("pvc %s: waiting for its volume and the import of %s (claim Pending)", pvc.Name, src)
		}
		return diskClaimPending, msg + ": kubectl describe pvc " + pvc.Name + " says why"
	}
	return diskReady, ""
}

// diskClaims names the PVCs the VM starts from: its disk templates', its
// PVC volumes', and, while it has a VMI, the ones the VMI's pod made
// (containerDisks). Owned ones carry the VM's label, so the cache holds
// them (CacheOptions); a PVC volume need not.
func diskClaims(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (names []string, owned map[string]bool) {
	owned = map[string]bool{}
	for _, t := range vm.Spec.DiskTemplates {
		owned[t.ObjectMeta.Name] = true
	}
	addVolumes := func(volumes []v1alpha1.Volume) {
		for _, v := range volumes {
			if c := v.PersistentVolumeClaim; c != nil && !owned[c.ClaimName] {
				owned[c.ClaimName] = false
			}
		}
	}
	addVolumes(vm.Spec.Template.Spec.Volumes)
	if vmi != nil && vmi.DeletionTimestamp == nil {
		addVolumes(vmi.Spec.Volumes)
		containerDisks := map[string]bool{}
		for _, v := range vmi.Spec.Volumes {
			containerDisks[v.Name] = v.ContainerDisk != nil
		}
		for _, s := range vmi.Status.VolumeStatus {
			if containerDisks[s.Name] && s.ClaimName != "" {
				owned[s.ClaimName] = true
			}
		}
	}
	return slices.Sorted(maps.Keys(owned)), owned
}

// readDisks reads the state of the VM's disks: from the cache, which
// events keep current for owned PVCs, else from the API server (a PVC
// the cache has not shown yet, or one it does not hold).
func (r *VMReconciler) readDisks(ctx context.Context, vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) (disks, error) {
	var d disks
	names, owned := diskClaims(vm, vmi)
	for _, name := range names {
		key := types.NamespacedName{Namespace: vm.Namespace, Name: name}
		pvc := &corev1.PersistentVolumeClaim{}
		err := r.Client.Get(ctx, key, pvc)
		if apierrors.IsNotFound(err) {
			err = r.APIReader.Get(ctx, key, pvc)
		}
		var state diskState
		var note string
		switch {
		case apierrors.IsNotFound(err):
			// Not ready, though not a failure: a containerDisk's PVC
			// comes with its pod, and a missing PVC volume is the
			// VMI's to report (PVCNotFound).
			state, note = diskClaimPending, fmt.Sprintf("pvc %s: does not exist yet", name)
		case err != nil:
			return d, fmt.Errorf("get PVC %s of VM %s: %w", key, vm.Name, err)
		default:
			state, note = claimState(pvc)
		}
		if state == diskReady {
			continue
		}
		d.state = max(d.state, state)
		d.notes = append(d.notes, diskNote{state, note})
		// No event tells about a PVC the cache does not hold.
		d.uncached = d.uncached || !owned[name]
	}
	return d, nil
}

// setDisksReady writes the VM's DisksReady condition, and a Warning event
// when an import failure is new or says something new.
func (r *VMReconciler) setDisksReady(vm *v1alpha1.VirtualMachine, d disks) {
	c := metav1.Condition{Type: ConditionDisksReady, Status: metav1.ConditionFalse, ObservedGeneration: vm.Generation, Message: d.message()}
	switch d.state {
	case diskReady:
		c.Status, c.Reason = metav1.ConditionTrue, ReasonDisksReady
	case diskClaimPending:
		c.Reason = ReasonDiskClaimPending
	case diskImporting:
		c.Reason = ReasonDiskImporting
	case diskImportFailed:
		c.Reason = ReasonDiskImportFailed
		if old := meta.FindStatusCondition(vm.Status.Conditions, ConditionDisksReady); old == nil || old.Reason != c.Reason || old.Message != c.Message {
			r.metrics.failures.WithLabelValues("VirtualMachine", ReasonDiskImportFailed).Inc()
			r.Recorder.Eventf(vm, nil, corev1.EventTypeWarning, ReasonDiskImportFailed, "Start",
				"the VM cannot start until its disks are imported: %s", c.Message)
		}
	}
	meta.SetStatusCondition(&vm.Status.Conditions, c)
}

// importChanged passes a PVC's events when what the VM's status shows of
// it may have changed: its phase, labels or import annotations.
var importChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*corev1.PersistentVolumeClaim)
		cur, okNew := e.ObjectNew.(*corev1.PersistentVolumeClaim)
		if !okOld || !okNew || old.Status.Phase != cur.Status.Phase || !maps.Equal(old.Labels, cur.Labels) {
			return true
		}
		for _, k := range []string{v1alpha1.ImportPhaseAnnotation, v1alpha1.ImportProgressAnnotation, v1alpha1.ImportMirrorAnnotation, v1alpha1.ImportErrorAnnotation} {
			if old.Annotations[k] != cur.Annotations[k] {
				return true
			}
		}
		return false
	},
}

// vmOfClaim maps a PVC to the VM its label names.
func vmOfClaim(_ context.Context, pvc client.Object) []reconcile.Request {
	name := pvc.GetLabels()[v1alpha1.VMNameLabel]
	if name == "" {
		return nil
	}
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: pvc.GetNamespace(), Name: name}}}
}
