package cli

import (
	"context"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	storagev1 "k8s.io/api/storage/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// TestImageUploadRefuses: what cannot end in a filled claim is refused
// before any claim is made: a StorageClass of another provisioner, a size
// below the disk's virtual size, a file a node would refuse.
func TestImageUploadRefuses(t *testing.T) {
	ns := namespace(t)
	dir := t.TempDir()
	disk := filepath.Join(dir, "small.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create (run `make deps` if it is missing): %v: %s", err, out)
	}
	other := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "upload-not-podvirt"}, Provisioner: "example.com/other"}
	create(t, other)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), other) })
	text := filepath.Join(dir, "notes.txt")
	if out, err := exec.Command("sh", "-c", "yes not a disk | head -c 1100 > "+text).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--storage-class", "upload-not-podvirt", disk}, "not podvirt's"},
		{[]string{"--size", "1Mi", disk}, "smaller than"},
		{[]string{text}, "nodes would refuse"},
	} {
		_, err := podvirtctl(t, ns, append([]string{"image-upload", "--claim", "refused"}, tc.args...)...)
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "nothing was uploaded") {
			t.Errorf("image-upload %v: %v; want a refusal saying %q and that nothing was uploaded", tc.args, err, tc.want)
		}
	}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "refused"}, &corev1.PersistentVolumeClaim{}); !apierrors.IsNotFound(err) {
		t.Errorf("a refused upload made a claim: %v", err)
	}
}
