package controller

import (
	"context"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/upload"
)

// selectedNodeAnnotation is where the scheduler writes the node a
// WaitForFirstConsumer claim is provisioned on; external-provisioner reads it.
const selectedNodeAnnotation = "volume.kubernetes.io/selected-node"

// UploadReconciler runs an upload pod for each claim that podvirtctl
// image-upload made (labelled disk.podvirt.io/upload=true): the pod receives
// the file through the API server's port-forward and hands it to the CSI
// driver in a CSI inline volume. The claim is provisioned on the pod's node
// (the controller writes the scheduler's selected-node annotation, as CDI's
// upload does by consuming the claim), and the pod is deleted once the claim
// is bound or its import failed for good.
type UploadReconciler struct {
	Client   client.Client
	Cache    cache.Cache // upload claims and pods only
	Recorder eventRecorder
	Config   *Config
}

// UploadCache caches only upload claims and upload pods, apart from the
// manager's cache (which holds VMs' claims and launcher pods).
func UploadCache(mgr ctrl.Manager) (cache.Cache, error) {
	podOf, err := labels.NewRequirement(upload.ClaimLabel, selection.Exists, nil)
	if err != nil {
		return nil, err
	}
	return cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(),
		Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.PersistentVolumeClaim{}: {Label: labels.SelectorFromSet(labels.Set{upload.ClaimUploadLabel: "true"})},
			&corev1.Pod{}:                   {Label: labels.NewSelector().Add(*podOf)},
		},
	})
}

// SetupWithManager watches upload claims and their pods.
func (r *UploadReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if err := mgr.Add(r.Cache); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("upload").
		WatchesRawSource(source.Kind(r.Cache, &corev1.PersistentVolumeClaim{}, &handler.TypedEnqueueRequestForObject[*corev1.PersistentVolumeClaim]{})).
		WatchesRawSource(source.Kind(r.Cache, &corev1.Pod{}, handler.TypedEnqueueRequestsFromMapFunc(func(_ context.Context, p *corev1.Pod) []reconcile.Request {
			return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Labels[upload.ClaimLabel]}}}
		}))).
		Complete(r)
}

// Reconcile keeps one upload pod while the claim waits for its upload.
func (r *UploadReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	claim := &corev1.PersistentVolumeClaim{}
	if err := r.Cache.Get(ctx, req.NamespacedName, claim); err != nil {
		// A deleted claim takes its pod along (owner reference).
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	pod := &corev1.Pod{}
	err := r.Cache.Get(ctx, types.NamespacedName{Namespace: claim.Namespace, Name: uploadPodName(claim.Name)}, pod)
	if err != nil && !apierrors.IsNotFound(err) {
		return ctrl.Result{}, err
	}
	havePod := err == nil
	done := claim.Spec.VolumeName != "" || claim.DeletionTimestamp != nil ||
		claim.Annotations[v1alpha1.ImportPhaseAnnotation] == string(v1alpha1.ImportFailed) ||
		claim.Annotations[v1alpha1.DiskSourceAnnotation] != upload.Source
	if done {
		if havePod {
			return ctrl.Result{}, client.IgnoreNotFound(r.Client.Delete(ctx, pod, client.PropagationPolicy(metav1.DeletePropagationBackground)))
		}
		return ctrl.Result{}, nil
	}
	if !havePod || pod.DeletionTimestamp != nil {
		if havePod {
			return ctrl.Result{}, nil // recreated when it is gone
		}
		pod, err = r.uploadPod(claim)
		if err != nil {
			r.Recorder.Eventf(claim, nil, corev1.EventTypeWarning, "UploadFailed", "Upload", "%v", err)
			return ctrl.Result{}, nil // the user fixes the claim; its update brings us back
		}
		if err := r.Client.Create(ctx, pod); err != nil && !apierrors.IsAlreadyExists(err) {
			return ctrl.Result{}, fmt.Errorf("create upload pod for claim %s/%s: %w", claim.Namespace, claim.Name, err)
		}
		r.Recorder.Eventf(claim, nil, corev1.EventTypeNormal, "UploadPodCreated", "Upload", "Created upload pod %s; podvirtctl image-upload sends the file through it", pod.Name)
		return ctrl.Result{}, nil
	}
	node := pod.Spec.NodeName
	if node == "" {
		return ctrl.Result{}, nil // the pod's scheduling brings us back
	}
	if selected := claim.Annotations[selectedNodeAnnotation]; selected != "" && selected != node {
		// The claim was placed elsewhere first: move the pod there.
		return ctrl.Result{}, client.IgnoreNotFound(r.Client.Delete(ctx, pod))
	}
	if claim.Annotations[selectedNodeAnnotation] == node && claim.Annotations[upload.PodAnnotation] == pod.Name {
		return ctrl.Result{}, nil
	}
	patch := client.MergeFrom(claim.DeepCopy())
	if claim.Annotations == nil {
		claim.Annotations = map[string]string{}
	}
	claim.Annotations[selectedNodeAnnotation] = node
	claim.Annotations[upload.PodAnnotation] = pod.Name
	if err := r.Client.Patch(ctx, claim, patch); err != nil {
		return ctrl.Result{}, fmt.Errorf("place claim %s/%s on node %s with its upload pod: %w", claim.Namespace, claim.Name, node, err)
	}
	return ctrl.Result{}, nil
}

// uploadPodName is the claim's upload pod: podvirt-upload-CLAIM, cut to a
// label's length.
func uploadPodName(claim string) string {
	const prefix = "podvirt-upload-"
	if max := validation.DNS1123LabelMaxLength - len(prefix); len(claim) > max {
		claim = strings.TrimRight(claim[:max], "-.")
	}
	return prefix + claim
}

// uploadPod is the pod that receives the claim's upload: the CSI driver's
// image serving contracts/upload, unprivileged (it passes the restricted Pod
// Security Standard), its only volume the CSI inline volume the driver
// reads the bytes from.
func (r *UploadReconciler) uploadPod(claim *corev1.PersistentVolumeClaim) (*corev1.Pod, error) {
	length, err := strconv.ParseInt(claim.Annotations[upload.SizeAnnotation], 10, 64)
	if err != nil || length <= 0 {
		return nil, fmt.Errorf("claim %s/%s has no valid %s (%q): make it with podvirtctl image-upload", claim.Namespace, claim.Name, upload.SizeAnnotation, claim.Annotations[upload.SizeAnnotation])
	}
	// The pod writes to the node's disk before the driver reads a byte:
	// no more than a disk of the claim's size can take.
	request := claim.Spec.Resources.Requests[corev1.ResourceStorage]
	if most := request.Value() + diskmeta.QCOW2Room(request.Value()); length > most {
		return nil, fmt.Errorf("claim %s/%s: an upload of %d bytes (%s) cannot be a disk of the %s it requests (at most %d bytes): request a larger claim",
			claim.Namespace, claim.Name, length, upload.SizeAnnotation, request.String(), most)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name:            uploadPodName(claim.Name),
			Namespace:       claim.Namespace,
			Labels:          map[string]string{upload.ClaimLabel: claim.Name},
			OwnerReferences: []metav1.OwnerReference{ownedBy(claim)},
		},
		Spec: corev1.PodSpec{
			NodeName:                      claim.Annotations[selectedNodeAnnotation],
			RestartPolicy:                 corev1.RestartPolicyAlways,
			AutomountServiceAccountToken:  ptr.To(false),
			EnableServiceLinks:            ptr.To(false),
			TerminationGracePeriodSeconds: ptr.To[int64](5),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   ptr.To(true),
				RunAsUser:      ptr.To[int64](upload.UID),
				RunAsGroup:     ptr.To[int64](upload.UID),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:    "upload",
				Image:   r.Config.UploadImage,
				Command: append(append([]string{}, r.Config.UploadCommand...), upload.Command, "--dir="+upload.Dir, "--length="+strconv.FormatInt(length, 10)),
				Ports:   []corev1.ContainerPort{{Name: "upload", ContainerPort: upload.Port}},
				ReadinessProbe: &corev1.Probe{
					ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: upload.HealthPath, Port: intstr.FromInt32(upload.Port)}},
					PeriodSeconds: 1,
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("10m"), corev1.ResourceMemory: resource.MustParse("16Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("128Mi")},
				},
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: ptr.To(false),
					ReadOnlyRootFilesystem:   ptr.To(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				VolumeMounts: []corev1.VolumeMount{{Name: "upload", MountPath: upload.Dir}},
			}},
			Volumes: []corev1.Volume{{
				Name: "upload",
				VolumeSource: corev1.VolumeSource{CSI: &corev1.CSIVolumeSource{
					Driver:           v1alpha1.CSIDriverName,
					VolumeAttributes: map[string]string{upload.VolumeAttributeClaim: claim.Name},
				}},
			}},
		},
	}
	return pod, nil
}

// ownedBy makes the pod the claim's, to be collected with it; it does not
// block the claim's deletion, which would need update rights on claims'
// finalizers.
func ownedBy(claim *corev1.PersistentVolumeClaim) metav1.OwnerReference {
	ref := *metav1.NewControllerRef(claim, corev1.SchemeGroupVersion.WithKind("PersistentVolumeClaim"))
	ref.BlockOwnerDeletion = nil
	return ref
}
