package importer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/atomicfile"
)

// job is one import in flight: source → partial file (hashed as it streams) → validated
// base. Everything is written under dir (the partial import's directory) until the base is
// renamed into place.
type job struct {
	c         *Cache
	key       string
	dir       string
	src       Source
	kind      string // "registry" | "http"
	diskName  string // the disk's name in the source, for messages
	ckpt      *checkpointer
	validator string // HTTP: see rangeGET

	// registry
	d   dockerRef
	res resolved
	tr  http.RoundTripper

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
	return &countingReader{r: r, h: h, n: off, j: j, bytes: j.c.metrics.bytes.WithLabelValues(j.kind)}
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
	base, err := j.runInto(ctx)
	if err != nil {
		if _, serr := os.Stat(filepath.Join(j.dir, partialState)); IsTerminal(err) || serr != nil || errors.Is(err, errSourceChanged) {
			_ = os.RemoveAll(j.dir)
		}
		return Base{}, err
	}
	return base, nil
}

func (j *job) runInto(ctx context.Context) (Base, error) {
	dataPath := filepath.Join(j.dir, partialData)
	out, err := os.OpenFile(dataPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return Base{}, err
	}
	defer out.Close()
	cp, _ := loadCheckpoint(j.dir)
	if cp != nil && !j.matches(cp) {
		cp = nil
	}
	if cp == nil {
		_ = os.Remove(filepath.Join(j.dir, partialState))
	}
	w := &sparseWriter{f: out}
	if cp != nil {
		w.off = cp.OutOffset
	}
	if err := out.Truncate(w.off); err != nil {
		return Base{}, err
	}
	j.ckpt = newCheckpointer(j.dir, out)
	defer j.ckpt.stop()
	var digest string
	if j.kind == "registry" {
		digest, err = j.streamRegistry(ctx, w, cp)
	} else {
		digest, err = j.streamHTTP(ctx, w, cp)
	}
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

func (j *job) matches(cp *checkpoint) bool {
	if cp.Key != j.key {
		return false
	}
	if j.kind != "registry" {
		return true
	}
	if len(cp.LayerDigests) != len(j.res.layers) || cp.Layer >= len(j.res.layers) {
		return false
	}
	for i, l := range j.res.layers {
		if cp.LayerDigests[i] != l.Digest {
			return false
		}
	}
	return true
}

func (j *job) layerDigests() []string {
	var ds []string
	for _, l := range j.res.layers {
		ds = append(ds, l.Digest)
	}
	return ds
}

// streamRegistry streams every layer of the image, writes the disk entry into w, and
// verifies each layer's digest. It returns the manifest digest.
func (j *job) streamRegistry(ctx context.Context, w *sparseWriter, cp *checkpoint) (string, error) {
	sel := &image.DiskSelector{Image: j.src.URL}
	entries, start := 0, 0
	j.mu.Lock()
	for _, l := range j.res.layers {
		j.total += l.Size
	}
	if cp != nil {
		start, entries, sel.Disk = cp.Layer, cp.Entries, cp.EntryName
		for _, l := range j.res.layers[:start] {
			j.done += l.Size
		}
		j.done += cp.BlobOffset
	}
	j.mu.Unlock()
	for li := start; li < len(j.res.layers); li++ {
		var resume *checkpoint
		if li == start {
			resume = cp
		}
		if err := j.streamLayer(ctx, li, w, sel, resume, &entries); err != nil {
			return "", err
		}
	}
	if sel.Disk == "" {
		return "", sel.NoDisk(len(j.res.layers), entries)
	}
	j.diskName = j.src.URL + " " + sel.Disk
	return j.res.digest, nil
}

func isUncompressedLayer(mt string) bool {
	return mt == string(types.OCIUncompressedLayer) || mt == string(types.DockerUncompressedLayer) ||
		mt == string(types.OCIUncompressedRestrictedLayer)
}

func (j *job) streamLayer(ctx context.Context, li int, w *sparseWriter, sel *image.DiskSelector, resume *checkpoint, entries *int) error {
	l := j.res.layers[li]
	h := sha256.New()
	var off int64
	if resume != nil {
		var err error
		if h, err = restoreHash(resume.BlobHash); err != nil {
			return fmt.Errorf("resume layer %s: %w", l.Digest, err)
		}
		off = resume.BlobOffset
	}
	fr := &failoverReader{ctx: ctx, open: j.c.blobOpener(j.src, j.d, l.Digest, l.Size, j.tr), mirrors: j.res.mirrors,
		health: j.c.health, stall: j.c.stall, offset: off, onSwitch: j.setMirror}
	defer fr.Close()
	raw := j.counting(fr, h, off)
	fail := func(err error) error { return j.layerError(fr, raw, l, err) }
	identity := isUncompressedLayer(l.MediaType)
	var stream io.Reader
	switch {
	case identity:
		stream = raw
	case l.MediaType == string(types.OCILayer) || l.MediaType == string(types.DockerLayer) || l.MediaType == string(types.DockerForeignLayer) ||
		l.MediaType == string(types.OCIRestrictedLayer):
		gz, err := gzip.NewReader(raw)
		if err != nil {
			return fail(err)
		}
		defer gz.Close()
		stream = gz
	case l.MediaType == string(types.OCILayerZStd):
		zr, err := zstd.NewReader(raw, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return fail(err)
		}
		defer zr.Close()
		stream = zr
	default:
		return &image.Error{Reason: image.ReasonUnsupported, File: j.src.URL,
			Detail: fmt.Sprintf("layer %s has media type %q", l.Digest, l.MediaType), Hint: "publish the containerDisk with tar, tar+gzip or tar+zstd layers"}
	}
	if resume != nil && resume.EntryRemaining > 0 {
		if err := j.copyIdentity(w, raw, raw, resume.EntryRemaining, resume.EntrySize, li, sel, *entries); err != nil {
			return fail(err)
		}
		// The rest of the entry's last 512-byte block is padding.
		if pad := (512 - resume.EntrySize%512) % 512; pad > 0 {
			if _, err := io.CopyN(io.Discard, raw, pad); err != nil {
				return fail(err)
			}
		}
	}
	tr := tar.NewReader(stream)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return fail(err)
		}
		*entries++
		isDisk, comp, err := sel.Next(hdr)
		if err != nil {
			return err
		}
		if !isDisk {
			continue
		}
		switch {
		case comp == image.None && identity:
			// The entry's bytes are the blob's bytes: checkpoints are possible. tr reads
			// them straight from raw, so raw's count stays the blob offset.
			err = j.copyIdentity(w, tr, raw, hdr.Size, hdr.Size, li, sel, *entries)
		default:
			err = j.decompress(ctx, w, tr, comp)
		}
		if err != nil {
			return fail(err)
		}
	}
	// Whatever follows the tar's end marker still belongs to the blob and its digest.
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fail(err)
	}
	return j.checkDigest(raw, l, fr)
}

func (j *job) checkDigest(raw *countingReader, l layerInfo, fr *failoverReader) error {
	if got := "sha256:" + hex.EncodeToString(raw.h.Sum(nil)); got != l.Digest {
		return &image.Error{Reason: image.ReasonDigest, File: j.src.URL,
			Detail: fmt.Sprintf("layer %s arrived with digest %s (last mirror %s)", l.Digest, got, fr.Mirror()),
			Hint:   "the mirror serves corrupt or altered content; fix or remove it"}
	}
	return nil
}

// layerError tells a failed download (the mirrors' fault, maybe retryable) from a layer
// whose content is broken (a refusal).
// Content that does not unpack is first checked against its digest: an altered blob is the
// mirror's fault and is reported as such.
func (j *job) layerError(fr *failoverReader, raw *countingReader, l layerInfo, err error) error {
	if fr.err != nil {
		return fmt.Errorf("import %s: layer %s: %w", j.src.URL, l.Digest, fr.err)
	}
	var ie *image.Error
	if errors.As(err, &ie) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if isWriteError(err) {
		return fmt.Errorf("import %s: write %s: %w", j.src.URL, j.dir, err)
	}
	if _, derr := io.Copy(io.Discard, raw); derr != nil {
		if fr.err != nil {
			return fmt.Errorf("import %s: layer %s: %w", j.src.URL, l.Digest, fr.err)
		}
	} else if derr := j.checkDigest(raw, l, fr); derr != nil {
		return derr
	}
	return &image.Error{Reason: image.ReasonCorrupt, File: j.src.URL,
		Detail: fmt.Sprintf("layer %s cannot be unpacked: %v", l.Digest, err), Hint: "rebuild and push the image again"}
}

type writeError struct{ err error }

func (e *writeError) Error() string { return e.err.Error() }
func (e *writeError) Unwrap() error { return e.err }

func isWriteError(err error) bool {
	var we *writeError
	return errors.As(err, &we)
}

// copyIdentity copies n bytes of a disk entry whose blob bytes are the output bytes,
// checkpointing as it goes so a crash resumes where the disk says it stopped.
func (j *job) copyIdentity(w *sparseWriter, src io.Reader, raw *countingReader, n, entrySize int64, li int, sel *image.DiskSelector, entries int) error {
	buf := make([]byte, 1<<20)
	since := int64(0)
	for n > 0 {
		m, err := src.Read(buf[:min(int64(len(buf)), n)])
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return &writeError{werr}
			}
			n -= int64(m)
			since += int64(m)
		}
		if since >= j.c.ckptSize && n > 0 {
			since = 0
			cp := &checkpoint{Key: j.key, Layer: li, LayerDigests: j.layerDigests(), BlobOffset: raw.n, BlobHash: hashState(raw.h),
				OutOffset: w.off, EntryRemaining: n, EntrySize: entrySize, EntryName: sel.Disk, Entries: entries}
			if err := j.ckpt.offer(cp); err != nil {
				return &writeError{err}
			}
		}
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			j.ckpt.final(&checkpoint{Key: j.key, Layer: li, LayerDigests: j.layerDigests(), BlobOffset: raw.n, BlobHash: hashState(raw.h),
				OutOffset: w.off, EntryRemaining: n, EntrySize: entrySize, EntryName: sel.Disk, Entries: entries})
			return err
		}
	}
	return nil
}

// decompress writes the disk from r, decompressing .gz in-process and .xz with xz(1).
func (j *job) decompress(ctx context.Context, w *sparseWriter, r io.Reader, comp image.Compression) error {
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
		cmd.Stdout = writerOnly{w}
		var stderr strings.Builder
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil {
			if errors.Is(err, exec.ErrNotFound) {
				return fmt.Errorf("xz (Debian package xz-utils) is not installed, run `make deps`: %w", err)
			}
			return fmt.Errorf("xz: %w: %s", err, strings.TrimSpace(stderr.String()))
		}
		return nil
	}
	return fmt.Errorf("unknown compression %q", comp)
}

// writerOnly marks write failures as the node's, not the image's.
type writerOnly struct{ w *sparseWriter }

func (o writerOnly) Write(p []byte) (int, error) {
	n, err := o.w.Write(p)
	if err != nil {
		return n, &writeError{err}
	}
	return n, nil
}

// streamHTTP downloads an http(s) source into w (decompressing .gz/.xz), checks its
// checksum, and returns the sha256 of the downloaded bytes.
func (j *job) streamHTTP(ctx context.Context, w *sparseWriter, cp *checkpoint) (string, error) {
	tr, err := baseTransport(j.src)
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: tr}
	h := sha256.New()
	var off int64
	if cp != nil {
		if h, err = restoreHash(cp.BlobHash); err != nil {
			return "", fmt.Errorf("resume %s: %w", j.src.URL, err)
		}
		off = cp.BlobOffset
		j.validator = cp.Validator
	}
	j.mu.Lock()
	j.done = off
	j.mu.Unlock()
	fr := &failoverReader{ctx: ctx, mirrors: []string{j.src.URL}, health: j.c.health, stall: j.c.stall, offset: off, onSwitch: j.setMirror,
		open: func(ctx context.Context, url string, offset int64) (io.ReadCloser, int64, error) {
			body, total, err := rangeGET(ctx, client, url, offset, -1, &j.validator)
			if total > 0 {
				j.mu.Lock()
				j.total = total
				j.mu.Unlock()
			}
			return body, total, err
		}}
	defer fr.Close()
	raw := j.counting(fr, h, off)
	comp := image.None
	name := path.Base(strings.SplitN(strings.SplitN(j.src.URL, "?", 2)[0], "#", 2)[0])
	switch {
	case strings.HasSuffix(name, ".gz"):
		comp = image.Gzip
	case strings.HasSuffix(name, ".xz"):
		comp = image.XZ
	}
	if comp == image.None {
		err = j.copyHTTPIdentity(w, raw)
	} else {
		err = j.decompress(ctx, w, raw, comp)
		if err == nil {
			_, err = io.Copy(io.Discard, raw)
		}
	}
	if err != nil {
		if fr.err != nil {
			return "", fmt.Errorf("import %s: %w", j.src.URL, fr.err)
		}
		if isWriteError(err) || ctx.Err() != nil {
			return "", fmt.Errorf("import %s: %w", j.src.URL, err)
		}
		return "", &image.Error{Reason: image.ReasonCorrupt, File: j.src.URL, Detail: fmt.Sprintf("cannot decompress it: %v", err),
			Hint: "check that the file's extension matches its compression"}
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if j.src.Checksum != "" && !strings.EqualFold(j.src.Checksum, digest) {
		return "", &image.Error{Reason: image.ReasonChecksum, File: j.src.URL,
			Detail: fmt.Sprintf("its sha256 is %s, the source's checksum says %s", digest, j.src.Checksum),
			Hint:   "fix the checksum, or the file on the server"}
	}
	return digest, nil
}

func (j *job) copyHTTPIdentity(w *sparseWriter, raw *countingReader) error {
	buf := make([]byte, 1<<20)
	since := int64(0)
	for {
		m, err := raw.Read(buf)
		if m > 0 {
			if _, werr := w.Write(buf[:m]); werr != nil {
				return &writeError{werr}
			}
			since += int64(m)
		}
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			j.ckpt.final(&checkpoint{Key: j.key, BlobOffset: raw.n, BlobHash: hashState(raw.h), OutOffset: w.off, Validator: j.validator})
			return err
		}
		if since >= j.c.ckptSize {
			since = 0
			cp := &checkpoint{Key: j.key, BlobOffset: raw.n, BlobHash: hashState(raw.h), OutOffset: w.off, Validator: j.validator}
			if err := j.ckpt.offer(cp); err != nil {
				return &writeError{err}
			}
		}
	}
}
