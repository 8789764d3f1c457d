package importer

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/klauspost/pgzip"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sys/unix"

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

// decompress writes the disk from r, decompressing .gz in-process (pgzip: inflating in a
// goroutine of its own, ahead of the writes) and .xz with xz(1), multi-threaded for
// multi-block files. Writes reach w in blocks of copyBlock bytes from the disk's start, so
// zero runs stay sparse. r is not read after decompress returns.
func decompress(ctx context.Context, w *sparseWriter, r io.Reader, comp image.Compression) error {
	switch comp {
	case image.None:
		return copyBlocks(writerOnly{w}, r)
	case image.Gzip:
		gz, err := newGzipReader(r)
		if err != nil {
			return err
		}
		err = copyBlocks(writerOnly{w}, gz)
		// Close waits for the inflating goroutine, the one reading r.
		if cerr := gz.Close(); err == nil && cerr != nil {
			err = cerr
		}
		return err
	case image.XZ:
		return unxz(ctx, writerOnly{w}, r)
	}
	return fmt.Errorf("unknown compression %q", comp)
}

// copyBlock is the size of the writes of a decompressed or unpacked disk.
const copyBlock = 1 << 20

// copyBlocks copies r to w in writes of copyBlock bytes (the last one shorter): a reader
// that hands out little at a time (an inflater, a pipe) does not make as many small
// writes, and an all-zero block is seen whole by the sparse writer.
func copyBlocks(w io.Writer, r io.Reader) error {
	buf := make([]byte, copyBlock)
	for {
		n := 0
		var err error
		for n < len(buf) && err == nil {
			var m int
			m, err = r.Read(buf[n:])
			n += m
		}
		if n > 0 {
			if _, werr := w.Write(buf[:n]); werr != nil {
				return werr
			}
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
	}
}

// Gzip decompression: pgzip inflates in a goroutine of its own into gzipBlocks blocks of
// gzipBlockSize ahead of the reader (the CRC in another), so reading and hashing the
// blob, inflating and writing the disk overlap; at most about 9 MiB per import. Deflate
// itself cannot be split among threads.
const (
	gzipBlockSize = 1 << 20
	gzipBlocks    = 8
)

// newGzipReader reads gzip from r, which it reads in chunks of up to 1 MiB (klauspost's
// inflater alone reads through a 4 KiB buffer: a hash update, a progress update and a
// socket read per 4 KiB). After the header, r is read by pgzip's goroutine until Close
// returns; Close does not close r.
func newGzipReader(r io.Reader) (*pgzip.Reader, error) {
	return pgzip.NewReaderN(bufio.NewReaderSize(r, 1<<20), gzipBlockSize, gzipBlocks)
}

// xz decompression bounds: xz refuses a file that needs more memory than xzMemlimit, and
// uses as many threads (at most GOMAXPROCS, the CPUs the driver may use) as fit in
// xzMemlimitThreads; a single-block file is decompressed by one thread whatever the limits.
const (
	xzMemlimit        = "1GiB"
	xzMemlimitThreads = "256MiB"
)

// unxz decompresses one .xz stream from r into w with xz(1). Both pipes are enlarged to
// 1 MiB (where the kernel allows), and xz's output is written in copyBlock writes.
func unxz(ctx context.Context, w io.Writer, r io.Reader) error {
	inR, inW, err := os.Pipe()
	if err != nil {
		return err
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return err
	}
	defer inW.Close()
	defer outR.Close()
	growPipe(inW)
	growPipe(outR)
	cmd := exec.CommandContext(ctx, "xz", "--decompress", "--stdout", "--single-stream",
		"--memlimit-decompress="+xzMemlimit, "--memlimit-mt-decompress="+xzMemlimitThreads,
		"--threads="+strconv.Itoa(runtime.GOMAXPROCS(0)))
	cmd.Stdin, cmd.Stdout = inR, outW
	var stderr strings.Builder
	cmd.Stderr = &stderr
	err = cmd.Start()
	inR.Close()
	outW.Close()
	if err != nil {
		if errors.Is(err, exec.ErrNotFound) {
			return fmt.Errorf("xz (Debian package xz-utils) is not installed, run `make deps`: %w", err)
		}
		return fmt.Errorf("xz: %w", err)
	}
	fed := make(chan error, 1)
	go func() {
		// xz stops reading at the end of the stream (--single-stream) or on an error and
		// exits: the write then fails with EPIPE, which is no error of the input's.
		buf := make([]byte, copyBlock)
		_, err := io.CopyBuffer(struct{ io.Writer }{inW}, struct{ io.Reader }{r}, buf)
		inW.Close()
		if errors.Is(err, syscall.EPIPE) {
			err = nil
		}
		fed <- err
	}()
	copyErr := copyBlocks(w, outR)
	// Stopped early (a write failed): xz's next write fails and it exits.
	outR.Close()
	waitErr := cmd.Wait()
	feedErr := <-fed
	switch {
	case copyErr != nil:
		return copyErr
	case ctx.Err() != nil:
		return ctx.Err()
	case feedErr != nil:
		return feedErr
	case waitErr != nil:
		return fmt.Errorf("xz: %w: %s", waitErr, strings.TrimSpace(stderr.String()))
	}
	return nil
}

// growPipe asks for a 1 MiB pipe buffer (the default is 64 KiB; 1 MiB is what an
// unprivileged process may ask for by default), so xz and this process hand data over
// in fewer, larger pieces. Failure only costs speed.
func growPipe(f *os.File) {
	if rc, err := f.SyscallConn(); err == nil {
		_ = rc.Control(func(fd uintptr) { _, _ = unix.FcntlInt(fd, unix.F_SETPIPE_SZ, 1<<20) })
	}
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
