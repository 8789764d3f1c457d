package controller

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

func TestPinnedSource(t *testing.T) {
	const digest = "sha256:2daa23ff2c0a7ed71748c6658698262bb3f60e6d385f0698ce719eb9cc1428ba"
	for _, tc := range []struct{ in, source, checksum string }{
		{"docker://registry.example/os/guest:latest", "docker://registry.example/os/guest@" + digest, ""},
		{"docker://registry.example:5000/os/guest", "docker://registry.example:5000/os/guest@" + digest, ""},
		{"docker://registry.example/os/guest@sha256:0000", "docker://registry.example/os/guest@" + digest, ""},
		{"https://images.example/disk.qcow2", "https://images.example/disk.qcow2", digest},
	} {
		source, checksum, err := pinnedSource(tc.in, digest)
		if err != nil || source != tc.source || checksum != tc.checksum {
			t.Errorf("pinnedSource(%q) = %q, %q, %v; want %q, %q", tc.in, source, checksum, err, tc.source, tc.checksum)
		}
	}
	if _, _, err := pinnedSource("upload://ns/claim", digest); err == nil || !strings.Contains(err.Error(), "image push") {
		t.Errorf("pinnedSource of an uploaded disk: %v; want a refusal saying to push the image", err)
	}
	if _, _, err := pinnedSource("ftp://x/y", digest); err == nil {
		t.Error("an ftp:// source was pinned")
	}
}

// A migration's claim on the target: an overlay on the source's image
// pinned to its digest, or an empty disk; named after the disk's first
// claim, so names do not grow with every migration.
func TestTargetClaim(t *testing.T) {
	m := &v1alpha1.VirtualMachineInstanceMigration{ObjectMeta: metav1.ObjectMeta{Name: "mig", UID: "abcde-123"}}
	class := "podvirt"
	src := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: "vm-root-0f0f0", Namespace: "ns", Labels: map[string]string{v1alpha1.VMNameLabel: "vm"},
			Annotations: map[string]string{v1alpha1.DiskNameAnnotation: "vm-root"}},
		Spec: corev1.PersistentVolumeClaimSpec{StorageClassName: &class, AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources: corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}}},
	}
	pv := func(attrs map[string]string) *corev1.PersistentVolume {
		return &corev1.PersistentVolume{Spec: corev1.PersistentVolumeSpec{
			Capacity:               corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("2Gi")},
			PersistentVolumeSource: corev1.PersistentVolumeSource{CSI: &corev1.CSIPersistentVolumeSource{Driver: v1alpha1.CSIDriverName, VolumeAttributes: attrs}},
		}}
	}
	overlay, err := targetClaim(m, src, pv(map[string]string{v1alpha1.VolumeContextSource: "docker://r/os:1", v1alpha1.VolumeContextDigest: "sha256:aa", v1alpha1.VolumeContextOverlay: "true"}))
	if err != nil {
		t.Fatal(err)
	}
	if overlay.Name != "vm-root-abcde" || overlay.Annotations[v1alpha1.DiskSourceAnnotation] != "docker://r/os@sha256:aa" ||
		overlay.Labels[v1alpha1.VMNameLabel] != "vm" || overlay.Labels[v1alpha1.MigrationLabel] != "mig" || *overlay.Spec.StorageClassName != class {
		t.Errorf("overlay target claim: %+v", overlay.ObjectMeta)
	}
	if got := overlay.Spec.Resources.Requests[corev1.ResourceStorage]; got.Cmp(resource.MustParse("2Gi")) != 0 {
		t.Errorf("size %s, want the source volume's 2Gi", got.String())
	}
	blank, err := targetClaim(m, src, pv(map[string]string{v1alpha1.VolumeContextSource: "docker://r/os:1", v1alpha1.VolumeContextDigest: "sha256:aa"}))
	if err != nil {
		t.Fatal(err)
	}
	if blank.Annotations[v1alpha1.DiskBlankAnnotation] != "true" || blank.Annotations[v1alpha1.DiskSourceAnnotation] != "" {
		t.Errorf("a copied disk's target should be blank: %v", blank.Annotations)
	}
	other := pv(nil)
	other.Spec.CSI.Driver = "other.csi.example"
	if _, err := targetClaim(m, src, other); err == nil {
		t.Error("a claim of another driver got a target")
	}
}

// TestVMMigratingCondition: a VM whose VMI moves is Migrating, in its
// printable status and in a condition saying from where to where and how
// far; once the move ended both are gone.
func TestVMMigratingCondition(t *testing.T) {
	vm := &v1alpha1.VirtualMachine{}
	vmi := &v1alpha1.VirtualMachineInstance{Status: v1alpha1.VirtualMachineInstanceStatus{
		Phase: v1alpha1.Running,
		MigrationState: &v1alpha1.MigrationState{SourceNode: "node-1", TargetNode: "node-2",
			MemoryBytes: 100 << 20, MemoryTotal: 256 << 20, DiskBytes: 5 << 20},
	}}
	setMigrating(vm, vmi)
	c := meta.FindStatusCondition(vm.Status.Conditions, ConditionMigrating)
	if c == nil || c.Status != metav1.ConditionTrue || c.Message != "moving live from node node-1 to node-2; memory 100.0 MiB of 256.0 MiB, disk 5.0 MiB copied" {
		t.Errorf("Migrating condition %+v", c)
	}
	if s := printableStatus(vm, vmi, diskReady, time.Now()); s != v1alpha1.PrintableStatusMigrating {
		t.Errorf("printable status %s, want Migrating", s)
	}
	vmi.Status.MigrationState.EndTimestamp = &metav1.Time{Time: time.Now()}
	setMigrating(vm, vmi)
	if c := meta.FindStatusCondition(vm.Status.Conditions, ConditionMigrating); c != nil {
		t.Errorf("Migrating condition %+v after the migration ended", c)
	}
	if s := printableStatus(vm, vmi, diskReady, time.Now()); s != v1alpha1.PrintableStatusRunning {
		t.Errorf("printable status %s, want Running", s)
	}
}

// TestHandOverFrom: a same-node target pod asks podvirt-l2, through each
// Multus selection's cni-args, to take over the source pod's attachment;
// what the selections asked for stays.
func TestHandOverFrom(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "target", Annotations: map[string]string{
		v1alpha1.MultusNetworksAnnotation: `[{"name":"l2","interface":"pv1","mac":"02:00:00:00:00:01","ips":["10.0.0.5/24"]},{"name":"l2b","namespace":"net","interface":"pv2"}]`,
	}}}
	if err := handOverFrom(pod, "src-uid"); err != nil {
		t.Fatal(err)
	}
	want := `[{"name":"l2","interface":"pv1","mac":"02:00:00:00:00:01","ips":["10.0.0.5/24"],"cni-args":{"podvirtHandoffFrom":"src-uid"}},` +
		`{"name":"l2b","namespace":"net","interface":"pv2","cni-args":{"podvirtHandoffFrom":"src-uid"}}]`
	if got := pod.Annotations[v1alpha1.MultusNetworksAnnotation]; got != want {
		t.Errorf("networks annotation\n got %s\nwant %s", got, want)
	}
}
