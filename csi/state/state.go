// Package state is what the driver remembers across restarts: its volumes,
// snapshots, where volumes are staged and published, and imports that
// failed for good. It is one JSON file, rewritten atomically on every
// change, so a crash leaves the previous state or the new one.
package state

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/podvirt/podvirt/internal/atomicfile"
)

// FileName is the state file in the driver's state directory.
const FileName = "state.json"

// Volume is a volume on this node.
type Volume struct {
	ID   string `json:"id"`
	Name string `json:"name"`
	// Size is the disk's virtual size in bytes.
	Size  int64 `json:"size"`
	Block bool  `json:"block,omitempty"`
	// Format of the disk: qcow2 or raw.
	Format string `json:"format"`
	// Source is the image the volume was filled from (docker://…), if any.
	Source string `json:"source,omitempty"`
	// Digest is the cached base's digest, and Overlay whether the disk is
	// a qcow2 overlay on it.
	Digest  string `json:"digest,omitempty"`
	Overlay bool   `json:"overlay,omitempty"`
	// FromSnapshot and FromVolume are the content source, if any.
	FromSnapshot string    `json:"fromSnapshot,omitempty"`
	FromVolume   string    `json:"fromVolume,omitempty"`
	Created      time.Time `json:"created"`
	// Prealloc is the StorageClass preallocation, reused on expansion.
	Prealloc string `json:"prealloc,omitempty"`

	// StagingPath is set while the volume is staged.
	StagingPath string `json:"stagingPath,omitempty"`
	// Loop is the loop device of a staged Block volume.
	Loop string `json:"loop,omitempty"`
	// TargetPaths are where the volume is published.
	TargetPaths []string `json:"targetPaths,omitempty"`
}

// Snapshot is a snapshot of a volume on this node.
type Snapshot struct {
	ID           string    `json:"id"`
	Name         string    `json:"name"`
	SourceVolume string    `json:"sourceVolume"`
	Size         int64     `json:"size"`
	Created      time.Time `json:"created"`
	// Layered is set when the snapshot is a frozen layer of its volume
	// shared by hard links (volume.Keep), not a copy: a volume restored
	// from it is an overlay on that layer.
	Layered bool `json:"layered,omitempty"`
}

// Failure is an import that cannot succeed by retrying: CreateVolume with
// the same name and source answers it at once instead of importing again.
type Failure struct {
	// Name is the CreateVolume name.
	Name string `json:"name"`
	// Key identifies what was tried (source and checksum); a changed
	// source is tried afresh.
	Key string `json:"key"`
	// Code is the gRPC code returned.
	Code    uint32    `json:"code"`
	Message string    `json:"message"`
	At      time.Time `json:"at"`
}

type file struct {
	Volumes   []Volume   `json:"volumes"`
	Snapshots []Snapshot `json:"snapshots"`
	Failures  []Failure  `json:"failures,omitempty"`
}

// Store is the persisted state. Its methods are safe for concurrent use and
// return copies.
type Store struct {
	path string

	mu   sync.Mutex
	data file
}

// ErrNotFound is returned for an unknown ID or name.
var ErrNotFound = errors.New("not found")

// Open loads the state file at path, or starts empty when it does not
// exist.
func Open(path string) (*Store, error) {
	s := &Store{path: path}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read CSI state %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &s.data); err != nil {
		return nil, fmt.Errorf("decode CSI state %s: %w (move it aside to start empty; volumes on disk are kept)", path, err)
	}
	return s, nil
}

func (s *Store) save() error {
	b, err := json.MarshalIndent(s.data, "", "  ")
	if err != nil {
		return err
	}
	return atomicfile.Write(s.path, b, 0o600)
}

// Volumes lists the volumes, ordered by ID.
func (s *Store) Volumes() []Volume {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Volume, 0, len(s.data.Volumes))
	for _, v := range s.data.Volumes {
		out = append(out, cloneVolume(v))
	}
	slices.SortFunc(out, func(a, b Volume) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Volume returns the volume with id.
func (s *Store) Volume(id string) (Volume, error) {
	return s.findVolume(func(v *Volume) bool { return v.ID == id })
}

// VolumeByName returns the volume created under name.
func (s *Store) VolumeByName(name string) (Volume, error) {
	return s.findVolume(func(v *Volume) bool { return v.Name == name })
}

func (s *Store) findVolume(match func(*Volume) bool) (Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.data.Volumes {
		if match(&s.data.Volumes[i]) {
			return cloneVolume(s.data.Volumes[i]), nil
		}
	}
	return Volume{}, ErrNotFound
}

// PutVolume adds v or replaces the volume with its ID, and persists.
func (s *Store) PutVolume(v Volume) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	v = cloneVolume(v)
	i := slices.IndexFunc(s.data.Volumes, func(x Volume) bool { return x.ID == v.ID })
	if i < 0 {
		s.data.Volumes = append(s.data.Volumes, v)
	} else {
		s.data.Volumes[i] = v
	}
	return s.save()
}

// UpdateVolume changes the volume with id through fn and persists.
func (s *Store) UpdateVolume(id string, fn func(*Volume)) (Volume, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.data.Volumes, func(x Volume) bool { return x.ID == id })
	if i < 0 {
		return Volume{}, ErrNotFound
	}
	v := cloneVolume(s.data.Volumes[i])
	fn(&v)
	old := s.data.Volumes[i]
	s.data.Volumes[i] = v
	if err := s.save(); err != nil {
		s.data.Volumes[i] = old
		return Volume{}, err
	}
	return cloneVolume(v), nil
}

// DeleteVolume forgets the volume with id (no error when unknown).
func (s *Store) DeleteVolume(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data.Volumes = slices.DeleteFunc(s.data.Volumes, func(x Volume) bool { return x.ID == id })
	return s.save()
}

// Snapshots lists the snapshots, ordered by ID.
func (s *Store) Snapshots() []Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := slices.Clone(s.data.Snapshots)
	slices.SortFunc(out, func(a, b Snapshot) int { return strings.Compare(a.ID, b.ID) })
	return out
}

// Snapshot returns the snapshot with id.
func (s *Store) Snapshot(id string) (Snapshot, error) {
	return s.findSnapshot(func(x Snapshot) bool { return x.ID == id })
}

// SnapshotByName returns the snapshot created under name.
func (s *Store) SnapshotByName(name string) (Snapshot, error) {
	return s.findSnapshot(func(x Snapshot) bool { return x.Name == name })
}

func (s *Store) findSnapshot(match func(Snapshot) bool) (Snapshot, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.IndexFunc(s.data.Snapshots, match); i >= 0 {
		return s.data.Snapshots[i], nil
	}
	return Snapshot{}, ErrNotFound
}

// PutSnapshot adds or replaces a snapshot and persists.
func (s *Store) PutSnapshot(snap Snapshot) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := slices.IndexFunc(s.data.Snapshots, func(x Snapshot) bool { return x.ID == snap.ID })
	if i < 0 {
		s.data.Snapshots = append(s.data.Snapshots, snap)
	} else {
		s.data.Snapshots[i] = snap
	}
	return s.save()
}

// DeleteSnapshot forgets the snapshot with id (no error when unknown).
func (s *Store) DeleteSnapshot(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data.Snapshots = slices.DeleteFunc(s.data.Snapshots, func(x Snapshot) bool { return x.ID == id })
	return s.save()
}

// Failure returns the remembered failure of name.
func (s *Store) Failure(name string) (Failure, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := slices.IndexFunc(s.data.Failures, func(f Failure) bool { return f.Name == name }); i >= 0 && time.Since(s.data.Failures[i].At) < FailureTTL {
		return s.data.Failures[i], true
	}
	return Failure{}, false
}

// FailureTTL is how long a failure is remembered: a claim whose import
// failed for good gets one fresh attempt a day, and the file stays small.
const FailureTTL = 24 * time.Hour

// PutFailure remembers f for its name and persists.
func (s *Store) PutFailure(f Failure) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.data.Failures = slices.DeleteFunc(s.data.Failures, func(x Failure) bool {
		return x.Name == f.Name || time.Since(x.At) >= FailureTTL
	})
	s.data.Failures = append(s.data.Failures, f)
	return s.save()
}

// DeleteFailure forgets the failure of name.
func (s *Store) DeleteFailure(name string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := len(s.data.Failures)
	s.data.Failures = slices.DeleteFunc(s.data.Failures, func(x Failure) bool { return x.Name == name })
	if len(s.data.Failures) == n {
		return nil
	}
	return s.save()
}

func cloneVolume(v Volume) Volume {
	v.TargetPaths = slices.Clone(v.TargetPaths)
	return v
}
