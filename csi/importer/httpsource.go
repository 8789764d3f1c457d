package importer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path"
	"strings"

	"github.com/podvirt/podvirt/csi/image"
)

// httpSource is an http(s):// source: one file, maybe compressed (.gz,
// .xz), resumed with Range requests while the server's validator (ETag or
// Last-Modified) stays the same.
type httpSource struct {
	src       Source
	validator string // see rangeGET
}

func (s *httpSource) kind() string { return sourceHTTP }

// resumes always holds: the validator, kept in the checkpoint, makes the
// server refuse a range of a changed file.
func (s *httpSource) resumes(*checkpoint) bool { return true }

// planHTTP keys the import by the source's checksum when it has one (the digest is then
// known before downloading), else by its URL.
func (c *Cache) planHTTP(src Source) (*job, string, error) {
	if src.Checksum != "" {
		sum, err := checksumDigest(src)
		if err != nil {
			return nil, "", err
		}
		return c.newJob(src, &httpSource{src: src}, sum), sum, nil
	}
	c.mu.Lock()
	digest := c.idx.Sources[sourceKey(src)]
	c.mu.Unlock()
	return c.newJob(src, &httpSource{src: src}, "url:"+sourceKey(src)), digest, nil
}

// checksumDigest is src's checksum as a digest, checked.
func checksumDigest(src Source) (string, error) {
	sum := strings.ToLower(src.Checksum)
	hexPart, ok := strings.CutPrefix(sum, "sha256:")
	if b, err := hex.DecodeString(hexPart); !ok || err != nil || len(b) != sha256.Size {
		return "", terminal(fmt.Errorf("checksum %q of %s is not sha256:<64 hex digits>; fix the source's checksum", src.Checksum, src.URL))
	}
	return sum, nil
}

// stream downloads an http(s) source into w (decompressing .gz/.xz), checks its
// checksum, and returns the sha256 of the downloaded bytes.
func (s *httpSource) stream(ctx context.Context, j *job, w *sparseWriter, cp *checkpoint) (string, error) {
	tr, err := j.c.baseTransport(s.src)
	if err != nil {
		return "", err
	}
	client := &http.Client{Transport: tr}
	h := sha256.New()
	var off int64
	if cp != nil {
		if h, err = restoreHash(cp.BlobHash); err != nil {
			return "", fmt.Errorf("resume %s: %w", s.src.URL, err)
		}
		off = cp.BlobOffset
		s.validator = cp.Validator
	}
	j.mu.Lock()
	j.done = off
	j.mu.Unlock()
	fr := &failoverReader{ctx: ctx, mirrors: []string{s.src.URL}, health: j.c.health, stall: j.c.stall, offset: off, onSwitch: j.setMirror,
		open: func(ctx context.Context, url string, offset int64) (io.ReadCloser, int64, error) {
			body, total, err := rangeGET(ctx, client, url, offset, -1, &s.validator)
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
	name := path.Base(strings.SplitN(strings.SplitN(s.src.URL, "?", 2)[0], "#", 2)[0])
	switch {
	case strings.HasSuffix(name, ".gz"):
		comp = image.Gzip
	case strings.HasSuffix(name, ".xz"):
		comp = image.XZ
	}
	if comp == image.None {
		err = j.copyPlain(w, raw, &s.validator)
	} else {
		err = decompress(ctx, w, raw, comp)
		if err == nil {
			_, err = io.Copy(io.Discard, raw)
		}
	}
	if err != nil {
		if fr.err != nil {
			return "", fmt.Errorf("import %s: %w", s.src.URL, fr.err)
		}
		if isBoundError(err) {
			return "", err
		}
		if isWriteError(err) || ctx.Err() != nil {
			return "", fmt.Errorf("import %s: %w", s.src.URL, err)
		}
		return "", &image.Error{Reason: image.ReasonCorrupt, File: s.src.URL, Detail: fmt.Sprintf("cannot decompress it: %v", err),
			Hint: "check that the file's extension matches its compression"}
	}
	digest := "sha256:" + hex.EncodeToString(h.Sum(nil))
	if s.src.Checksum != "" && !strings.EqualFold(s.src.Checksum, digest) {
		return "", &image.Error{Reason: image.ReasonChecksum, File: s.src.URL,
			Detail: fmt.Sprintf("its sha256 is %s, the source's checksum says %s", digest, s.src.Checksum),
			Hint:   "fix the checksum, or the file on the server"}
	}
	return digest, nil
}

// copyPlain copies raw into w unchanged, offering a checkpoint every
// ckptSize bytes and when raw fails. Each checkpoint keeps the source's
// validator as it is then (nil: none): an HTTP source learns it from its
// first answer, after the copy began.
func (j *job) copyPlain(w *sparseWriter, raw *countingReader, validator *string) error {
	current := func() string {
		if validator == nil {
			return ""
		}
		return *validator
	}
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
			j.ckpt.final(&checkpoint{Key: j.key, BlobOffset: raw.n, BlobHash: hashState(raw.h), OutOffset: w.off, Validator: current()})
			return err
		}
		if since >= j.c.ckptSize {
			since = 0
			cp := &checkpoint{Key: j.key, BlobOffset: raw.n, BlobHash: hashState(raw.h), OutOffset: w.off, Validator: current()}
			if err := j.ckpt.offer(cp); err != nil {
				return &writeError{err}
			}
		}
	}
}
