package driver

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
)

// TestSnapshotOfPublishedVolume: a volume a pod has published is copied
// into a snapshot, unless the launcher froze it for that VolumeSnapshot
// (an online VM snapshot), when the snapshot keeps the frozen layer; the
// next publish makes the launcher's top disk.img again.
func TestSnapshotOfPublishedVolume(t *testing.T) {
	ctx := context.Background()
	td := startDriver(t, "", Options{})
	vol, err := td.controller().CreateVolume(ctx, createReq("pvc-running", 16<<20, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	id := vol.Volume.VolumeId
	dir := td.VolumeDir(id)
	if _, err := td.store.UpdateVolume(id, func(v *state.Volume) { v.TargetPaths = []string{"/pods/a"} }); err != nil {
		t.Fatal(err)
	}
	snap := func(name, vs string) *csi.Snapshot {
		t.Helper()
		resp, err := td.controller().CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: name, SourceVolumeId: id, Parameters: map[string]string{paramSnapshotName: vs}})
		if err != nil {
			t.Fatal(err)
		}
		return resp.Snapshot
	}
	copied := snap("snap-copied", "plain")
	if s, _ := td.store.Snapshot(copied.SnapshotId); s.Layered {
		t.Error("a snapshot of a published volume nobody froze is layered")
	}

	// The launcher's switch (runtime/launcher): disk.img linked as the
	// VolumeSnapshot's layer, a new top over it.
	layer, top := diskmeta.LayerName("vm-snap"), "top-vm-snap.img"
	if err := os.Link(volume.DiskPath(dir), filepath.Join(dir, layer)); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(volume.QemuImg, "create", "-q", "-u", "-f", "qcow2", "-b", layer, "-F", "qcow2", filepath.Join(dir, top), "16M").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	if err := volume.WriteMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, Layers: []string{layer}, Top: top}); err != nil {
		t.Fatal(err)
	}
	online := snap("snap-online", "vm-snap")
	if s, _ := td.store.Snapshot(online.SnapshotId); !s.Layered {
		t.Error("the snapshot did not keep the layer the launcher froze")
	}
	var lst, sst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, layer), &lst); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(volume.DiskPath(td.SnapshotDir(online.SnapshotId)), &sst); err != nil {
		t.Fatal(err)
	}
	if lst.Ino != sst.Ino {
		t.Error("the online snapshot copied the layer instead of linking it")
	}

	// The pod is gone; the next publish settles the top as disk.img.
	if _, err := td.store.UpdateVolume(id, func(v *state.Volume) { v.TargetPaths = nil }); err != nil {
		t.Fatal(err)
	}
	staging, target := filepath.Join(t.TempDir(), "staging"), filepath.Join(t.TempDir(), "target")
	capability := mountCap(false)
	if _, err := td.node().NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: capability}); err != nil {
		t.Fatal(err)
	}
	if _, err := td.node().NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: capability}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_, _ = td.node().NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: id, TargetPath: target})
		_, _ = td.node().NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: id, StagingTargetPath: staging})
	})
	m, err := diskmeta.Read(dir)
	if err != nil || m.Top != "" {
		t.Fatalf("meta after publish %+v, %v: want the top settled", m, err)
	}
	if i := diskInfo(t, dir, "qcow2"); i.BackingFilename != layer {
		t.Errorf("disk.img after publish backs on %q, want %s", i.BackingFilename, layer)
	}
}
