package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	crhandler "sigs.k8s.io/controller-runtime/pkg/handler"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// A live migration (VirtualMachineInstanceMigration) from the controller's
// side. The VMI runs on in its launcher pod (the source) while the
// controller makes a second launcher pod (the target) on another node,
// with a new claim for every disk: an empty overlay on the same base (the
// image pinned to the digest the source was made from) or an empty disk of
// the same size. The node daemons move the domain (runtime/handler,
// migration.go). On success the VMI's launcher pod and node are the
// target's, the VM and VMI name the new claims, and the source pod and
// claims are deleted; on failure or cancel the target pod and claims are.
const (
	// MigrationFinalizer holds a migration until its target is cleaned up.
	MigrationFinalizer = "podvirt.io/migration"
	// migrationVMIIndex indexes migrations by spec.vmiName.
	migrationVMIIndex = "spec.vmiName"

	ReasonMigrationCreated   = "MigrationTargetCreated"
	ReasonMigrationSucceeded = "Migrated"
	ReasonMigrationFailed    = "MigrationFailed"
	ReasonMigrationRejected  = "MigrationRejected"
)

// MigrationReconciler drives VirtualMachineInstanceMigrations.
type MigrationReconciler struct {
	metrics   *instruments
	Client    client.Client
	APIReader client.Reader
	Recorder  eventRecorder
	Config    *Config
	now       func() time.Time
}

// SetupWithManager watches migrations, their VMIs and launcher pods.
func (r *MigrationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.now == nil {
		r.now = time.Now
	}
	if err := mgr.GetFieldIndexer().IndexField(context.Background(), &v1alpha1.VirtualMachineInstanceMigration{}, migrationVMIIndex,
		func(o client.Object) []string {
			return []string{o.(*v1alpha1.VirtualMachineInstanceMigration).Spec.VMIName}
		}); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("migration").
		For(&v1alpha1.VirtualMachineInstanceMigration{}).
		Watches(&v1alpha1.VirtualMachineInstance{}, crhandler.EnqueueRequestsFromMapFunc(r.migrationsOf)).
		Watches(&corev1.Pod{}, crhandler.EnqueueRequestsFromMapFunc(migrationOfPod)).
		Complete(r)
}

// migrationsOf maps a VMI to its unfinished migrations.
func (r *MigrationReconciler) migrationsOf(ctx context.Context, o client.Object) []ctrl.Request {
	list := &v1alpha1.VirtualMachineInstanceMigrationList{}
	if err := r.Client.List(ctx, list, client.InNamespace(o.GetNamespace()), client.MatchingFields{migrationVMIIndex: o.GetName()}); err != nil {
		return nil
	}
	var reqs []ctrl.Request
	for _, m := range list.Items {
		if !m.Status.Phase.IsFinal() || m.DeletionTimestamp != nil {
			reqs = append(reqs, ctrl.Request{NamespacedName: types.NamespacedName{Namespace: m.Namespace, Name: m.Name}})
		}
	}
	return reqs
}

// migrationOfPod maps a target pod to its migration.
func migrationOfPod(_ context.Context, o client.Object) []ctrl.Request {
	if name := o.GetLabels()[v1alpha1.MigrationLabel]; name != "" {
		return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
	}
	return nil
}

// Reconcile moves one migration a step.
func (r *MigrationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	m := &v1alpha1.VirtualMachineInstanceMigration{}
	if err := r.Client.Get(ctx, req.NamespacedName, m); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	orig := m.DeepCopy()
	if m.DeletionTimestamp == nil && !m.Status.Phase.IsFinal() && !controllerutil.ContainsFinalizer(m, MigrationFinalizer) {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.AddFinalizer(m, MigrationFinalizer)
		if err := r.Client.Patch(ctx, m, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("add finalizer to migration %s: %w", req, err)
		}
		orig = m.DeepCopy()
	}
	vmi := &v1alpha1.VirtualMachineInstance{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMIName}, vmi)
	if apierrors.IsNotFound(err) {
		vmi = nil
	} else if err != nil {
		return ctrl.Result{}, err
	}
	res, err := r.step(ctx, m, vmi)
	if uerr := r.writeStatus(ctx, orig, m); uerr != nil {
		return ctrl.Result{}, uerr
	}
	if err != nil {
		return ctrl.Result{}, err
	}
	if m.Status.Phase.IsFinal() && controllerutil.ContainsFinalizer(m, MigrationFinalizer) {
		patch := client.MergeFrom(m.DeepCopy())
		controllerutil.RemoveFinalizer(m, MigrationFinalizer)
		if err := r.Client.Patch(ctx, m, patch); err != nil && !apierrors.IsNotFound(err) {
			return ctrl.Result{}, fmt.Errorf("remove finalizer of migration %s: %w", req, err)
		}
	}
	return res, nil
}

func (r *MigrationReconciler) writeStatus(ctx context.Context, orig, m *v1alpha1.VirtualMachineInstanceMigration) error {
	if equalStatus(orig.Status, m.Status) {
		return nil
	}
	if err := r.Client.Status().Patch(ctx, m, client.MergeFrom(orig)); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("write status of migration %s/%s: %w", m.Namespace, m.Name, err)
	}
	return nil
}

func equalStatus(a, b v1alpha1.VirtualMachineInstanceMigrationStatus) bool {
	return a.Phase == b.Phase && a.Message == b.Message && a.MemoryBytes == b.MemoryBytes && a.DiskBytes == b.DiskBytes &&
		a.TargetNode == b.TargetNode && a.TargetPod == b.TargetPod && a.SourceNode == b.SourceNode && a.Downtime == b.Downtime &&
		len(a.Claims) == len(b.Claims) && len(a.PhaseTransitionTimestamps) == len(b.PhaseTransitionTimestamps)
}

func (r *MigrationReconciler) setPhase(m *v1alpha1.VirtualMachineInstanceMigration, p v1alpha1.MigrationPhase) {
	if m.Status.Phase == p {
		return
	}
	m.Status.Phase = p
	m.Status.PhaseTransitionTimestamps = append(m.Status.PhaseTransitionTimestamps,
		v1alpha1.MigrationPhaseTransitionTimestamp{Phase: p, PhaseTransitionTimestamp: metav1.NewTime(r.now())})
}

// step is the state machine.
func (r *MigrationReconciler) step(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	if m.Status.Phase.IsFinal() {
		return ctrl.Result{}, nil
	}
	if vmi == nil || vmi.DeletionTimestamp != nil {
		return ctrl.Result{}, r.fail(ctx, m, vmi, fmt.Sprintf("VMI %s is gone", m.Spec.VMIName))
	}
	var ms *v1alpha1.MigrationState
	if s := vmi.Status.MigrationState; s != nil && s.MigrationUID == m.UID {
		ms = s
	}
	if m.DeletionTimestamp != nil {
		return r.cancel(ctx, m, vmi, ms)
	}
	switch m.Status.Phase {
	case "", v1alpha1.MigrationPending:
		r.setPhase(m, v1alpha1.MigrationPending)
		return r.start(ctx, m, vmi)
	}
	if ms == nil {
		return ctrl.Result{}, r.fail(ctx, m, vmi, "the VMI no longer records this migration")
	}
	m.Status.MemoryBytes, m.Status.DiskBytes = ms.MemoryBytes, ms.DiskBytes
	m.Status.MemoryTransferred, m.Status.DiskTransferred = humanBytes(ms.MemoryBytes), humanBytes(ms.DiskBytes)
	switch {
	case ms.Completed:
		return ctrl.Result{}, r.succeed(ctx, m, vmi, ms)
	case ms.Failed:
		return ctrl.Result{}, r.fail(ctx, m, vmi, ms.FailureReason)
	}
	target := &corev1.Pod{}
	err := r.Client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Status.TargetPod}, target)
	if apierrors.IsNotFound(err) {
		return ctrl.Result{}, r.failOrAbort(ctx, m, vmi, ms, fmt.Sprintf("target pod %s is gone", m.Status.TargetPod))
	} else if err != nil {
		return ctrl.Result{}, err
	}
	if podFinished(target) {
		return ctrl.Result{}, r.failOrAbort(ctx, m, vmi, ms, fmt.Sprintf("target pod %s ended (%s)", target.Name, target.Status.Phase))
	}
	switch m.Status.Phase {
	case v1alpha1.MigrationScheduling:
		if c := podCondition(target, corev1.PodScheduled); c != nil && c.Status == corev1.ConditionFalse {
			m.Status.Message = fmt.Sprintf("target pod %s cannot be scheduled yet: %s", target.Name, c.Message)
		}
		if target.Status.Phase != corev1.PodRunning {
			return ctrl.Result{}, nil
		}
		m.Status.TargetNode, m.Status.Message = target.Spec.NodeName, ""
		if err := r.patchState(ctx, vmi, map[string]any{"targetNode": target.Spec.NodeName}); err != nil {
			return ctrl.Result{}, err
		}
		r.setPhase(m, v1alpha1.MigrationPreparingTarget)
	case v1alpha1.MigrationPreparingTarget:
		if ms.TargetAddress != "" {
			r.setPhase(m, v1alpha1.MigrationRunning)
		}
	}
	return ctrl.Result{}, nil
}

// start checks the VMI can move and makes the target: claims, then pod.
func (r *MigrationReconciler) start(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance) (ctrl.Result, error) {
	reject := func(msg string) (ctrl.Result, error) {
		r.Recorder.Eventf(m, vmi, corev1.EventTypeWarning, ReasonMigrationRejected, "Migrate", "%s", msg)
		return ctrl.Result{}, r.fail(ctx, m, nil, msg)
	}
	switch {
	case vmi.Status.Phase != v1alpha1.Running || vmi.Status.LauncherPod == "" || vmi.Status.NodeName == "":
		return reject(fmt.Sprintf("VMI %s is %s, not Running: only a running VMI migrates live", vmi.Name, vmi.Status.Phase))
	}
	if s := vmi.MigrationInFlight(); s != nil && s.MigrationUID != m.UID {
		return reject(fmt.Sprintf("VMI %s is being migrated already (migration %s): wait for it to end", vmi.Name, s.MigrationUID))
	}
	if wait, err := r.overLimit(ctx, vmi.Status.NodeName); err != nil || wait != "" {
		m.Status.Message = wait
		return ctrl.Result{RequeueAfter: 5 * time.Second}, err
	}
	// Neither pod may be evicted while both are needed.
	if err := syncDisruptionBudget(ctx, r.Client, vmi, r.Config, true); err != nil {
		return ctrl.Result{}, err
	}
	claims, err := r.targetClaims(ctx, m, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	m.Status.SourceNode, m.Status.SourcePod, m.Status.Claims = vmi.Status.NodeName, vmi.Status.LauncherPod, claims
	pod, err := r.targetPod(ctx, m, vmi, claims)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.Client.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
		return ctrl.Result{}, fmt.Errorf("create target pod %s: %w", pod.Name, err)
	}
	m.Status.TargetPod = pod.Name
	state := map[string]any{"sourceNode": vmi.Status.NodeName, "sourcePod": vmi.Status.LauncherPod, "targetPod": pod.Name,
		"targetNode": m.Spec.TargetNode, "targetAddress": nil, "targetToken": nil, "targetCertificateSHA256": nil, "targetDomain": nil, "startTimestamp": nil,
		"endTimestamp": nil, "completed": nil, "failed": nil, "failureReason": nil, "abortRequested": nil,
		"memoryBytes": nil, "memoryTotal": nil, "diskBytes": nil, "diskTotal": nil, "downtimeMilliseconds": nil}
	if err := r.patchStateOf(ctx, vmi, m.UID, state); err != nil {
		return ctrl.Result{}, err
	}
	r.Recorder.Eventf(m, pod, corev1.EventTypeNormal, ReasonMigrationCreated, "Migrate", "target pod %s created for VMI %s on %s",
		pod.Name, vmi.Name, vmi.Status.NodeName)
	r.setPhase(m, v1alpha1.MigrationScheduling)
	return ctrl.Result{}, nil
}

// overLimit says why another migration from node must wait, or "".
func (r *MigrationReconciler) overLimit(ctx context.Context, node string) (string, error) {
	list := &v1alpha1.VirtualMachineInstanceMigrationList{}
	if err := r.Client.List(ctx, list); err != nil {
		return "", fmt.Errorf("list migrations: %w", err)
	}
	all, fromNode := 0, 0
	for _, m := range list.Items {
		switch m.Status.Phase {
		case v1alpha1.MigrationScheduling, v1alpha1.MigrationPreparingTarget, v1alpha1.MigrationRunning:
			all++
			if m.Status.SourceNode == node {
				fromNode++
			}
		}
	}
	switch {
	case all >= r.Config.ParallelMigrations:
		return fmt.Sprintf("waiting: %d migrations run in the cluster, the most at once (controller --parallel-migrations)", all), nil
	case fromNode >= r.Config.ParallelOutboundMigrationsPerNode:
		return fmt.Sprintf("waiting: %d migrations leave node %s, the most at once (--parallel-outbound-migrations-per-node)", fromNode, node), nil
	}
	return "", nil
}

// patchState merges fields into the VMI's migrationState.
func (r *MigrationReconciler) patchState(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance, fields map[string]any) error {
	return r.patchStateOf(ctx, vmi, vmi.Status.MigrationState.MigrationUID, fields)
}

func (r *MigrationReconciler) patchStateOf(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance, uid types.UID, fields map[string]any) error {
	fields["migrationUID"] = uid
	return mergePatchStatus(ctx, r.Client, vmi, map[string]any{"migrationState": fields})
}

// targetClaims makes one claim on the target for every PVC volume.
func (r *MigrationReconciler) targetClaims(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance) ([]v1alpha1.MigrationClaim, error) {
	var out []v1alpha1.MigrationClaim
	for _, v := range vmi.Spec.Volumes {
		if v.PersistentVolumeClaim == nil {
			continue
		}
		src, pv, err := r.boundVolume(ctx, vmi.Namespace, v.PersistentVolumeClaim.ClaimName)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		claim, err := targetClaim(m, src, pv)
		if err != nil {
			return nil, fmt.Errorf("volume %s: %w", v.Name, err)
		}
		if err := r.Client.Create(ctx, claim); err != nil && !apierrors.IsAlreadyExists(err) {
			return nil, fmt.Errorf("volume %s: create PVC %s: %w", v.Name, claim.Name, err)
		}
		out = append(out, v1alpha1.MigrationClaim{Volume: v.Name, Source: src.Name, Target: claim.Name})
	}
	return out, nil
}

// targetClaim is the claim a migration makes for src on the target: the
// same class, mode and size; an overlay on the same image pinned to its
// digest, or an empty disk.
func targetClaim(m *v1alpha1.VirtualMachineInstanceMigration, src *corev1.PersistentVolumeClaim, pv *corev1.PersistentVolume) (*corev1.PersistentVolumeClaim, error) {
	if pv.Spec.CSI == nil || pv.Spec.CSI.Driver != v1alpha1.CSIDriverName {
		return nil, fmt.Errorf("PVC %s is not a %s volume: only its disks can follow a migration", src.Name, v1alpha1.CSIDriverName)
	}
	base := src.Annotations[v1alpha1.DiskNameAnnotation]
	if base == "" {
		base = src.Name
	}
	name := base + "-" + shortUID(m.UID)
	labels := map[string]string{}
	for k, v := range src.Labels {
		labels[k] = v
	}
	labels[v1alpha1.MigrationLabel] = m.Name
	annotations := map[string]string{v1alpha1.DiskNameAnnotation: base}
	attrs := pv.Spec.CSI.VolumeAttributes
	if attrs[v1alpha1.VolumeContextOverlay] == "true" && attrs[v1alpha1.VolumeContextDigest] != "" {
		source, checksum, err := pinnedSource(attrs[v1alpha1.VolumeContextSource], attrs[v1alpha1.VolumeContextDigest])
		if err != nil {
			return nil, err
		}
		annotations[v1alpha1.DiskSourceAnnotation] = source
		if checksum != "" {
			annotations[v1alpha1.DiskChecksumAnnotation] = checksum
		}
	} else {
		annotations[v1alpha1.DiskBlankAnnotation] = "true"
	}
	size := pv.Spec.Capacity[corev1.ResourceStorage]
	if req := src.Spec.Resources.Requests[corev1.ResourceStorage]; req.Cmp(size) > 0 {
		size = req
	}
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: src.Namespace, Labels: labels, Annotations: annotations},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes:      src.Spec.AccessModes,
			VolumeMode:       src.Spec.VolumeMode,
			StorageClassName: src.Spec.StorageClassName,
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}, nil
}

// pinnedSource is source fixed to digest: a docker:// reference by digest,
// or an http(s) URL with the digest as its checksum.
func pinnedSource(source, digest string) (string, string, error) {
	switch {
	case strings.HasPrefix(source, "docker://"):
		ref := strings.TrimPrefix(source, "docker://")
		if at := strings.Index(ref, "@"); at >= 0 {
			ref = ref[:at]
		} else if colon := strings.LastIndex(ref, ":"); colon > strings.LastIndex(ref, "/") {
			ref = ref[:colon]
		}
		return "docker://" + ref + "@" + digest, "", nil
	case strings.HasPrefix(source, "http://"), strings.HasPrefix(source, "https://"):
		return source, digest, nil
	case strings.HasPrefix(source, "upload://"):
		return "", "", fmt.Errorf("the disk was uploaded (%s, podvirtctl image-upload) and its base exists on its node only: it cannot move yet; push the image to a registry (podvirtctl image push) and make the disk from there to have a VM that migrates", source)
	}
	return "", "", fmt.Errorf("the disk's image %q has no scheme a target could import it by", source)
}

// targetPod is the VMI's launcher pod as the target: the new claims, the
// containerDisks pinned to the digests their source volumes hold, and not
// on the source's node.
func (r *MigrationReconciler) targetPod(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance, claims []v1alpha1.MigrationClaim) (*corev1.Pod, error) {
	target := vmi.DeepCopy()
	claimModes := map[string]volumeClaim{}
	for i := range target.Spec.Volumes {
		v := &target.Spec.Volumes[i]
		switch {
		case v.PersistentVolumeClaim != nil:
			for _, c := range claims {
				if c.Volume == v.Name {
					v.PersistentVolumeClaim.ClaimName = c.Target
				}
			}
			pvc := &corev1.PersistentVolumeClaim{}
			if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: v.PersistentVolumeClaim.ClaimName}, pvc); err != nil {
				return nil, fmt.Errorf("volume %s: %w", v.Name, err)
			}
			mode := corev1.PersistentVolumeFilesystem
			if pvc.Spec.VolumeMode != nil {
				mode = *pvc.Spec.VolumeMode
			}
			claimModes[pvc.Name] = volumeClaim{mode: mode}
		case v.ContainerDisk != nil:
			pinned, err := r.pinnedContainerDisk(ctx, vmi, v.Name)
			if err != nil {
				return nil, fmt.Errorf("containerDisk %s: %w", v.Name, err)
			}
			v.ContainerDisk.Image = pinned
		}
	}
	source := &corev1.Pod{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: vmi.Status.LauncherPod}, source); err != nil {
		return nil, fmt.Errorf("get source pod %s: %w", vmi.Status.LauncherPod, err)
	}
	cfg := *r.Config
	cfg.UseEmulation = podEmulated(source) // the guest's CPU cannot change under it
	name := launcherPodNameFor(vmi, m.UID)
	pod, _, err := launcherPodNamed(target, name, claimModes, &cfg)
	if err != nil {
		return nil, err
	}
	pod.Labels[v1alpha1.MigrationLabel] = m.Name
	node := corev1.NodeSelectorRequirement{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpNotIn, Values: []string{vmi.Status.NodeName}}
	if m.Spec.TargetNode != "" {
		node = corev1.NodeSelectorRequirement{Key: corev1.LabelHostname, Operator: corev1.NodeSelectorOpIn, Values: []string{m.Spec.TargetNode}}
	}
	requireNode(pod, node)
	if m.Spec.TargetNode == vmi.Status.NodeName {
		// Beside the source, whose L2 lease and MAC it takes at the switch.
		if err := handOverFrom(pod, source.UID); err != nil {
			return nil, err
		}
	}
	return pod, nil
}

// pinnedContainerDisk is the image of a containerDisk volume pinned to the
// digest its source volume was made from.
func (r *MigrationReconciler) pinnedContainerDisk(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance, volume string) (string, error) {
	_, pv, err := r.boundVolume(ctx, vmi.Namespace, vmi.Status.LauncherPod+"-"+volume)
	if err != nil {
		return "", err
	}
	if pv.Spec.CSI == nil || pv.Spec.CSI.VolumeAttributes[v1alpha1.VolumeContextDigest] == "" {
		return "", fmt.Errorf("PV %s does not say which image digest it holds", pv.Name)
	}
	src, _, err := pinnedSource(pv.Spec.CSI.VolumeAttributes[v1alpha1.VolumeContextSource], pv.Spec.CSI.VolumeAttributes[v1alpha1.VolumeContextDigest])
	return src, err
}

// boundVolume reads a claim and the PV it is bound to, from the API server
// (the cache holds neither for every claim).
func (r *MigrationReconciler) boundVolume(ctx context.Context, namespace, claim string) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume, error) {
	pvc := &corev1.PersistentVolumeClaim{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Namespace: namespace, Name: claim}, pvc); err != nil {
		return nil, nil, fmt.Errorf("get PVC %s: %w", claim, err)
	}
	pv := &corev1.PersistentVolume{}
	if err := r.APIReader.Get(ctx, types.NamespacedName{Name: pvc.Spec.VolumeName}, pv); err != nil {
		return nil, nil, fmt.Errorf("get PV %s of PVC %s: %w", pvc.Spec.VolumeName, claim, err)
	}
	return pvc, pv, nil
}

// requireNode adds a required node-affinity term to every term of pod.
func requireNode(pod *corev1.Pod, req corev1.NodeSelectorRequirement) {
	if pod.Spec.Affinity == nil {
		pod.Spec.Affinity = &corev1.Affinity{}
	} else {
		pod.Spec.Affinity = pod.Spec.Affinity.DeepCopy()
	}
	if pod.Spec.Affinity.NodeAffinity == nil {
		pod.Spec.Affinity.NodeAffinity = &corev1.NodeAffinity{}
	}
	na := pod.Spec.Affinity.NodeAffinity
	if na.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		na.RequiredDuringSchedulingIgnoredDuringExecution = &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{}}}
	}
	terms := na.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms
	for i := range terms {
		terms[i].MatchExpressions = append(terms[i].MatchExpressions, req)
	}
}

// succeed makes the target the VMI's home: the VM and VMI name the new
// claims, the source pod and claims go.
func (r *MigrationReconciler) succeed(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance, ms *v1alpha1.MigrationState) error {
	renames := map[string]string{}
	for _, c := range m.Status.Claims {
		renames[c.Source] = c.Target
	}
	if len(renames) > 0 {
		if err := r.renameClaims(ctx, vmi, renames); err != nil {
			return err
		}
	}
	src := &corev1.Pod{}
	if err := r.Client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Status.SourcePod}, src); err == nil {
		if err := r.Client.Delete(ctx, src, client.Preconditions{UID: &src.UID}); err != nil && !apierrors.IsNotFound(err) {
			return fmt.Errorf("delete source pod %s: %w", src.Name, err)
		}
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	for _, c := range m.Status.Claims {
		if err := r.deleteClaim(ctx, m.Namespace, c.Source); err != nil {
			return err
		}
	}
	m.Status.Downtime = (time.Duration(ms.DowntimeMilliseconds) * time.Millisecond).String()
	m.Status.TargetNode = ms.TargetNode
	m.Status.Message = ""
	r.setPhase(m, v1alpha1.MigrationSucceeded)
	r.metrics.observeMigration(m, ms, r.now())
	r.Recorder.Eventf(m, vmi, corev1.EventTypeNormal, ReasonMigrationSucceeded, "Migrate", "VMI %s moved from %s to %s: %s of memory, %s of disk, downtime %s",
		vmi.Name, m.Status.SourceNode, ms.TargetNode, humanBytes(ms.MemoryBytes), humanBytes(ms.DiskBytes), m.Status.Downtime)
	return nil
}

// renameClaims points the VMI and its VM at the target claims; a disk
// template is renamed with its claim, so its name stays its claim's.
func (r *MigrationReconciler) renameClaims(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance, renames map[string]string) error {
	if vmName := vmi.Labels[v1alpha1.VMNameLabel]; vmName != "" {
		vm := &v1alpha1.VirtualMachine{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: vmi.Namespace, Name: vmName}, vm); err != nil && !apierrors.IsNotFound(err) {
			return err
		} else if err == nil {
			patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
			changed := renameVolumes(vm.Spec.Template.Spec.Volumes, renames)
			for i := range vm.Spec.DiskTemplates {
				if to, ok := renames[vm.Spec.DiskTemplates[i].ObjectMeta.Name]; ok {
					vm.Spec.DiskTemplates[i].ObjectMeta.Name, changed = to, true
				}
			}
			if changed {
				if err := r.Client.Patch(ctx, vm, patch); err != nil {
					return fmt.Errorf("point VM %s at its migrated claims: %w", vm.Name, err)
				}
				statusPatch := client.MergeFrom(vm.DeepCopy())
				for i, c := range vm.Status.DiskClaims {
					if to, ok := renames[c]; ok {
						vm.Status.DiskClaims[i] = to
					}
				}
				if err := r.Client.Status().Patch(ctx, vm, statusPatch); err != nil {
					return fmt.Errorf("record VM %s's migrated claims: %w", vm.Name, err)
				}
			}
		}
	}
	patch := client.MergeFrom(vmi.DeepCopy())
	if renameVolumes(vmi.Spec.Volumes, renames) {
		if err := r.Client.Patch(ctx, vmi, patch); err != nil {
			return fmt.Errorf("point VMI %s at its migrated claims: %w", vmi.Name, err)
		}
	}
	return nil
}

func renameVolumes(vols []v1alpha1.Volume, renames map[string]string) bool {
	changed := false
	for i := range vols {
		if c := vols[i].PersistentVolumeClaim; c != nil {
			if to, ok := renames[c.ClaimName]; ok {
				c.ClaimName, changed = to, true
			}
		}
	}
	return changed
}

func (r *MigrationReconciler) deleteClaim(ctx context.Context, namespace, name string) error {
	pvc := &corev1.PersistentVolumeClaim{}
	pvc.Namespace, pvc.Name = namespace, name
	if err := r.Client.Delete(ctx, pvc); err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("delete PVC %s: %w", name, err)
	}
	return nil
}

// failOrAbort fails a migration that has not started moving, and asks the
// source to abort one that has (its outcome then arrives as Failed).
func (r *MigrationReconciler) failOrAbort(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance, ms *v1alpha1.MigrationState, why string) error {
	if ms.StartTimestamp != nil && ms.EndTimestamp == nil {
		m.Status.Message = why + "; waiting for the source to abort"
		return r.patchState(ctx, vmi, map[string]any{"abortRequested": true})
	}
	return r.fail(ctx, m, vmi, why)
}

// cancel handles a deleted migration: a running one is aborted first.
func (r *MigrationReconciler) cancel(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance, ms *v1alpha1.MigrationState) (ctrl.Result, error) {
	switch {
	case ms == nil:
		return ctrl.Result{}, r.fail(ctx, m, vmi, "cancelled")
	case ms.Completed:
		return ctrl.Result{}, r.succeed(ctx, m, vmi, ms)
	case ms.Failed || ms.StartTimestamp == nil:
		return ctrl.Result{}, r.fail(ctx, m, vmi, "cancelled")
	}
	if !ms.AbortRequested {
		if err := r.patchState(ctx, vmi, map[string]any{"abortRequested": true}); err != nil {
			return ctrl.Result{}, err
		}
	}
	m.Status.Message = "cancelling: waiting for the source to abort"
	return ctrl.Result{RequeueAfter: 2 * time.Second}, nil
}

// fail ends the migration: the target pod and claims go, the VMI keeps
// running where it was.
func (r *MigrationReconciler) fail(ctx context.Context, m *v1alpha1.VirtualMachineInstanceMigration, vmi *v1alpha1.VirtualMachineInstance, why string) error {
	if m.Status.TargetPod != "" {
		pod := &corev1.Pod{}
		if err := r.Client.Get(ctx, types.NamespacedName{Namespace: m.Namespace, Name: m.Status.TargetPod}, pod); err == nil {
			if err := r.Client.Delete(ctx, pod); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete target pod %s: %w", pod.Name, err)
			}
		} else if !apierrors.IsNotFound(err) {
			return err
		}
	}
	for _, c := range m.Status.Claims {
		if err := r.deleteClaim(ctx, m.Namespace, c.Target); err != nil {
			return err
		}
	}
	if vmi != nil && vmi.MigrationInFlight() != nil && vmi.Status.MigrationState.MigrationUID == m.UID {
		if err := r.patchState(ctx, vmi, map[string]any{"failed": true, "failureReason": why, "endTimestamp": metav1.NewTime(r.now())}); err != nil {
			return err
		}
	}
	m.Status.Message = why
	r.setPhase(m, v1alpha1.MigrationFailed)
	r.metrics.observeMigration(m, nil, r.now())
	r.Recorder.Eventf(m, nil, corev1.EventTypeWarning, ReasonMigrationFailed, "Migrate", "%s", why)
	return nil
}

// humanBytes writes a byte count for people ("" for none).
func humanBytes(n int64) string {
	if n <= 0 {
		return ""
	}
	return bytesize.Format(n)
}

// mergePatchStatus merges fields into obj's status.
func mergePatchStatus(ctx context.Context, c client.Client, obj client.Object, fields map[string]any) error {
	patch, err := json.Marshal(map[string]any{"status": fields})
	if err != nil {
		return err
	}
	target := obj.DeepCopyObject().(client.Object)
	if err := c.Status().Patch(ctx, target, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("patch status of %s/%s: %w", obj.GetNamespace(), obj.GetName(), err)
	}
	return nil
}

// shortUID is the first 5 hex digits of uid, for names.
func shortUID(uid types.UID) string {
	return strings.ReplaceAll(string(uid), "-", "")[:5]
}

// The VM's Migrating condition: True while its VMI moves live to another
// node, with how far it got.
const (
	ConditionMigrating = "Migrating"
	ReasonMigrating    = "LiveMigration"
)

// setMigrating sets the VM's Migrating condition from vmi's migration in
// flight, or clears it.
func setMigrating(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) {
	var ms *v1alpha1.MigrationState
	if vmi != nil {
		ms = vmi.MigrationInFlight()
	}
	if ms == nil {
		meta.RemoveStatusCondition(&vm.Status.Conditions, ConditionMigrating)
		return
	}
	target := ms.TargetNode
	if target == "" {
		target = "a node the scheduler picks"
	}
	msg := fmt.Sprintf("moving live from node %s to %s", ms.SourceNode, target)
	if ms.MemoryTotal > 0 {
		msg += fmt.Sprintf("; memory %s of %s, disk %s copied", bytesize.Format(ms.MemoryBytes), bytesize.Format(ms.MemoryTotal), bytesize.Format(ms.DiskBytes))
	}
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: ConditionMigrating, Status: metav1.ConditionTrue, Reason: ReasonMigrating, Message: msg, ObservedGeneration: vm.Generation,
	})
}
