// Package driver is the CSI driver disk.podvirt.io: node-local VM disks,
// empty or filled from an image through the node's import cache, as
// directories (Filesystem mode) or loop devices (Block mode), with
// snapshots, clones and expansion.
//
// Every node runs the Controller service next to external-provisioner with
// --node-deployment, so CreateVolume runs on the node that will hold the
// disk. The services live in identityserver.go, controllerserver.go and
// nodeserver.go; server.go serves them over gRPC.
package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
)

// Name is the driver's name.
const Name = v1.CSIDriverName

// TopologyKey is the topology segment that pins a volume to its node.
const TopologyKey = "topology.disk.podvirt.io/node"

// ImageCache is the node's image cache (csi/importer.Cache).
type ImageCache interface {
	// Acquire imports src once per digest, joins an import in flight and
	// takes a persisted reference for holder.
	Acquire(ctx context.Context, src importer.Source, holder string, progress func(importer.Progress)) (importer.Base, error)
	// Release drops holder's reference.
	Release(holder string) error
}

// Cluster is what the driver reads from the Kubernetes API and tells it.
type Cluster interface {
	Claim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error)
	Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error)
	ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error)
	Event(obj runtime.Object, eventType, reason, message string)
	// AnnotateClaim sets (nil: removes) annotations on a claim.
	AnnotateClaim(ctx context.Context, namespace, name string, annotations map[string]*string) error
}

// Options configure a Driver.
type Options struct {
	// NodeID is this node's name.
	NodeID string
	// StateDir holds volumes/, snapshots/ and the state file.
	StateDir string
	// Cache fills volumes from images; nil refuses volumes with a source.
	Cache ImageCache
	// Cluster reads claims, Secrets and ConfigMaps and records events and
	// import annotations; nil refuses CreateVolume calls that name a claim.
	Cluster Cluster
	// ProgressInterval is the least time between two progress events, or
	// two writes of the import-progress annotation, on a claim (default
	// 10s).
	ProgressInterval time.Duration
	// Version is reported by GetPluginInfo.
	Version string
	// Log receives the driver's structured log (default slog.Default()).
	Log *slog.Logger
}

// Driver serves the CSI Identity, Controller and Node services.
type Driver struct {
	csi.UnimplementedIdentityServer
	csi.UnimplementedControllerServer
	csi.UnimplementedNodeServer

	opts  Options
	log   *slog.Logger
	store *state.Store
	// annotations records imports on their claims; nil without Cluster.
	annotations *claimAnnotator

	// ctx outlives CreateVolume calls: an import keeps running when the
	// provisioner's call times out, and the retry joins it.
	ctx    context.Context
	cancel context.CancelFunc

	opsMu sync.Mutex
	// creating holds CreateVolume operations in flight, by volume ID.
	creating map[string]*createOp
	// busy holds volume and snapshot IDs some other call is changing.
	busy map[string]bool
	wg   sync.WaitGroup
}

// New opens the driver's state in opts.StateDir and removes what a crash
// left half-made.
func New(opts Options) (*Driver, error) {
	if opts.NodeID == "" {
		return nil, errors.New("CSI driver: no node ID: set --node-id or NODE_NAME")
	}
	if opts.StateDir == "" {
		return nil, errors.New("CSI driver: no state directory")
	}
	if opts.ProgressInterval <= 0 {
		opts.ProgressInterval = 10 * time.Second
	}
	if opts.Log == nil {
		opts.Log = slog.Default()
	}
	d := &Driver{opts: opts, log: opts.Log, creating: map[string]*createOp{}, busy: map[string]bool{}}
	for _, dir := range []string{d.volumesDir(), d.snapshotsDir()} {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("CSI driver: create %s: %w", dir, err)
		}
		tmps, _ := filepath.Glob(filepath.Join(dir, tmpPrefix+"*"))
		for _, t := range tmps {
			d.log.Info("removing what an interrupted operation left", "path", t)
			if err := os.RemoveAll(t); err != nil {
				return nil, fmt.Errorf("CSI driver: remove %s: %w", t, err)
			}
		}
	}
	store, err := state.Open(filepath.Join(opts.StateDir, state.FileName))
	if err != nil {
		return nil, err
	}
	d.store = store
	for _, v := range store.Volumes() {
		if err := volume.Recover(d.VolumeDir(v.ID)); err != nil {
			return nil, fmt.Errorf("CSI driver: finish the snapshot a crash interrupted on volume %s: %w", v.ID, err)
		}
	}
	d.ctx, d.cancel = context.WithCancel(context.Background())
	if opts.Cluster != nil {
		d.annotations = newClaimAnnotator(opts.Cluster, d.log)
		d.wg.Add(1)
		go d.sweepUploads()
	}
	return d, nil
}

// annotationsGrace is how long Close waits to record on claims what the
// stopped operations left to say (an interrupted import is Pending).
const annotationsGrace = 5 * time.Second

// Close stops operations in flight (an import resumes when CreateVolume is
// called again) and waits for them.
func (d *Driver) Close() {
	d.cancel()
	d.wg.Wait()
	if d.annotations != nil {
		d.annotations.stop(annotationsGrace)
	}
}

// tmpPrefix marks a directory being built; New removes leftovers.
const tmpPrefix = ".new-"

func (d *Driver) volumesDir() string   { return filepath.Join(d.opts.StateDir, "volumes") }
func (d *Driver) snapshotsDir() string { return filepath.Join(d.opts.StateDir, "snapshots") }

// VolumeDir is the directory of the volume with id.
func (d *Driver) VolumeDir(id string) string { return filepath.Join(d.volumesDir(), id) }

// SnapshotDir is the directory of the snapshot with id.
func (d *Driver) SnapshotDir(id string) string { return filepath.Join(d.snapshotsDir(), id) }

var plainID = regexp.MustCompile(`^[a-z0-9][a-z0-9.-]{0,62}$`)

// objectID is the ID of the volume or snapshot created under name: the name
// itself when it is a plain DNS label (pvc-<uid>, snapshot-<uid>), so an
// operator finds a claim's disk, otherwise a hash. It is the same on every
// call, so a driver that crashed mid-creation finds its own leftovers (and
// its cache reference) again.
func objectID(prefix, name string) string {
	if plainID.MatchString(name) {
		return name
	}
	sum := sha256.Sum256([]byte(name))
	return prefix + hex.EncodeToString(sum[:16])
}

// Keys of lock: volumes and snapshots have separate ID spaces.
func volumeKey(id string) string   { return "volume/" + id }
func snapshotKey(id string) string { return "snapshot/" + id }

// lock marks key busy; false when another call holds it or the volume is
// being created.
func (d *Driver) lock(key string) bool {
	d.opsMu.Lock()
	defer d.opsMu.Unlock()
	if d.busy[key] {
		return false
	}
	if id, ok := strings.CutPrefix(key, "volume/"); ok && d.creating[id] != nil {
		return false
	}
	d.busy[key] = true
	return true
}

func (d *Driver) unlock(key string) {
	d.opsMu.Lock()
	defer d.opsMu.Unlock()
	delete(d.busy, key)
}
