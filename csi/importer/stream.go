package importer

import (
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/klauspost/compress/gzip"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/atomicfile"
)

// source is one kind of image source — a registry image (registrySource)
// or an HTTP(S) file (httpSource) — as a job streams it. What every source
// shares (the partial file, checkpoints, progress, validation, the cache)
// is the job's.
type source interface {
	// kind names the source type in metrics: "registry" or "http".
	kind() string
	// resumes reports whether checkpoint cp, written for the job's key,
	// still describes this source's content.
	resumes(cp *checkpoint) bool
	// stream writes the disk into w, from cp on when it is not nil,
	// reporting progress and offering checkpoints to j; it returns the
	// digest the base is cached under.
	stream(ctx context.Context, j *job, w *sparseWriter, cp *checkpoint) (string, error)
}

// job is one import in flight: source → partial file (hashed as it streams) → validated
// base. Everything is written under dir (the partial import's directory) until the base is
// renamed into place.
type job struct {
	c        *Cache
	key      string
	dir      string
	src      Source
	source   source
	diskName string // the disk's name in the source, for messages
	ckpt     *checkpointer

	// progress
	mu       sync.Mutex // guards the fields below and subs
	subs     map[int]func(Progress)
	nextSub  int
	done     int64 // blob bytes behind us (skipped on resume or read)
	total    int64
	fetched  int64 // bytes actually downloaded by this run
	mirror   string
	started  time.Time
	lastSent time.Time
}

func (j *job) subscribe(f func(Progress)) int {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.nextSub++
	if f != nil {
		j.subs[j.nextSub] = f
	}
	return j.nextSub
}

func (j *job) unsubscribe(id int) {
	j.mu.Lock()
	delete(j.subs, id)
	j.mu.Unlock()
}

// advance records n more blob bytes and reports progress at most every 100 ms.
func (j *job) advance(n int64, force bool) {
	j.mu.Lock()
	j.done += n
	j.fetched += n
	now := time.Now()
	if !force && now.Sub(j.lastSent) < 100*time.Millisecond {
		j.mu.Unlock()
		return
	}
	j.lastSent = now
	p := Progress{Bytes: j.done, Total: j.total, Mirror: j.mirror}
	if el := now.Sub(j.started).Seconds(); el > 0 {
		p.Rate = float64(j.fetched) / el
	}
	subs := make([]func(Progress), 0, len(j.subs))
	for _, f := range j.subs {
		subs = append(subs, f)
	}
	j.mu.Unlock()
	for _, f := range subs {
		f(p)
	}
}

func (j *job) setMirror(m string) {
	j.mu.Lock()
	j.mirror = m
	j.mu.Unlock()
}

// countingReader feeds the blob hash, the byte counter and progress with every byte read.
type countingReader struct {
	r     io.Reader
	h     hash.Hash
	n     int64
	j     *job
	bytes prometheus.Counter
}

func (j *job) counting(r io.Reader, h hash.Hash, off int64) *countingReader {
	return &countingReader{r: r, h: h, n: off, j: j, bytes: j.c.metrics.bytes.WithLabelValues(j.source.kind())}
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	if n > 0 {
		c.h.Write(p[:n])
		c.n += int64(n)
		c.bytes.Add(float64(n))
		c.j.advance(int64(n), false)
	}
	return n, err
}

// run performs the import. On a refusal the partial directory is removed; on a retryable
// failure it stays only when it holds a checkpoint to resume from.
func (j *job) run(ctx context.Context) (Base, error) {
	if err := os.MkdirAll(j.dir, 0o700); err != nil {
		return Base{}, err
	}
	base, err := j.runWithin(ctx)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(j.dir, partialState)); IsTerminal(err) || serr != nil || errors.Is(err, errSourceChanged) || isBoundError(err) {
			_ = os.RemoveAll(j.dir)
		}
		return Base{}, err
	}
	return base, nil
}

var errImportTimeout = errors.New("import time limit")

// runWithin is runInto within the node's time limit for one import.
func (j *job) runWithin(ctx context.Context) (Base, error) {
	if j.c.timeout <= 0 {
		return j.runInto(ctx)
	}
	ctx, cancel := context.WithTimeoutCause(ctx, j.c.timeout, errImportTimeout)
	defer cancel()
	base, err := j.runInto(ctx)
	if err != nil && errors.Is(context.Cause(ctx), errImportTimeout) {
		err = &image.Error{Reason: image.ReasonTimeout, File: j.src.URL,
			Detail: fmt.Sprintf("the import took longer than the node's limit of %s and was stopped (%v)", j.c.timeout, err),
			Hint:   "if the image is really this large or its server this slow, raise the CSI driver's --import-timeout (chart csi.importTimeout)"}
	}
	return base, err
}

func (j *job) runInto(ctx context.Context) (Base, error) {
	dataPath := filepath.Join(j.dir, partialData)
	out, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return Base{}, err
	}
	defer out.Close()
	cp, _ := loadCheckpoint(j.dir)
	if cp != nil && (cp.Key != j.key || !j.source.resumes(cp)) {
		cp = nil
	}
	if cp == nil {
		_ = os.Remove(filepath.Join(j.dir, partialState))
	}
	w := &sparseWriter{f: out, image: j.src.URL, space: j.c.spaceGuard()}
	w.bound, w.declared = j.c.bound(j.src)
	if cp != nil {
		w.off, w.headerChecked = cp.OutOffset, cp.OutOffset >= image.HeaderSize
	}
	if err := out.Truncate(w.off); err != nil {
		return Base{}, err
	}
	if w.space != nil {
		j.mu.Lock()
		need := j.total - j.done // what a plain source still sends; compressed ones say nothing
		j.mu.Unlock()
		if err := w.space.check(max(need, 0)); err != nil {
			return Base{}, err
		}
	}
	j.ckpt = newCheckpointer(j.dir, out)
	defer j.ckpt.stop()
	digest, err := j.source.stream(ctx, j, w, cp)
	if err != nil {
		return Base{}, err
	}
	j.ckpt.stop()
	if err := w.finish(); err != nil {
		return Base{}, err
	}
	if err := out.Sync(); err != nil {
		return Base{}, err
	}
	info, err := image.Validate(ctx, dataPath, j.diskName, j.c.limits)
	if err != nil {
		return Base{}, err
	}
	final := j.c.basePath(digest, info.Format)
	if err := os.Chmod(dataPath, 0o444); err != nil {
		return Base{}, err
	}
	if err := os.Rename(dataPath, final); err != nil {
		return Base{}, err
	}
	if err := atomicfile.SyncDir(filepath.Dir(final)); err != nil {
		return Base{}, err
	}
	_ = os.RemoveAll(j.dir)
	return Base{Digest: digest, Path: final, Format: info.Format, VirtualSize: info.VirtualSize, Size: w.off}, nil
}

// restartOutput drops what the import wrote and the checkpoint describing
// it: the disk streamed so far is no longer the image's.
func (j *job) restartOutput(w *sparseWriter) error {
	j.ckpt.stop()
	if err := os.Remove(filepath.Join(j.dir, partialState)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return &writeError{err}
	}
	if err := w.restart(); err != nil {
		return &writeError{err}
	}
	j.ckpt = newCheckpointer(j.dir, w.f)
	return nil
}

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func isWriteError(err error) bool {
	var we *writeError
	return errors.As(err, &we)
}

// decompress writes the disk from r, decompressing .gz in-process and .xz with xz(1).
func decompress(ctx context.Context, w *sparseWriter, r io.Reader, comp image.Compression) error {
	switch comp {
	case image.None:
		_, err := io.CopyBuffer(writerOnly{w}, r, make([]byte, 1<<20))
		return err
	case image.Gzip:
		gz, err := gzip.NewReader(r)
		if err != nil {
			return err
		}
		defer gz.Close()
		_, err = io.CopyBuffer(writerOnly{w}, gz, make([]byte, 1<<20))
		return err
	case image.XZ:
		cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--memlimit-decompress=1GiB", "--single-stream")
		cmd.Stdin = r
		out := &lastWriteError{w: writerOnly{w}}
		cmd.Stdout = out
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			if out.err != nil { // xz died of the closed pipe: the write's error is the story
				return out.err
			}
			if errors.Is(err, exec.ErrNotFound) {
				return fmt.Errorf("xz (Debian package xz-utils) is not installed, run `make deps`: %w", err)
			}
			return fmt.Errorf("xz: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	return fmt.Errorf("unknown compression %q", comp)
}

// lastWriteError remembers why writing failed, which a subprocess writing
// into it only sees as a broken pipe.
type lastWriteError struct {
	w   io.Writer
	err error
}

func (l *lastWriteError) Write(p []byte) (int, error) {
	n, err := l.w.Write(p)
	if err != nil {
		l.err = err
	}
	return n, err
}

// writerOnly marks write failures as the node's, not the image's, except a
// refusal of what the image would write (its bound, its header).
type writerOnly struct{ w *sparseWriter }

func (o writerOnly) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err != nil && !isBoundError(err) {
		return n, &writeError{err}
	}
	return n, err
}

// isBoundError: the import stopped at one of its bounds (output size, cache
// room, free-space reserve) or at a header declaring too much.
func isBoundError(err error) bool {
	var ie *image.Error
	var re *roomError
	var se *spaceError
	return errors.As(err, &ie) || errors.As(err, &re) || errors.As(err, &se) || IsLargerThanClaim(err)
}
