package importer

import (
	"archive/tar"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/zstd"

	"github.com/podvirt/podvirt/csi/image"
)

// registrySource is a docker:// source: a containerDisk image, resolved on
// its mirrors, whose disk entry is streamed out of its layers.
type registrySource struct {
	src Source
	d   dockerRef
	res resolved
	tr  http.RoundTripper
}

func (s *registrySource) kind() string { return sourceRegistry }

// resumes holds when the checkpoint was taken on the same layers (by a driver that
// records which layer its disk came from).
func (s *registrySource) resumes(cp *checkpoint) bool {
	if cp.Selector == nil || len(cp.LayerDigests) != len(s.res.layers) || cp.Layer >= len(s.res.layers) {
		return false
	}
	for i, l := range s.res.layers {
		if cp.LayerDigests[i] != l.Digest {
			return false
		}
	}
	return true
}

// planRegistry resolves the digest on the mirrors. When no mirror answers but a tag was
// resolved before, the cached base is used (errUseCached with its digest) — unless a
// mirror refused the credentials.
func (c *Cache) planRegistry(ctx context.Context, src Source) (*job, string, error) {
	d, err := parseDocker(src)
	if err != nil {
		return nil, "", err
	}
	tr, err := c.baseTransport(src)
	if err != nil {
		return nil, "", err
	}
	res, err := c.resolveDocker(ctx, src, d, tr)
	if err != nil {
		c.mu.Lock()
		cached, ok := c.idx.Sources[sourceKey(src)]
		_, have := c.idx.Bases[cached]
		c.mu.Unlock()
		if ok && have && !IsTerminal(err) && !errors.Is(err, errAccessDenied) && ctx.Err() == nil {
			c.log.Warn("image cache: no mirror answers, using the base resolved before", "source", src.URL, "digest", cached, "err", err)
			return nil, cached, errUseCached
		}
		return nil, "", err
	}
	return c.newJob(src, &registrySource{src: src, d: d, res: res, tr: tr}, res.digest), res.digest, nil
}

// stream streams every layer of the image, writes the disk entry into w, and
// verifies each layer's digest. It returns the manifest digest.
func (s *registrySource) stream(ctx context.Context, j *job, w *sparseWriter, cp *checkpoint) (string, error) {
	sel := &image.DiskSelector{}
	entries, start := 0, 0
	j.mu.Lock()
	for _, l := range s.res.layers {
		j.total += l.Size
	}
	if cp != nil {
		start, entries = cp.Layer, cp.Entries
		if cp.Selector != nil {
			*sel = *cp.Selector
		}
		for _, l := range s.res.layers[:start] {
			j.done += l.Size
		}
		j.done += cp.BlobOffset
	}
	j.mu.Unlock()
	sel.Image = s.src.URL
	for li := start; li < len(s.res.layers); li++ {
		var resume *checkpoint
		if li == start {
			resume = cp
		}
		if resume == nil {
			if err := sel.Layer(li); err != nil {
				return "", err
			}
		}
		if err := s.streamLayer(ctx, j, li, w, sel, resume, &entries); err != nil {
			return "", err
		}
	}
	if err := sel.Done(len(s.res.layers), entries); err != nil {
		return "", err
	}
	j.diskName = s.src.URL + " " + sel.Disk
	return s.res.digest, nil
}

func isUncompressedLayer(mt string) bool {
	return mt == string(types.OCIUncompressedLayer) || mt == string(types.DockerUncompressedLayer) ||
		mt == string(types.OCIUncompressedRestrictedLayer)
}

func (s *registrySource) streamLayer(ctx context.Context, j *job, li int, w *sparseWriter, sel *image.DiskSelector, resume *checkpoint, entries *int) error {
	l := s.res.layers[li]
	h := sha256.New()
	var off int64
	if resume != nil {
		var err error
		if h, err = restoreHash(resume.BlobHash); err != nil {
			return fmt.Errorf("resume layer %s: %w", l.Digest, err)
		}
		off = resume.BlobOffset
	}
	fr := &failoverReader{ctx: ctx, open: j.c.blobOpener(s.src, s.d, l.Digest, l.Size, s.tr), mirrors: s.res.mirrors,
		health: j.c.health, stall: j.c.stall, offset: off, onSwitch: j.setMirror}
	defer fr.Close()
	raw := j.counting(fr, h, off)
	// stopReader stops a decompressor that reads raw in a goroutine of its own; raw (and
	// fr) are only looked at here after it.
	stopReader := func() {}
	fail := func(err error) error {
		stopReader()
		return s.layerError(j, fr, raw, l, err)
	}
	identity := isUncompressedLayer(l.MediaType)
	var stream io.Reader
	switch {
	case identity:
		stream = raw
	case l.MediaType == string(types.OCILayer) || l.MediaType == string(types.DockerLayer) || l.MediaType == string(types.DockerForeignLayer) ||
		l.MediaType == string(types.OCIRestrictedLayer):
		gz, err := newGzipReader(raw)
		if err != nil {
			return fail(err)
		}
		stopReader = sync.OnceFunc(func() { _ = gz.Close() })
		defer stopReader()
		stream = gz
	case l.MediaType == string(types.OCILayerZStd):
		zr, err := zstd.NewReader(raw, zstd.WithDecoderConcurrency(1))
		if err != nil {
			return fail(err)
		}
		defer zr.Close()
		stream = zr
	default:
		return &image.Error{Reason: image.ReasonUnsupported, File: s.src.URL,
			Detail: fmt.Sprintf("layer %s has media type %q", l.Digest, l.MediaType), Hint: "publish the containerDisk with tar, tar+gzip or tar+zstd layers"}
	}
	if resume != nil && resume.EntryRemaining > 0 {
		if err := s.copyIdentity(j, w, raw, raw, resume.EntryRemaining, resume.EntrySize, li, sel, *entries); err != nil {
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
		v, err := sel.Next(hdr)
		if err != nil {
			return err
		}
		if v.Restart {
			if err := j.restartOutput(w); err != nil {
				return err
			}
		}
		if !v.Disk {
			continue
		}
		switch {
		case v.Compression == image.None && identity:
			// The entry's bytes are the blob's bytes: checkpoints are possible. tr reads
			// them straight from raw, so raw's count stays the blob offset.
			err = s.copyIdentity(j, w, tr, raw, hdr.Size, hdr.Size, li, sel, *entries)
		default:
			err = decompress(ctx, w, tr, v.Compression)
		}
		if err != nil {
			return fail(err)
		}
	}
	// Whatever follows the tar's end marker still belongs to the blob and its digest.
	stopReader()
	if _, err := io.Copy(io.Discard, raw); err != nil {
		return fail(err)
	}
	return s.checkDigest(raw, l, fr)
}

func (s *registrySource) checkDigest(raw *countingReader, l layerInfo, fr *failoverReader) error {
	if got := "sha256:" + hex.EncodeToString(raw.h.Sum(nil)); got != l.Digest {
		return &image.Error{Reason: image.ReasonDigest, File: s.src.URL,
			Detail: fmt.Sprintf("layer %s arrived with digest %s (last mirror %s)", l.Digest, got, fr.Mirror()),
			Hint:   "the mirror serves corrupt or altered content; fix or remove it"}
	}
	return nil
}

// layerError tells a failed download (the mirrors' fault, maybe retryable) from a layer
// whose content is broken (a refusal).
// Content that does not unpack is first checked against its digest: an altered blob is the
// mirror's fault and is reported as such.
func (s *registrySource) layerError(j *job, fr *failoverReader, raw *countingReader, l layerInfo, err error) error {
	if fr.err != nil {
		return fmt.Errorf("import %s: layer %s: %w", s.src.URL, l.Digest, fr.err)
	}
	var ie *image.Error
	if errors.As(err, &ie) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if isWriteError(err) {
		return fmt.Errorf("import %s: write %s: %w", s.src.URL, j.dir, err)
	}
	if _, derr := io.Copy(io.Discard, raw); derr != nil {
		if fr.err != nil {
			return fmt.Errorf("import %s: layer %s: %w", s.src.URL, l.Digest, fr.err)
		}
	} else if derr := s.checkDigest(raw, l, fr); derr != nil {
		return derr
	}
	return &image.Error{Reason: image.ReasonCorrupt, File: s.src.URL,
		Detail: fmt.Sprintf("layer %s cannot be unpacked: %v", l.Digest, err), Hint: "rebuild and push the image again"}
}

// copyIdentity copies n bytes of a disk entry whose blob bytes are the output bytes,
// checkpointing as it goes so a crash resumes where the disk says it stopped.
func (s *registrySource) copyIdentity(j *job, w *sparseWriter, src io.Reader, raw *countingReader, n, entrySize int64, li int, sel *image.DiskSelector, entries int) error {
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
			cp := &checkpoint{Key: j.key, Layer: li, LayerDigests: s.layerDigests(), BlobOffset: raw.n, BlobHash: hashState(raw.h),
				OutOffset: w.off, EntryRemaining: n, EntrySize: entrySize, Selector: selectorState(sel), Entries: entries}
			if err := j.ckpt.offer(cp); err != nil {
				return &writeError{err}
			}
		}
		if err == io.EOF && n > 0 {
			err = io.ErrUnexpectedEOF
		}
		if err != nil && err != io.EOF {
			j.ckpt.final(&checkpoint{Key: j.key, Layer: li, LayerDigests: s.layerDigests(), BlobOffset: raw.n, BlobHash: hashState(raw.h),
				OutOffset: w.off, EntryRemaining: n, EntrySize: entrySize, Selector: selectorState(sel), Entries: entries})
			return err
		}
	}
	return nil
}

// selectorState is a copy of sel for a checkpoint.
func selectorState(sel *image.DiskSelector) *image.DiskSelector {
	c := *sel
	return &c
}

func (s *registrySource) layerDigests() []string {
	var ds []string
	for _, l := range s.res.layers {
		ds = append(ds, l.Digest)
	}
	return ds
}
