package driver

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	mount "k8s.io/mount-utils"

	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
)

// mounter does the bind mounts of staging and publishing.
var mounter = mount.New("")

// NodeGetCapabilities lists what the Node service does.
func (d *Driver) NodeGetCapabilities(context.Context, *csi.NodeGetCapabilitiesRequest) (*csi.NodeGetCapabilitiesResponse, error) {
	var caps []*csi.NodeServiceCapability
	for _, t := range []csi.NodeServiceCapability_RPC_Type{
		csi.NodeServiceCapability_RPC_STAGE_UNSTAGE_VOLUME,
		csi.NodeServiceCapability_RPC_GET_VOLUME_STATS,
		csi.NodeServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.NodeServiceCapability{Type: &csi.NodeServiceCapability_Rpc{Rpc: &csi.NodeServiceCapability_RPC{Type: t}}})
	}
	return &csi.NodeGetCapabilitiesResponse{Capabilities: caps}, nil
}

// NodeGetInfo names the node and its topology segment.
func (d *Driver) NodeGetInfo(context.Context, *csi.NodeGetInfoRequest) (*csi.NodeGetInfoResponse, error) {
	return &csi.NodeGetInfoResponse{NodeId: d.opts.NodeID, AccessibleTopology: d.topology()[0]}, nil
}

// nodeVolume checks the common arguments of a node call, locks the volume
// and returns it; the caller unlocks.
func (d *Driver) nodeVolume(call, id, path, pathName string) (state.Volume, error) {
	if id == "" {
		return state.Volume{}, status.Errorf(codes.InvalidArgument, "%s: no volume ID", call)
	}
	if path == "" {
		return state.Volume{}, status.Errorf(codes.InvalidArgument, "%s %s: no %s", call, id, pathName)
	}
	if !d.lock(volumeKey(id)) {
		return state.Volume{}, status.Errorf(codes.Aborted, "%s %s: another operation on the volume is in progress; retry", call, id)
	}
	v, err := d.store.Volume(id)
	if err != nil {
		d.unlock(volumeKey(id))
		return state.Volume{}, status.Errorf(codes.NotFound, "%s: volume %s does not exist on node %s", call, id, d.opts.NodeID)
	}
	return v, nil
}

func checkNodeCapability(call string, v state.Volume, c *csi.VolumeCapability) error {
	if c == nil {
		return status.Errorf(codes.InvalidArgument, "%s %s: no volume capability", call, v.ID)
	}
	block, err := checkCapabilities([]*csi.VolumeCapability{c})
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "%s %s: %v", call, v.ID, err)
	}
	if block != v.Block {
		return status.Errorf(codes.InvalidArgument, "%s %s: the volume is a %s volume, the capability asks for %s", call, v.ID, modeName(v.Block), modeName(block))
	}
	return nil
}

// NodeStageVolume makes a volume usable on the node: a Filesystem volume's
// directory is bind-mounted at the staging path; a Block volume's disk is
// attached to a loop device.
func (d *Driver) NodeStageVolume(ctx context.Context, req *csi.NodeStageVolumeRequest) (*csi.NodeStageVolumeResponse, error) {
	if req.GetVolumeId() != "" && req.GetStagingTargetPath() != "" && req.GetVolumeCapability() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodeStageVolume %s: no volume capability", req.GetVolumeId())
	}
	v, err := d.nodeVolume("NodeStageVolume", req.GetVolumeId(), req.GetStagingTargetPath(), "staging target path")
	if err != nil {
		return nil, err
	}
	defer d.unlock(volumeKey(v.ID))
	if err := checkNodeCapability("NodeStageVolume", v, req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	staging := req.GetStagingTargetPath()
	disk := volume.DiskPath(d.VolumeDir(v.ID))
	loop := v.Loop
	if v.Block {
		if loop != "" {
			if devs, err := volume.LoopsOf(ctx, disk); err != nil || !slices.Contains(devs, loop) {
				loop = "" // gone, e.g. after a reboot
			}
		}
		if loop == "" {
			if loop, err = volume.AttachLoop(ctx, disk); err != nil {
				return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", v.ID, err)
			}
		}
	} else {
		if err := os.MkdirAll(staging, 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: create %s: %v", v.ID, staging, err)
		}
		mounted, err := mounter.IsMountPoint(staging)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: check %s: %v", v.ID, staging, err)
		}
		if !mounted {
			if err := mounter.Mount(d.VolumeDir(v.ID), staging, "", []string{"bind"}); err != nil {
				return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: bind-mount the volume at %s: %v", v.ID, staging, err)
			}
		}
	}
	if _, err := d.store.UpdateVolume(v.ID, func(v *state.Volume) { v.StagingPath, v.Loop = staging, loop }); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeStageVolume %s: %v", v.ID, err)
	}
	return &csi.NodeStageVolumeResponse{}, nil
}

// NodeUnstageVolume undoes NodeStageVolume: unmounts the staging path or
// releases the loop device.
func (d *Driver) NodeUnstageVolume(ctx context.Context, req *csi.NodeUnstageVolumeRequest) (*csi.NodeUnstageVolumeResponse, error) {
	v, err := d.nodeVolume("NodeUnstageVolume", req.GetVolumeId(), req.GetStagingTargetPath(), "staging target path")
	if err != nil {
		return nil, err
	}
	defer d.unlock(volumeKey(v.ID))
	staging := req.GetStagingTargetPath()
	if v.Block {
		if err := volume.DetachLoopsOf(ctx, volume.DiskPath(d.VolumeDir(v.ID))); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", v.ID, err)
		}
	} else if err := unmount(staging, false); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", v.ID, err)
	}
	if _, err := d.store.UpdateVolume(v.ID, func(v *state.Volume) { v.StagingPath, v.Loop = "", "" }); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnstageVolume %s: %v", v.ID, err)
	}
	return &csi.NodeUnstageVolumeResponse{}, nil
}

// NodePublishVolume bind-mounts the staged volume at the target path: the
// volume directory for Filesystem, the loop device onto a file for Block.
func (d *Driver) NodePublishVolume(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	if req.GetVolumeContext()[contextEphemeral] == "true" {
		return d.publishUpload(ctx, req)
	}
	if req.GetVolumeId() != "" && req.GetTargetPath() != "" && req.GetVolumeCapability() == nil {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: no volume capability", req.GetVolumeId())
	}
	v, err := d.nodeVolume("NodePublishVolume", req.GetVolumeId(), req.GetTargetPath(), "target path")
	if err != nil {
		return nil, err
	}
	defer d.unlock(volumeKey(v.ID))
	if err := checkNodeCapability("NodePublishVolume", v, req.GetVolumeCapability()); err != nil {
		return nil, err
	}
	if req.GetStagingTargetPath() == "" {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: no staging target path", v.ID)
	}
	if v.StagingPath == "" {
		return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: the volume is not staged: call NodeStageVolume first", v.ID)
	}
	target := req.GetTargetPath()
	source := req.GetStagingTargetPath()
	if v.Block {
		source = v.Loop
		if err := os.MkdirAll(filepath.Dir(target), 0o750); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", v.ID, err)
		}
		f, err := os.OpenFile(target, os.O_CREATE|os.O_RDONLY, 0o660)
		if err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create block target %s: %v", v.ID, target, err)
		}
		f.Close()
	} else if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create %s: %v", v.ID, target, err)
	}
	if !v.Block && len(v.TargetPaths) == 0 {
		// No pod has the disk open: a top an online snapshot switched
		// to becomes disk.img again, where the launcher looks.
		if err := volume.Settle(d.VolumeDir(v.ID)); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", v.ID, err)
		}
	}
	mounted, err := mounter.IsMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: check %s: %v", v.ID, target, err)
	}
	if !mounted {
		opts := []string{"bind"}
		if req.GetReadonly() {
			opts = append(opts, "ro")
		}
		if err := mounter.Mount(source, target, "", opts); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: bind-mount %s at %s: %v", v.ID, source, target, err)
		}
	}
	if _, err := d.store.UpdateVolume(v.ID, func(v *state.Volume) {
		if !slices.Contains(v.TargetPaths, target) {
			v.TargetPaths = append(v.TargetPaths, target)
		}
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", v.ID, err)
	}
	return &csi.NodePublishVolumeResponse{}, nil
}

// NodeUnpublishVolume unmounts the target path and removes it.
func (d *Driver) NodeUnpublishVolume(ctx context.Context, req *csi.NodeUnpublishVolumeRequest) (*csi.NodeUnpublishVolumeResponse, error) {
	id, target := req.GetVolumeId(), req.GetTargetPath()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "NodeUnpublishVolume: no volume ID")
	}
	if target == "" {
		return nil, status.Errorf(codes.InvalidArgument, "NodeUnpublishVolume %s: no target path", id)
	}
	if !d.lock(volumeKey(id)) {
		return nil, status.Errorf(codes.Aborted, "NodeUnpublishVolume %s: another operation on the volume is in progress; retry", id)
	}
	defer d.unlock(volumeKey(id))
	if err := unmount(target, true); err != nil {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: %v", id, err)
	}
	_, err := d.store.UpdateVolume(id, func(v *state.Volume) {
		v.TargetPaths = slices.DeleteFunc(v.TargetPaths, func(p string) bool { return p == target })
	})
	if err != nil && !errors.Is(err, state.ErrNotFound) {
		return nil, status.Errorf(codes.Internal, "NodeUnpublishVolume %s: %v", id, err)
	}
	return &csi.NodeUnpublishVolumeResponse{}, nil
}

// unmount unmounts path if it is a mount point, and removes it when asked;
// a missing path is already done.
func unmount(path string, remove bool) error {
	mounted, err := mounter.IsMountPoint(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if mounted {
		if err := mounter.Unmount(path); err != nil {
			return err
		}
	}
	if remove {
		if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return nil
}

// NodeGetVolumeStats: for Filesystem, the disk's size against what its files
// take on the host (bounded by the free space there); for Block, the size.
func (d *Driver) NodeGetVolumeStats(ctx context.Context, req *csi.NodeGetVolumeStatsRequest) (*csi.NodeGetVolumeStatsResponse, error) {
	v, err := d.nodeVolume("NodeGetVolumeStats", req.GetVolumeId(), req.GetVolumePath(), "volume path")
	if err != nil {
		return nil, err
	}
	defer d.unlock(volumeKey(v.ID))
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, status.Errorf(codes.NotFound, "NodeGetVolumeStats %s: volume path %s: %v", v.ID, req.GetVolumePath(), err)
	}
	if v.Block {
		return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.Size}}}, nil
	}
	used, err := volume.Usage(d.VolumeDir(v.ID))
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodeGetVolumeStats %s: %v", v.ID, err)
	}
	avail := max(v.Size-used, 0)
	var st unix.Statfs_t
	if err := unix.Statfs(d.VolumeDir(v.ID), &st); err == nil {
		avail = min(avail, int64(st.Bavail)*st.Bsize)
	}
	return &csi.NodeGetVolumeStatsResponse{Usage: []*csi.VolumeUsage{{Unit: csi.VolumeUsage_BYTES, Total: v.Size, Used: used, Available: avail}}}, nil
}

// NodeExpandVolume makes a staged Block volume's loop device see the size
// ControllerExpandVolume gave its disk. A Filesystem volume needs nothing:
// the guest sees the new size when its VM starts again.
func (d *Driver) NodeExpandVolume(ctx context.Context, req *csi.NodeExpandVolumeRequest) (*csi.NodeExpandVolumeResponse, error) {
	v, err := d.nodeVolume("NodeExpandVolume", req.GetVolumeId(), req.GetVolumePath(), "volume path")
	if err != nil {
		return nil, err
	}
	defer d.unlock(volumeKey(v.ID))
	if _, err := os.Stat(req.GetVolumePath()); err != nil {
		return nil, status.Errorf(codes.NotFound, "NodeExpandVolume %s: volume path %s: %v", v.ID, req.GetVolumePath(), err)
	}
	if v.Block && v.Loop != "" {
		if err := volume.RefreshLoop(ctx, v.Loop); err != nil {
			return nil, status.Errorf(codes.Internal, "NodeExpandVolume %s: %v", v.ID, err)
		}
	}
	return &csi.NodeExpandVolumeResponse{CapacityBytes: v.Size}, nil
}
