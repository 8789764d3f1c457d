package importer

import (
	"crypto/sha256"
	"encoding"
	"encoding/json"
	"fmt"
	"hash"
	"os"
	"path/filepath"
	"sync"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/atomicfile"
)

// checkpoint is what a crashed import needs to resume: the output file is durable up to
// OutOffset, and the blob being read had produced BlobOffset bytes with hash state
// BlobHash. It is only written while the bytes of the blob map one to one onto the output
// (an uncompressed layer's disk entry, or a plain HTTP file): a decompressor's state cannot
// be saved, so compressed imports are verified from the start again instead.
type checkpoint struct {
	Key            string // the import this belongs to
	Layer          int    // index of the layer (0 for HTTP)
	LayerDigests   []string
	BlobOffset     int64
	BlobHash       []byte // sha256 state (encoding.BinaryMarshaler)
	OutOffset      int64
	EntryRemaining int64 // bytes of the disk entry still to copy (registry only)
	EntrySize      int64 // the disk entry's size, for its tar padding
	// Selector is where the layers' disk selection stood (registry only).
	Selector  *image.DiskSelector `json:",omitempty"`
	Entries   int                 // tar entries seen so far
	Validator string              // HTTP: the file's ETag or Last-Modified, sent as If-Range on resume
}

const (
	partialData  = "data"
	partialState = "state.json"
)

func loadCheckpoint(dir string) (*checkpoint, error) {
	b, err := os.ReadFile(filepath.Join(dir, partialState))
	if err != nil {
		return nil, err
	}
	var cp checkpoint
	if err := json.Unmarshal(b, &cp); err != nil {
		return nil, fmt.Errorf("partial import state %s: %w", dir, err)
	}
	return &cp, nil
}

// save makes out durable and then records cp, in that order, so the state never claims
// bytes the disk does not hold.
func (cp *checkpoint) save(dir string, out *os.File) error {
	if err := out.Sync(); err != nil {
		return err
	}
	b, err := json.Marshal(cp)
	if err != nil {
		return err
	}
	return atomicfile.Write(filepath.Join(dir, partialState), b, 0o600)
}

// checkpointer makes checkpoints durable in the background, so the stream never waits for
// an fsync: a checkpoint is offered with the offsets and hash state captured at that
// moment, and recorded only after the data file is synced (which covers every byte written
// before the offer). While one is being written, newer offers are dropped.
type checkpointer struct {
	dir  string
	out  *os.File
	ch   chan *checkpoint
	done chan struct{}
	err  error // first failure
	mu   sync.Mutex
	once sync.Once
}

func newCheckpointer(dir string, out *os.File) *checkpointer {
	k := &checkpointer{dir: dir, out: out, ch: make(chan *checkpoint), done: make(chan struct{})}
	go func() {
		defer close(k.done)
		for cp := range k.ch {
			if err := cp.save(k.dir, k.out); err != nil {
				k.mu.Lock()
				if k.err == nil {
					k.err = err
				}
				k.mu.Unlock()
			}
		}
	}()
	return k
}

// offer hands cp to the writer unless it is busy; it reports an earlier failure.
func (k *checkpointer) offer(cp *checkpoint) error {
	k.mu.Lock()
	err := k.err
	k.mu.Unlock()
	if err != nil {
		return err
	}
	select {
	case k.ch <- cp:
	default:
	}
	return nil
}

// stop waits for the checkpoint in flight; later offers are dropped.
func (k *checkpointer) stop() {
	k.once.Do(func() { close(k.ch) })
	<-k.done
}

// final records cp synchronously after the one in flight: where a stream that failed
// (not crashed) really stopped, so the next attempt resumes from exactly there.
func (k *checkpointer) final(cp *checkpoint) {
	k.stop()
	if k.err == nil {
		k.err = cp.save(k.dir, k.out)
	}
}

func hashState(h hash.Hash) []byte {
	b, err := h.(encoding.BinaryMarshaler).MarshalBinary()
	if err != nil {
		return nil
	}
	return b
}

func restoreHash(state []byte) (hash.Hash, error) {
	h := sha256.New()
	if err := h.(encoding.BinaryUnmarshaler).UnmarshalBinary(state); err != nil {
		return nil, err
	}
	return h, nil
}
