package e2e

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/test/env/stack"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestImageUpload fills a claim with the test guest's disk through the API
// server. A first client, as a podvirtctl killed half-way would, makes the
// claim and sends half the file to its upload pod, then stops;
// `podvirtctl image-upload` then resumes from there, the CSI driver imports
// the upload (checksum and all), the upload pod goes away, and a VM boots
// from the claim. A file that is not a disk is refused before any claim is
// made.
func TestImageUpload(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(art.Disk)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	digest := "sha256:" + hex.EncodeToString(sum[:])
	kube := []string{"-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig()}

	const name = "uploaded"
	claimName := name + "-root"
	fs := corev1.PersistentVolumeFilesystem
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name: claimName, Namespace: stack.Namespace,
			Labels: map[string]string{upload.ClaimUploadLabel: "true"},
			Annotations: map[string]string{
				v1.DiskSourceAnnotation: upload.Source, v1.DiskChecksumAnnotation: digest,
				upload.SizeAnnotation: strconv.Itoa(len(data)),
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &fs,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("256Mi")}},
		},
	}
	if err := st.Client.Create(ctx, claim); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Client.Delete(context.Background(), claim) })

	// The interrupted client: half the file, then nothing.
	pod := waitUploadPod(ctx, t, claimName)
	addr := forwardToPod(ctx, t, pod, upload.Port)
	half := len(data) / 2
	req, _ := http.NewRequestWithContext(ctx, http.MethodPatch, "http://"+addr+upload.Path, bytes.NewReader(data[:half]))
	req.Header.Set("Content-Type", upload.ContentType)
	req.Header.Set(upload.OffsetHeader, "0")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent || resp.Header.Get(upload.OffsetHeader) != strconv.Itoa(half) {
		t.Fatalf("PATCH of the first %d bytes: %s %s=%q: %s", half, resp.Status, upload.OffsetHeader, resp.Header.Get(upload.OffsetHeader), body)
	}

	out, err := exec.CommandContext(ctx, bin, append(kube, "image-upload", "--claim", claimName, art.Disk)...).CombinedOutput()
	if err != nil {
		t.Fatalf("podvirtctl image-upload (resuming): %v\n%s", err, out)
	}
	if want := fmt.Sprintf("resumed at %d of %d bytes", half, len(data)); !strings.Contains(string(out), want) {
		t.Errorf("podvirtctl image-upload should say %q:\n%s", want, out)
	}
	if err := st.Client.Get(ctx, client.ObjectKeyFromObject(claim), claim); err != nil {
		t.Fatal(err)
	}
	if claim.Status.Phase != corev1.ClaimBound || claim.Annotations[v1.ImportPhaseAnnotation] != string(v1.ImportSucceeded) {
		t.Errorf("after the upload the claim is %s with import phase %q; want Bound, Succeeded", claim.Status.Phase, claim.Annotations[v1.ImportPhaseAnnotation])
	}
	pv := &corev1.PersistentVolume{}
	if err := st.Client.Get(ctx, client.ObjectKey{Name: claim.Spec.VolumeName}, pv); err != nil {
		t.Fatal(err)
	}
	if got := pv.Spec.CSI.VolumeAttributes[v1.VolumeContextDigest]; got != digest {
		t.Errorf("PV %s holds digest %q; want the upload's %s", pv.Name, got, digest)
	}
	waitGone(ctx, t, pod)

	vm := stack.VM(name, v1.RunStrategyAlways)
	vm.Spec.DiskTemplates = nil
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	if _, err := st.WaitRunning(ctx, name, 10*time.Minute); err != nil {
		t.Fatal(err)
	}

	notDisk := filepath.Join(t.TempDir(), "notes.txt")
	if err := os.WriteFile(notDisk, bytes.Repeat([]byte("not a disk\n"), 100), 0o600); err != nil {
		t.Fatal(err)
	}
	out, err = exec.CommandContext(ctx, bin, append(kube, "image-upload", "--claim", "refused", notDisk)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "nodes would refuse") || !strings.Contains(string(out), "nothing was uploaded") {
		t.Errorf("image-upload of a text file: %v; want a refusal saying nothing was uploaded:\n%s", err, out)
	}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: "refused"}, &corev1.PersistentVolumeClaim{}); err == nil {
		t.Errorf("a refused upload made claim refused")
	}
}

// waitUploadPod waits for the controller's upload pod of claim to be ready.
func waitUploadPod(ctx context.Context, t *testing.T, claim string) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{}
	if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: "podvirt-upload-" + claim}, pod)
		return err == nil && podReady(pod), client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("no ready upload pod for claim %s (last: %+v): %v", claim, pod.Status, err)
	}
	return pod
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitGone waits for an object to be deleted.
func waitGone(ctx context.Context, t *testing.T, obj client.Object) {
	t.Helper()
	if err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, client.ObjectKeyFromObject(obj), obj)
		return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("%s is still there: %v", obj.GetName(), err)
	}
}

// forwardToPod forwards a free loopback port to the pod's port through the
// API server, for the test's life, and returns its address.
func forwardToPod(ctx context.Context, t *testing.T, pod *corev1.Pod, port int) string {
	t.Helper()
	cfg, err := st.Cluster.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	transport, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	u := strings.TrimSuffix(cfg.Host, "/") + "/api/v1/namespaces/" + pod.Namespace + "/pods/" + pod.Name + "/portforward"
	req, err := http.NewRequest(http.MethodPost, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, req.URL)
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stop, make(chan struct{}), io.Discard, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-fw.Ready:
	case err := <-failed:
		t.Fatalf("port-forward to pod %s: %v", pod.Name, err)
	case <-ctx.Done():
		t.Fatal(ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		t.Fatalf("port-forward to pod %s: %v", pod.Name, err)
	}
	return fmt.Sprintf("127.0.0.1:%d", ports[0].Local)
}
