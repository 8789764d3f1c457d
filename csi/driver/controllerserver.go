package driver

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/timestamppb"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
)

// ControllerGetCapabilities lists what the Controller service does.
func (d *Driver) ControllerGetCapabilities(context.Context, *csi.ControllerGetCapabilitiesRequest) (*csi.ControllerGetCapabilitiesResponse, error) {
	var caps []*csi.ControllerServiceCapability
	for _, t := range []csi.ControllerServiceCapability_RPC_Type{
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_VOLUME,
		csi.ControllerServiceCapability_RPC_LIST_VOLUMES,
		csi.ControllerServiceCapability_RPC_GET_CAPACITY,
		csi.ControllerServiceCapability_RPC_CREATE_DELETE_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_LIST_SNAPSHOTS,
		csi.ControllerServiceCapability_RPC_GET_SNAPSHOT,
		csi.ControllerServiceCapability_RPC_CLONE_VOLUME,
		csi.ControllerServiceCapability_RPC_EXPAND_VOLUME,
	} {
		caps = append(caps, &csi.ControllerServiceCapability{Type: &csi.ControllerServiceCapability_Rpc{Rpc: &csi.ControllerServiceCapability_RPC{Type: t}}})
	}
	return &csi.ControllerGetCapabilitiesResponse{Capabilities: caps}, nil
}

// checkCapabilities accepts single-node access in one mode and says whether
// that mode is Block.
func checkCapabilities(caps []*csi.VolumeCapability) (block bool, err error) {
	if len(caps) == 0 {
		return false, errors.New("no volume capabilities given")
	}
	mount := false
	for _, c := range caps {
		switch {
		case c.GetBlock() != nil:
			block = true
		case c.GetMount() != nil:
			mount = true
		default:
			return false, errors.New("a volume capability has neither block nor mount access type")
		}
		switch m := c.GetAccessMode().GetMode(); m {
		case csi.VolumeCapability_AccessMode_SINGLE_NODE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_READER_ONLY,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_SINGLE_WRITER,
			csi.VolumeCapability_AccessMode_SINGLE_NODE_MULTI_WRITER:
		default:
			return false, fmt.Errorf("access mode %s is not supported: %s volumes live on one node; use ReadWriteOnce or ReadWriteOncePod", m, Name)
		}
	}
	if block && mount {
		return false, errors.New("volume capabilities ask for both block and mount access: pick one volumeMode")
	}
	return block, nil
}

// DefaultSize is the size of an empty volume when the request names none.
const DefaultSize = 1 << 30

// sizeFor picks the size for a capacity range: the required bytes rounded
// up to a 512-byte sector (qemu-img's unit), DefaultSize when nothing is
// required.
func sizeFor(r *csi.CapacityRange) (size, limit int64, err error) {
	req, limit := r.GetRequiredBytes(), r.GetLimitBytes()
	if req < 0 || limit < 0 {
		return 0, 0, status.Error(codes.InvalidArgument, "capacity range: negative bytes")
	}
	if limit > 0 && req > limit {
		return 0, 0, status.Errorf(codes.OutOfRange, "capacity range: required %d bytes exceeds the limit %d", req, limit)
	}
	size = req
	if size == 0 {
		size = DefaultSize
		if limit > 0 && limit < size {
			size = limit
		}
	}
	size = (size + 511) &^ 511
	if limit > 0 && size > limit {
		return 0, 0, status.Errorf(codes.OutOfRange, "capacity range: %d bytes rounded up to a 512-byte sector exceeds the limit %d", size, limit)
	}
	return size, limit, nil
}

func (d *Driver) topology() []*csi.Topology {
	return []*csi.Topology{{Segments: map[string]string{TopologyKey: d.opts.NodeID}}}
}

// checkTopology refuses a request that cannot be placed on this node.
func (d *Driver) checkTopology(req *csi.TopologyRequirement) error {
	if req == nil || (len(req.GetRequisite()) == 0 && len(req.GetPreferred()) == 0) {
		return nil
	}
	for _, list := range [][]*csi.Topology{req.GetRequisite(), req.GetPreferred()} {
		for _, t := range list {
			if n, ok := t.GetSegments()[TopologyKey]; !ok || n == d.opts.NodeID {
				return nil
			}
		}
	}
	return status.Errorf(codes.ResourceExhausted, "volume must be on another node than %s: this driver creates volumes only on its own node (run external-provisioner with --node-deployment)", d.opts.NodeID)
}

func (d *Driver) csiVolume(v state.Volume) *csi.Volume {
	cv := &csi.Volume{
		VolumeId:           v.ID,
		CapacityBytes:      v.Size,
		AccessibleTopology: d.topology(),
		VolumeContext:      map[string]string{"format": v.Format},
	}
	if v.Source != "" {
		cv.VolumeContext[v1.VolumeContextSource] = v.Source
	}
	if v.Digest != "" {
		cv.VolumeContext[v1.VolumeContextDigest] = v.Digest
	}
	if v.Overlay {
		cv.VolumeContext[v1.VolumeContextOverlay] = "true"
	}
	switch {
	case v.FromSnapshot != "":
		cv.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: v.FromSnapshot}}}
	case v.FromVolume != "":
		cv.ContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Volume{Volume: &csi.VolumeContentSource_VolumeSource{VolumeId: v.FromVolume}}}
	}
	return cv
}

// DeleteVolume removes a volume and its loop devices, and drops its cache
// reference; an unknown ID is already deleted.
func (d *Driver) DeleteVolume(ctx context.Context, req *csi.DeleteVolumeRequest) (*csi.DeleteVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteVolume: no volume ID")
	}
	if !d.lock(volumeKey(id)) {
		return nil, status.Errorf(codes.Aborted, "DeleteVolume %s: another operation on the volume is in progress; retry", id)
	}
	defer d.unlock(volumeKey(id))
	v, err := d.store.Volume(id)
	if errors.Is(err, state.ErrNotFound) {
		return &csi.DeleteVolumeResponse{}, nil
	}
	if len(v.TargetPaths) > 0 {
		return nil, status.Errorf(codes.FailedPrecondition, "DeleteVolume %s: still published at %v: unpublish it first", id, v.TargetPaths)
	}
	dir := d.VolumeDir(id)
	if err := volume.DetachLoopsOf(ctx, volume.DiskPath(dir)); err != nil && !errors.Is(err, os.ErrNotExist) {
		if _, serr := os.Stat(volume.DiskPath(dir)); serr == nil {
			return nil, status.Errorf(codes.Internal, "DeleteVolume %s: %v", id, err)
		}
	}
	if err := os.RemoveAll(dir); err != nil {
		return nil, status.Errorf(codes.Internal, "DeleteVolume %s: remove %s: %v", id, dir, err)
	}
	if v.Source != "" && d.opts.Cache != nil {
		if err := d.opts.Cache.Release(id); err != nil {
			d.log.Error("release image cache reference", "volume", id, "err", err)
		}
	}
	if err := d.store.DeleteVolume(id); err != nil {
		return nil, status.Errorf(codes.Internal, "DeleteVolume %s: %v", id, err)
	}
	d.log.Info("volume deleted", "volume", id)
	return &csi.DeleteVolumeResponse{}, nil
}

// ValidateVolumeCapabilities confirms what checkCapabilities accepts.
func (d *Driver) ValidateVolumeCapabilities(ctx context.Context, req *csi.ValidateVolumeCapabilitiesRequest) (*csi.ValidateVolumeCapabilitiesResponse, error) {
	if req.GetVolumeId() == "" {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: no volume ID")
	}
	if len(req.GetVolumeCapabilities()) == 0 {
		return nil, status.Error(codes.InvalidArgument, "ValidateVolumeCapabilities: no volume capabilities")
	}
	v, err := d.store.Volume(req.GetVolumeId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist on node %s", req.GetVolumeId(), d.opts.NodeID)
	}
	block, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: err.Error()}, nil
	}
	if block != v.Block {
		return &csi.ValidateVolumeCapabilitiesResponse{Message: fmt.Sprintf("volume %s is a %s volume", v.ID, modeName(v.Block))}, nil
	}
	return &csi.ValidateVolumeCapabilitiesResponse{Confirmed: &csi.ValidateVolumeCapabilitiesResponse_Confirmed{
		VolumeContext:      req.GetVolumeContext(),
		VolumeCapabilities: req.GetVolumeCapabilities(),
		Parameters:         req.GetParameters(),
	}}, nil
}

func modeName(block bool) string {
	if block {
		return "Block"
	}
	return "Filesystem"
}

// page cuts a list at starting token (an index) and max entries.
func page(n int, token string, max int32) (start, end int, next string, err error) {
	if token != "" {
		start, err = strconv.Atoi(token)
		if err != nil || start < 0 || start > n {
			return 0, 0, "", status.Errorf(codes.Aborted, "starting token %q is not valid: start the listing again without a token", token)
		}
	}
	end = n
	if max > 0 && start+int(max) < n {
		end = start + int(max)
		next = strconv.Itoa(end)
	}
	return start, end, next, nil
}

// ListVolumes lists this node's volumes.
func (d *Driver) ListVolumes(ctx context.Context, req *csi.ListVolumesRequest) (*csi.ListVolumesResponse, error) {
	vols := d.store.Volumes()
	start, end, next, err := page(len(vols), req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListVolumesResponse{NextToken: next}
	for _, v := range vols[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListVolumesResponse_Entry{Volume: d.csiVolume(v)})
	}
	return resp, nil
}

// GetCapacity is the free space of the state directory's filesystem. Overlays
// take little of it until the guest writes.
func (d *Driver) GetCapacity(ctx context.Context, req *csi.GetCapacityRequest) (*csi.GetCapacityResponse, error) {
	if t := req.GetAccessibleTopology(); t != nil {
		if n, ok := t.GetSegments()[TopologyKey]; ok && n != d.opts.NodeID {
			return &csi.GetCapacityResponse{}, nil
		}
	}
	var st unix.Statfs_t
	if err := unix.Statfs(d.opts.StateDir, &st); err != nil {
		return nil, status.Errorf(codes.Internal, "GetCapacity: statfs %s: %v", d.opts.StateDir, err)
	}
	return &csi.GetCapacityResponse{AvailableCapacity: int64(st.Bavail) * st.Bsize}, nil
}

// ControllerExpandVolume grows the disk image; a Block volume's loop device
// then needs NodeExpandVolume to see it.
func (d *Driver) ControllerExpandVolume(ctx context.Context, req *csi.ControllerExpandVolumeRequest) (*csi.ControllerExpandVolumeResponse, error) {
	id := req.GetVolumeId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: no volume ID")
	}
	if req.GetCapacityRange() == nil {
		return nil, status.Error(codes.InvalidArgument, "ControllerExpandVolume: no capacity range")
	}
	size, _, err := sizeFor(req.GetCapacityRange())
	if err != nil {
		return nil, err
	}
	if !d.lock(volumeKey(id)) {
		return nil, status.Errorf(codes.Aborted, "ControllerExpandVolume %s: another operation on the volume is in progress; retry", id)
	}
	defer d.unlock(volumeKey(id))
	v, err := d.store.Volume(id)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "volume %s does not exist on node %s", id, d.opts.NodeID)
	}
	if size > v.Size {
		if err := volume.Resize(ctx, d.VolumeDir(id), size, v.Prealloc); err != nil {
			return nil, status.Errorf(codes.Internal, "expand volume %s to %d bytes: %v (is a VM using it? expansion is offline)", id, size, err)
		}
		if v, err = d.store.UpdateVolume(id, func(v *state.Volume) { v.Size = size }); err != nil {
			return nil, status.Errorf(codes.Internal, "expand volume %s: %v", id, err)
		}
		d.log.Info("volume expanded", "volume", id, "size", size)
	}
	return &csi.ControllerExpandVolumeResponse{CapacityBytes: v.Size, NodeExpansionRequired: v.Block}, nil
}

// CreateSnapshot keeps a volume's disk as it is now in a snapshot
// directory: in O(1) by freezing a qcow2 disk no one has open, or by
// keeping the layer the launcher froze a running disk at for this
// VolumeSnapshot (contracts/diskmeta Layers), otherwise by a copy (an overlay stays an overlay on the same base, so only what the
// guest wrote is copied).
func (d *Driver) CreateSnapshot(ctx context.Context, req *csi.CreateSnapshotRequest) (*csi.CreateSnapshotResponse, error) {
	name, src := req.GetName(), req.GetSourceVolumeId()
	if name == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateSnapshot: no name")
	}
	if src == "" {
		return nil, status.Error(codes.InvalidArgument, "CreateSnapshot: no source volume ID")
	}
	if err := d.checkTopology(req.GetAccessibilityRequirements()); err != nil {
		return nil, err
	}
	if s, err := d.store.SnapshotByName(name); err == nil {
		if s.SourceVolume != src {
			return nil, status.Errorf(codes.AlreadyExists, "snapshot %q already exists for volume %s, not %s", name, s.SourceVolume, src)
		}
		return &csi.CreateSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
	}
	id := objectID("snap-", name)
	if !d.lock(snapshotKey(id)) {
		return nil, status.Errorf(codes.Aborted, "CreateSnapshot %q: already in progress; retry", name)
	}
	defer d.unlock(snapshotKey(id))
	if !d.lock(volumeKey(src)) {
		return nil, status.Errorf(codes.Aborted, "CreateSnapshot %q: another operation on volume %s is in progress; retry", name, src)
	}
	defer d.unlock(volumeKey(src))
	v, err := d.store.Volume(src)
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "CreateSnapshot %q: source volume %s does not exist on node %s", name, src, d.opts.NodeID)
	}
	dir := d.SnapshotDir(id)
	tmp := d.SnapshotDir(tmpPrefix + id)
	vdir := d.VolumeDir(src)
	// A qcow2 disk no one holds open is frozen where it is: the snapshot
	// keeps that layer and the volume goes on in a new overlay, so nothing
	// is copied. A disk in use, raw or Block is copied (crash-consistent).
	canFreeze, err := volume.CanFreeze(vdir)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "CreateSnapshot %q of volume %s: %v", name, src, err)
	}
	// A running VM's disk the launcher already froze for this
	// VolumeSnapshot (a VM snapshot switched it to a new overlay) is kept
	// as frozen.
	layer, online := diskmeta.LayerName(id), false
	if vs := req.GetParameters()[paramSnapshotName]; vs != "" && canFreeze {
		if online, err = volume.Frozen(vdir, diskmeta.LayerName(vs)); err != nil {
			return nil, status.Errorf(codes.Internal, "CreateSnapshot %q of volume %s: %v", name, src, err)
		}
		if online {
			layer = diskmeta.LayerName(vs)
		}
	}
	layered := online || (canFreeze && !v.Block && len(v.TargetPaths) == 0)
	if err := build(tmp, dir, func() error {
		if !layered {
			return volume.Copy(ctx, vdir, tmp, v.Format, v.Size, "", false)
		}
		if !online {
			if err := volume.Freeze(ctx, vdir, layer); err != nil {
				return err
			}
		}
		return volume.Keep(vdir, layer, tmp)
	}); err != nil {
		return nil, status.Errorf(codes.Internal, "CreateSnapshot %q of volume %s: %v", name, src, err)
	}
	s := state.Snapshot{ID: id, Name: name, SourceVolume: src, Size: v.Size, Created: timestamppb.Now().AsTime(), Layered: layered}
	if err := d.store.PutSnapshot(s); err != nil {
		return nil, status.Errorf(codes.Internal, "CreateSnapshot %q: %v", name, err)
	}
	d.log.Info("snapshot created", "snapshot", id, "volume", src, "layered", layered)
	return &csi.CreateSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
}

// csiSnapshot describes a snapshot. Its accessible topology (this node, as
// for volumes) is optional and left out: csi-sanity v5.6.0 compares it with
// reflect-based equality, which fails on proto messages that went over gRPC.
func (d *Driver) csiSnapshot(s state.Snapshot) *csi.Snapshot {
	return &csi.Snapshot{
		SnapshotId:     s.ID,
		SourceVolumeId: s.SourceVolume,
		SizeBytes:      s.Size,
		CreationTime:   timestamppb.New(s.Created),
		ReadyToUse:     true,
	}
}

// GetSnapshot returns one snapshot.
func (d *Driver) GetSnapshot(ctx context.Context, req *csi.GetSnapshotRequest) (*csi.GetSnapshotResponse, error) {
	if req.GetSnapshotId() == "" {
		return nil, status.Error(codes.InvalidArgument, "GetSnapshot: no snapshot ID")
	}
	s, err := d.store.Snapshot(req.GetSnapshotId())
	if err != nil {
		return nil, status.Errorf(codes.NotFound, "snapshot %s does not exist on node %s", req.GetSnapshotId(), d.opts.NodeID)
	}
	return &csi.GetSnapshotResponse{Snapshot: d.csiSnapshot(s)}, nil
}

// DeleteSnapshot removes a snapshot; volumes restored from it are
// independent of it.
func (d *Driver) DeleteSnapshot(ctx context.Context, req *csi.DeleteSnapshotRequest) (*csi.DeleteSnapshotResponse, error) {
	id := req.GetSnapshotId()
	if id == "" {
		return nil, status.Error(codes.InvalidArgument, "DeleteSnapshot: no snapshot ID")
	}
	if !d.lock(snapshotKey(id)) {
		return nil, status.Errorf(codes.Aborted, "DeleteSnapshot %s: another operation on the snapshot is in progress; retry", id)
	}
	defer d.unlock(snapshotKey(id))
	if err := os.RemoveAll(d.SnapshotDir(id)); err != nil {
		return nil, status.Errorf(codes.Internal, "DeleteSnapshot %s: %v", id, err)
	}
	if err := d.store.DeleteSnapshot(id); err != nil {
		return nil, status.Errorf(codes.Internal, "DeleteSnapshot %s: %v", id, err)
	}
	return &csi.DeleteSnapshotResponse{}, nil
}

// ListSnapshots lists snapshots, by ID or source volume when asked.
func (d *Driver) ListSnapshots(ctx context.Context, req *csi.ListSnapshotsRequest) (*csi.ListSnapshotsResponse, error) {
	var snaps []state.Snapshot
	for _, s := range d.store.Snapshots() {
		if (req.GetSnapshotId() == "" || s.ID == req.GetSnapshotId()) && (req.GetSourceVolumeId() == "" || s.SourceVolume == req.GetSourceVolumeId()) {
			snaps = append(snaps, s)
		}
	}
	start, end, next, err := page(len(snaps), req.GetStartingToken(), req.GetMaxEntries())
	if err != nil {
		return nil, err
	}
	resp := &csi.ListSnapshotsResponse{NextToken: next}
	for _, s := range snaps[start:end] {
		resp.Entries = append(resp.Entries, &csi.ListSnapshotsResponse_Entry{Snapshot: d.csiSnapshot(s)})
	}
	return resp, nil
}

// build makes dir by running fill on the temporary directory tmp and
// renaming it: a crash leaves only a tmp directory, which New removes.
func build(tmp, dir string, fill func() error) error {
	if err := os.RemoveAll(tmp); err != nil {
		return err
	}
	if err := os.RemoveAll(dir); err != nil { // a leftover the state does not know
		return err
	}
	if err := os.Mkdir(tmp, 0o755); err != nil {
		return err
	}
	if err := fill(); err != nil {
		_ = os.RemoveAll(tmp)
		return err
	}
	return os.Rename(tmp, dir)
}
