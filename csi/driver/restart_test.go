package driver

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

func mountCap(block bool) *csi.VolumeCapability {
	c := &csi.VolumeCapability{AccessMode: &csi.VolumeCapability_AccessMode{Mode: csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER}}
	if block {
		c.AccessType = &csi.VolumeCapability_Block{Block: &csi.VolumeCapability_BlockVolume{}}
	} else {
		c.AccessType = &csi.VolumeCapability_Mount{Mount: &csi.VolumeCapability_MountVolume{}}
	}
	return c
}

func createReq(name string, size int64, block bool, params map[string]string) *csi.CreateVolumeRequest {
	return &csi.CreateVolumeRequest{
		Name:               name,
		CapacityRange:      &csi.CapacityRange{RequiredBytes: size},
		VolumeCapabilities: []*csi.VolumeCapability{mountCap(block)},
		Parameters:         params,
	}
}

// TestRestartKeepsState stops a driver with a staged Block volume, a
// published Filesystem volume and a snapshot, starts a new one on the same
// state directory, and checks it knows them all and can undo the staging.
func TestRestartKeepsState(t *testing.T) {
	ctx := context.Background()
	root := t.TempDir()
	stateDir := filepath.Join(root, "state")
	td := startDriver(t, stateDir, Options{})

	fs, err := td.controller().CreateVolume(ctx, createReq("pvc-fs", 8<<20, false, nil))
	if err != nil {
		t.Fatal(err)
	}
	blk, err := td.controller().CreateVolume(ctx, createReq("pvc-blk", 4<<20, true, nil))
	if err != nil {
		t.Fatal(err)
	}
	snap, err := td.controller().CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-1", SourceVolumeId: fs.Volume.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	fsID, blkID := fs.Volume.VolumeId, blk.Volume.VolumeId
	stage := func(id string, block bool) (string, string) {
		staging := filepath.Join(root, "staging", id)
		target := filepath.Join(root, "target", id)
		if _, err := td.node().NodeStageVolume(ctx, &csi.NodeStageVolumeRequest{VolumeId: id, StagingTargetPath: staging, VolumeCapability: mountCap(block)}); err != nil {
			t.Fatal(err)
		}
		if _, err := td.node().NodePublishVolume(ctx, &csi.NodePublishVolumeRequest{VolumeId: id, StagingTargetPath: staging, TargetPath: target, VolumeCapability: mountCap(block)}); err != nil {
			t.Fatal(err)
		}
		return staging, target
	}
	fsStaging, fsTarget := stage(fsID, false)
	blkStaging, blkTarget := stage(blkID, true)
	if loops := loopsOf(t, stateDir); len(loops) != 1 {
		t.Fatalf("loop devices after staging the Block volume: %v, want one", loops)
	}
	if _, err := os.Stat(filepath.Join(fsTarget, "disk.img")); err != nil {
		t.Fatalf("published Filesystem volume: %v", err)
	}
	// What a crash in the middle of a creation leaves.
	if err := os.Mkdir(filepath.Join(stateDir, "volumes", tmpPrefix+"pvc-crashed"), 0o755); err != nil {
		t.Fatal(err)
	}

	td.stop()
	td2 := startDriver(t, stateDir, Options{})
	if _, err := os.Stat(filepath.Join(stateDir, "volumes", tmpPrefix+"pvc-crashed")); !os.IsNotExist(err) {
		t.Errorf("the half-made volume of a crash is still there: %v", err)
	}
	vols, err := td2.controller().ListVolumes(ctx, &csi.ListVolumesRequest{})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, e := range vols.Entries {
		ids = append(ids, e.Volume.VolumeId)
	}
	slices.Sort(ids)
	if want := []string{blkID, fsID}; !slices.Equal(ids, want) {
		t.Errorf("volumes after restart %v, want %v", ids, want)
	}
	snaps, err := td2.controller().ListSnapshots(ctx, &csi.ListSnapshotsRequest{})
	if err != nil || len(snaps.Entries) != 1 || snaps.Entries[0].Snapshot.SnapshotId != snap.Snapshot.SnapshotId {
		t.Errorf("snapshots after restart %v, %v; want %s", snaps, err, snap.Snapshot.SnapshotId)
	}
	again, err := td2.controller().CreateVolume(ctx, createReq("pvc-fs", 8<<20, false, nil))
	if err != nil || again.Volume.VolumeId != fsID {
		t.Errorf("CreateVolume again after restart: %v, %v; want the same volume %s", again, err, fsID)
	}
	// Changing a volume a published claim holds is refused.
	if _, err := td2.controller().DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: fsID}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("DeleteVolume of a published volume: %v, want FailedPrecondition", err)
	}

	for _, v := range []struct{ id, staging, target string }{{fsID, fsStaging, fsTarget}, {blkID, blkStaging, blkTarget}} {
		if _, err := td2.node().NodeUnpublishVolume(ctx, &csi.NodeUnpublishVolumeRequest{VolumeId: v.id, TargetPath: v.target}); err != nil {
			t.Fatal(err)
		}
		if _, err := td2.node().NodeUnstageVolume(ctx, &csi.NodeUnstageVolumeRequest{VolumeId: v.id, StagingTargetPath: v.staging}); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(v.target); !os.IsNotExist(err) {
			t.Errorf("target %s left after unpublish: %v", v.target, err)
		}
	}
	if mounted, err := mounter.IsMountPoint(fsStaging); err != nil || mounted {
		t.Errorf("staging path %s still mounted after unstage (%v)", fsStaging, err)
	}
	if loops := loopsOf(t, stateDir); len(loops) != 0 {
		t.Errorf("loop devices left after unstage by the restarted driver: %v", loops)
	}
	for _, id := range []string{fsID, blkID} {
		if _, err := td2.controller().DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := td2.controller().DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	left, _ := os.ReadDir(filepath.Join(stateDir, "volumes"))
	if len(left) != 0 {
		t.Errorf("volume directories left after delete: %v", left)
	}
}

// TestCloneAndRestoreAreIndependent restores a snapshot and clones a
// volume, checks the copies kept their content and grew as asked, and that
// they outlive their sources.
func TestCloneAndRestoreAreIndependent(t *testing.T) {
	ctx := context.Background()
	td := startDriver(t, "", Options{})
	src, err := td.controller().CreateVolume(ctx, createReq("pvc-src", 8<<20, false, map[string]string{ParamFormat: "raw"}))
	if err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(td.VolumeDir(src.Volume.VolumeId), "disk.img")
	if err := os.WriteFile(disk, append([]byte("podvirt"), make([]byte, 8<<20-7)...), 0o644); err != nil {
		t.Fatal(err)
	}
	snap, err := td.controller().CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-src", SourceVolumeId: src.Volume.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	restoreReq := createReq("pvc-restored", 16<<20, false, nil)
	restoreReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}}
	restored, err := td.controller().CreateVolume(ctx, restoreReq)
	if err != nil {
		t.Fatal(err)
	}
	cloneReq := createReq("pvc-clone", 8<<20, true, nil)
	cloneReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: src.Volume.VolumeId}}}
	clone, err := td.controller().CreateVolume(ctx, cloneReq)
	if err != nil {
		t.Fatal(err)
	}
	if restored.Volume.CapacityBytes != 16<<20 || restored.Volume.ContentSource.GetSnapshot().GetSnapshotId() != snap.Snapshot.SnapshotId {
		t.Errorf("restored volume %v: want 16 MiB from %s", restored.Volume, snap.Snapshot.SnapshotId)
	}
	for _, id := range []string{src.Volume.VolumeId} {
		if _, err := td.controller().DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: id}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := td.controller().DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId}); err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{restored.Volume.VolumeId, clone.Volume.VolumeId} {
		b, err := os.ReadFile(filepath.Join(td.VolumeDir(id), "disk.img"))
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 7 || string(b[:7]) != "podvirt" {
			t.Errorf("volume %s lost its source's data", id)
		}
	}
}
