package driver

import (
	"context"
	"errors"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
)

// createOp is a CreateVolume in flight. Calls with the same name wait for
// it instead of starting over.
type createOp struct {
	done chan struct{}
	vol  state.Volume
	err  error
}

// plan is everything a CreateVolume call decided before touching the disk.
type plan struct {
	id, name     string
	size, limit  int64
	block        bool
	params       params
	fromSnapshot string
	fromVolume   string
	// image is set when the volume is filled from an image.
	image *importer.Source
	// failureKey identifies the image for remembering a final failure.
	failureKey string
	// claim receives events; nil when the request names none.
	claim *corev1.PersistentVolumeClaim
}

// CreateVolume creates a volume on this node: empty, from a snapshot, a
// clone, or filled from an image (the claim's disk.podvirt.io/source
// annotation or the StorageClass source). It is idempotent by name, joins a
// creation in flight, and answers an image that failed for good at once.
func (d *Driver) CreateVolume(ctx context.Context, req *csi.CreateVolumeRequest) (*csi.CreateVolumeResponse, error) {
	p, err := d.plan(ctx, req)
	if err != nil {
		return nil, err
	}
	if v, err := d.store.VolumeByName(p.name); err == nil {
		if err := compatible(v, p); err != nil {
			return nil, err
		}
		if p.image != nil {
			d.reassertImport(p.claim, importAnnotations(v1.ImportSucceeded, nil, ""))
		}
		return &csi.CreateVolumeResponse{Volume: d.csiVolume(v)}, nil
	}
	if err := d.rememberedFailure(&p); err != nil {
		return nil, err
	}

	d.opsMu.Lock()
	op := d.creating[p.id]
	if op == nil {
		if d.busy[volumeKey(p.id)] {
			d.opsMu.Unlock()
			return nil, status.Errorf(codes.Aborted, "CreateVolume %q: another operation on volume %s is in progress; retry", p.name, p.id)
		}
		op = &createOp{done: make(chan struct{})}
		d.creating[p.id] = op
		d.wg.Add(1)
		go d.run(op, p)
	} else {
		d.log.Info("CreateVolume joins the creation in flight", "name", p.name, "volume", p.id)
	}
	d.opsMu.Unlock()

	select {
	case <-op.done:
	case <-ctx.Done():
		// The creation goes on; the provisioner's retry joins it.
		return nil, status.FromContextError(ctx.Err()).Err()
	}
	if op.err != nil {
		return nil, op.err
	}
	return &csi.CreateVolumeResponse{Volume: d.csiVolume(op.vol)}, nil
}

// compatible checks that an existing volume answers a repeated request.
func compatible(v state.Volume, p plan) error {
	if v.Size < p.size || (p.limit > 0 && v.Size > p.limit) {
		return status.Errorf(codes.AlreadyExists, "volume %q already exists with %d bytes, which does not fit the requested capacity", p.name, v.Size)
	}
	if v.Block != p.block {
		return status.Errorf(codes.AlreadyExists, "volume %q already exists as a %s volume", p.name, modeName(v.Block))
	}
	if v.FromSnapshot != p.fromSnapshot || v.FromVolume != p.fromVolume {
		return status.Errorf(codes.AlreadyExists, "volume %q already exists with another content source", p.name)
	}
	return nil
}

// plan checks the request and resolves the image source.
func (d *Driver) plan(ctx context.Context, req *csi.CreateVolumeRequest) (plan, error) {
	var p plan
	p.name = req.GetName()
	if p.name == "" {
		return p, status.Error(codes.InvalidArgument, "CreateVolume: no name")
	}
	block, err := checkCapabilities(req.GetVolumeCapabilities())
	if err != nil {
		return p, status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
	}
	p.block = block
	if p.size, p.limit, err = sizeFor(req.GetCapacityRange()); err != nil {
		return p, err
	}
	if err := d.checkTopology(req.GetAccessibilityRequirements()); err != nil {
		return p, err
	}
	if p.params, err = parseParams(req.GetParameters(), block); err != nil {
		return p, status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
	}
	p.id = objectID("vol-", p.name)
	if src := req.GetVolumeContentSource(); src != nil {
		switch {
		case src.GetSnapshot() != nil:
			p.fromSnapshot = src.GetSnapshot().GetSnapshotId()
			if _, err := d.store.Snapshot(p.fromSnapshot); err != nil {
				return p, status.Errorf(codes.NotFound, "CreateVolume %q: source snapshot %s does not exist on node %s", p.name, p.fromSnapshot, d.opts.NodeID)
			}
		case src.GetVolume() != nil:
			p.fromVolume = src.GetVolume().GetVolumeId()
			if _, err := d.store.Volume(p.fromVolume); err != nil {
				return p, status.Errorf(codes.NotFound, "CreateVolume %q: source volume %s does not exist on node %s", p.name, p.fromVolume, d.opts.NodeID)
			}
		default:
			return p, status.Errorf(codes.InvalidArgument, "CreateVolume %q: unknown volume content source", p.name)
		}
		return p, nil
	}
	return p, d.resolveImage(ctx, req, &p)
}

// run performs a planned creation and wakes everyone waiting for it.
func (d *Driver) run(op *createOp, p plan) {
	defer d.wg.Done()
	start := time.Now()
	op.vol, op.err = d.create(d.ctx, p)
	if op.err == nil {
		d.log.Info("volume created", "name", p.name, "volume", p.id, "size", p.size, "block", p.block, "source", op.vol.Source, "took", time.Since(start))
	} else {
		d.log.Error("CreateVolume failed", "name", p.name, "volume", p.id, "err", op.err)
	}
	d.opsMu.Lock()
	delete(d.creating, p.id)
	d.opsMu.Unlock()
	close(op.done)
}

func (d *Driver) create(ctx context.Context, p plan) (state.Volume, error) {
	v := state.Volume{
		ID: p.id, Name: p.name, Size: p.size, Block: p.block, Format: p.params.format,
		FromSnapshot: p.fromSnapshot, FromVolume: p.fromVolume, Prealloc: p.params.prealloc,
		Created: time.Now().UTC(),
	}
	dir, tmp := d.VolumeDir(p.id), d.VolumeDir(tmpPrefix+p.id)
	var err error
	switch {
	case p.fromSnapshot != "":
		err = d.restore(ctx, tmp, dir, &v, p)
	case p.fromVolume != "":
		err = d.copyFrom(ctx, volumeKey(p.fromVolume), d.VolumeDir(p.fromVolume), tmp, dir, &v, p)
	case p.image != nil:
		return d.importVolume(ctx, p, v)
	default:
		err = build(tmp, dir, func() error { return volume.Create(ctx, tmp, v.Format, v.Size, v.Prealloc) })
		if err != nil {
			err = status.Errorf(codes.Internal, "create %s disk of %d bytes for volume %q: %v", v.Format, v.Size, p.name, err)
		}
	}
	if err != nil {
		return v, err
	}
	if err := d.store.PutVolume(v); err != nil {
		return v, status.Errorf(codes.Internal, "record volume %q: %v", p.name, err)
	}
	return v, nil
}

// restore fills a new volume from a snapshot: an overlay on a layered
// snapshot's frozen disk in O(1) where the new volume can be a qcow2
// overlay, a copy otherwise.
func (d *Driver) restore(ctx context.Context, tmp, dir string, v *state.Volume, p plan) error {
	key, src := snapshotKey(p.fromSnapshot), d.SnapshotDir(p.fromSnapshot)
	s, err := d.store.Snapshot(p.fromSnapshot)
	if err != nil {
		return status.Errorf(codes.NotFound, "CreateVolume %q: snapshot %s does not exist on node %s", p.name, p.fromSnapshot, d.opts.NodeID)
	}
	overlay := s.Layered && !p.block && p.params.cloneStrategy != CloneCopy && (!p.params.formatWasExplicit || v.Format == diskmeta.FormatQCOW2)
	if !overlay {
		return d.copyFrom(ctx, key, src, tmp, dir, v, p)
	}
	m, err := d.lockSource(key, src, p)
	if err != nil {
		return err
	}
	defer d.unlock(key)
	if err := fitSource(v, p, key, s.Size); err != nil {
		return err
	}
	v.Format, v.Source = diskmeta.FormatQCOW2, m.Source
	if err := build(tmp, dir, func() error {
		return volume.Restore(ctx, src, tmp, diskmeta.LayerName(s.ID), v.Size)
	}); err != nil {
		return status.Errorf(codes.Internal, "CreateVolume %q from %s: %v", p.name, key, err)
	}
	if m.HasBase() {
		v.Digest, v.Overlay = m.Digest, true
	}
	return nil
}

// fitSource grows the new volume v to hold a source (key) of size bytes,
// within the request's limit.
func fitSource(v *state.Volume, p plan, key string, size int64) error {
	if size <= v.Size {
		return nil
	}
	if p.limit > 0 && size > p.limit {
		return status.Errorf(codes.OutOfRange, "CreateVolume %q: %s holds %d bytes, more than the limit of %d", p.name, key, size, p.limit)
	}
	v.Size = size
	return nil
}

// lockSource takes the lock of the snapshot or volume key, whose
// directory is src, so it is not deleted while a new volume is filled from
// it, and reads its metadata; the caller unlocks key.
func (d *Driver) lockSource(key, src string, p plan) (diskmeta.Meta, error) {
	if !d.lock(key) {
		return diskmeta.Meta{}, status.Errorf(codes.Aborted, "CreateVolume %q: %s is busy; retry", p.name, key)
	}
	m, err := diskmeta.Read(src)
	if err != nil {
		d.unlock(key)
		return diskmeta.Meta{}, status.Errorf(codes.Internal, "CreateVolume %q from %s: %v", p.name, key, err)
	}
	return m, nil
}

// copyFrom fills a new volume from a snapshot or volume directory src,
// holding src's lock.
func (d *Driver) copyFrom(ctx context.Context, key, src, tmp, dir string, v *state.Volume, p plan) error {
	m, err := d.lockSource(key, src, p)
	if err != nil {
		return err
	}
	defer d.unlock(key)
	srcSize, err := volume.VirtualSize(ctx, src)
	if err != nil {
		return status.Errorf(codes.Internal, "CreateVolume %q from %s: %v", p.name, key, err)
	}
	if err := fitSource(v, p, key, srcSize); err != nil {
		return err
	}
	// A Filesystem volume keeps the source's format unless the class
	// names one; a Block volume is raw.
	if !p.block && !p.params.formatWasExplicit {
		v.Format = m.Format
	}
	v.Source = m.Source
	flatten := p.block || p.params.cloneStrategy == CloneCopy
	if err := build(tmp, dir, func() error {
		return volume.Copy(ctx, src, tmp, v.Format, v.Size, v.Prealloc, flatten)
	}); err != nil {
		return status.Errorf(codes.Internal, "CreateVolume %q from %s: %v", p.name, key, err)
	}
	// A copy that keeps the source's base is an overlay on that image: say
	// so, as an import does, or a live migration would copy only the top
	// of the chain onto an empty disk.
	if m.HasBase() && !flatten && v.Format == diskmeta.FormatQCOW2 {
		v.Digest, v.Overlay = m.Digest, true
	}
	return nil
}

// finalImportError is what a CreateVolume answers once an import cannot
// succeed by retrying; the provisioner stops retrying on these codes.
func finalImportError(code codes.Code, format string, args ...any) error {
	return status.Errorf(code, format, args...)
}

var errNoCache = errors.New("this driver has no image cache")
