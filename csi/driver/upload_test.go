package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/upload"
)

// TestUploadClaim plays the upload pod and external-provisioner against a
// real API server: the inline volume is given to a pod of the claim's
// namespace only; CreateVolume imports the bytes while they are appended
// to it, checks them against the claim's checksum, and removes them. An
// upload whose claim is deleted half-way is swept away.
func TestUploadClaim(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "uploads"
	cs, kube := apiWithNamespace(ctx, t, ns)
	data, err := os.ReadFile(makeQCOW2(t, 16<<20))
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	newClaim := func(name string) *corev1.PersistentVolumeClaim {
		c, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: map[string]string{
				v1.DiskSourceAnnotation: upload.Source, upload.SizeAnnotation: strconv.Itoa(len(data)),
				v1.DiskChecksumAnnotation: "sha256:" + hex.EncodeToString(sum[:]),
			}},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("32Mi")}},
			},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	td := startImportDriver(t, Options{Cluster: kube})
	publish := func(podNS, claim string) (string, error) {
		target := filepath.Join(t.TempDir(), "mnt")
		_, err := td.node().NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{
			VolumeId: "csi-" + claim, TargetPath: target, VolumeCapability: mountCap(false),
			VolumeContext: map[string]string{contextEphemeral: "true", contextPodNamespace: podNS, upload.VolumeAttributeClaim: claim},
		})
		if err == nil {
			t.Cleanup(func() {
				_, _ = td.node().NodeUnpublishVolume(context.Background(), &csi.NodeUnpublishVolumeRequest{VolumeId: "csi-" + claim, TargetPath: target})
			})
		}
		return target, err
	}

	claim := newClaim("disk")
	if _, err := publish("elsewhere", "disk"); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("a pod of another namespace got the upload volume of %s/disk: %v", ns, err)
	}
	target, err := publish(ns, "disk")
	if err != nil {
		t.Fatal(err)
	}
	part := filepath.Join(target, upload.PartFile)
	if err := os.WriteFile(part, data[:len(data)/2], 0o600); err != nil {
		t.Fatal(err)
	}
	created := make(chan *csi.CreateVolumeResponse, 1)
	failed := make(chan error, 1)
	go func() {
		resp, err := td.controller().CreateVolume(ctx, createReq("pvc-upload", 32<<20, false, map[string]string{paramPVCName: "disk", paramPVCNamespace: ns}))
		if err != nil {
			failed <- err
			return
		}
		created <- resp
	}()
	f, err := os.OpenFile(part, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	_, err = f.Write(data[len(data)/2:])
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-failed:
		t.Fatalf("CreateVolume of an upload: %v", err)
	case resp := <-created:
		attrs := resp.GetVolume().GetVolumeContext()
		if attrs[v1.VolumeContextDigest] != "sha256:"+hex.EncodeToString(sum[:]) || attrs[v1.VolumeContextSource] != "upload://"+ns+"/disk" {
			t.Errorf("upload volume's attributes %v; want its digest and source", attrs)
		}
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	if _, err := os.Stat(filepath.Join(td.opts.StateDir, "uploads", string(claim.UID), upload.PartFile)); !os.IsNotExist(err) {
		t.Errorf("the imported upload's bytes are still there: %v", err)
	}

	gone := newClaim("abandoned")
	target, err = publish(ns, "abandoned")
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(target, upload.PartFile), data[:1000], 0o600); err != nil {
		t.Fatal(err)
	}
	if err := cs.CoreV1().PersistentVolumeClaims(ns).Delete(ctx, "abandoned", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	td.sweepUploadsOnce(ctx)
	if _, err := os.Stat(filepath.Join(td.opts.StateDir, "uploads", string(gone.UID))); !os.IsNotExist(err) {
		t.Errorf("the upload of a deleted claim was not swept: %v", err)
	}
}
