package controller

import (
	"context"
	"fmt"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/internal/polltest"
)

func uploadClaim(ns, name, size string) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: ns,
			Labels:      map[string]string{upload.ClaimUploadLabel: "true"},
			Annotations: map[string]string{v1alpha1.DiskSourceAnnotation: upload.Source, upload.SizeAnnotation: size, v1alpha1.DiskChecksumAnnotation: "sha256:00"},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
		},
	}
}

// TestUploadPod: an upload claim gets one unprivileged upload pod with the
// CSI inline volume naming the claim; once the pod is scheduled the claim is
// placed on its node; a final import failure removes the pod. A claim
// without a valid size, or one larger than a disk of the claim can be, gets
// an event and no pod.
func TestUploadPod(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	claim := uploadClaim(ns, "disk", "1234")
	if err := k8s.Create(ctx, claim); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{}
	key := types.NamespacedName{Namespace: ns, Name: "podvirt-upload-disk"}
	polltest.Eventually(t, wait, "the upload pod exists", func() (bool, string) {
		err := k8s.Get(ctx, key, pod)
		return err == nil, fmt.Sprint(err)
	})
	c := pod.Spec.Containers[0]
	vol := pod.Spec.Volumes[0].CSI
	switch {
	case vol == nil || vol.Driver != v1alpha1.CSIDriverName || vol.VolumeAttributes[upload.VolumeAttributeClaim] != "disk":
		t.Errorf("upload pod's volume %+v; want a %s inline volume for claim disk", pod.Spec.Volumes[0], v1alpha1.CSIDriverName)
	case !slices.Contains(c.Command, "--length=1234") || !slices.Contains(c.Command, upload.Command):
		t.Errorf("upload pod's command %q; want %s with --length=1234", c.Command, upload.Command)
	case pod.Spec.SecurityContext.RunAsNonRoot == nil || !*pod.Spec.SecurityContext.RunAsNonRoot || c.SecurityContext.AllowPrivilegeEscalation == nil || *c.SecurityContext.AllowPrivilegeEscalation:
		t.Errorf("upload pod is not unprivileged: %+v %+v", pod.Spec.SecurityContext, c.SecurityContext)
	case len(pod.OwnerReferences) != 1 || pod.OwnerReferences[0].UID != claim.UID:
		t.Errorf("upload pod's owners %+v; want the claim", pod.OwnerReferences)
	}

	schedule(t, pod, "node-a")
	polltest.Eventually(t, wait, "the claim is placed on the upload pod's node", func() (bool, string) {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(claim), claim); err != nil {
			return false, err.Error()
		}
		a := claim.Annotations
		return a[selectedNodeAnnotation] == "node-a" && a[upload.PodAnnotation] == pod.Name, fmt.Sprint(a)
	})

	patch := client.MergeFrom(claim.DeepCopy())
	claim.Annotations[v1alpha1.ImportPhaseAnnotation] = string(v1alpha1.ImportFailed)
	if err := k8s.Patch(ctx, claim, patch); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "the upload pod of a failed import is deleted", func() (bool, string) {
		err := k8s.Get(ctx, key, pod)
		return client.IgnoreNotFound(err) == nil && (err != nil || pod.DeletionTimestamp != nil), fmt.Sprint(err)
	})

	// No size, and a size no disk of the claim's 1Gi can have: the pod
	// would write that much to the node before the driver read a byte.
	for name, size := range map[string]string{"no-size": "", "too-big": "2147483648"} {
		if err := k8s.Create(ctx, uploadClaim(ns, name, size)); err != nil {
			t.Fatal(err)
		}
		waitEvent(t, ns, name, "UploadFailed")
		if err := k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: "podvirt-upload-" + name}, &corev1.Pod{}); client.IgnoreNotFound(err) != nil || err == nil {
			t.Errorf("claim %s (size %q) got an upload pod (%v)", name, size, err)
		}
	}
}
