package importer

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/podvirt/podvirt/csi/image"
)

// uploadPoll is how often a reader at the end of an upload's bytes looks for more.
const uploadPoll = 50 * time.Millisecond

// uploadSource is a file a user uploads to the node (podvirtctl image-upload),
// read while it grows up to its declared length. The uploader is not trusted:
// the bytes must match the claim's checksum and pass validation like any image.
type uploadSource struct {
	src   Source
	stall time.Duration // no new byte for this long fails the attempt (retried)
}

func (s *uploadSource) kind() string { return sourceUpload }

// resumes holds: the job is keyed by the checksum, and the file only grows.
func (s *uploadSource) resumes(*checkpoint) bool { return true }

// planUpload keys the import by the upload's checksum, which it needs.
func (c *Cache) planUpload(src Source) (*job, string, error) {
	if src.Checksum == "" {
		return nil, "", terminal(fmt.Errorf("upload %s has no checksum: podvirtctl image-upload writes it; upload again", src.URL))
	}
	if src.Upload.Length <= 0 {
		return nil, "", terminal(fmt.Errorf("upload %s has no length: podvirtctl image-upload writes it; upload again", src.URL))
	}
	sum, err := checksumDigest(src)
	if err != nil {
		return nil, "", err
	}
	// Never answered from the cache before the bytes arrive: having a
	// checksum is not having the image it names.
	return c.newJob(src, &uploadSource{src: src, stall: 4 * c.stall}, sum), "", nil
}

// stream copies the upload into w as its bytes arrive and checks the checksum.
func (s *uploadSource) stream(ctx context.Context, j *job, w *sparseWriter, cp *checkpoint) (string, error) {
	h := sha256.New()
	var off int64
	if cp != nil {
		var err error
		if h, err = restoreHash(cp.BlobHash); err != nil {
			return "", fmt.Errorf("resume %s: %w", s.src.URL, err)
		}
		off = cp.BlobOffset
	}
	f, err := os.Open(s.src.Upload.Path)
	if errors.Is(err, os.ErrNotExist) {
		f, err = s.waitForFile(ctx)
	}
	if err != nil {
		return "", err
	}
	defer f.Close()
	if _, err := f.Seek(off, io.SeekStart); err != nil {
		return "", fmt.Errorf("upload %s: %w", s.src.URL, err)
	}
	j.mu.Lock()
	j.done, j.total = off, s.src.Upload.Length
	j.mu.Unlock()
	fr := &followReader{ctx: ctx, f: f, left: s.src.Upload.Length - off, stall: s.stall, url: s.src.URL, at: off, length: s.src.Upload.Length}
	raw := j.counting(fr, h, off)
	if err := j.copyPlain(w, raw, nil); err != nil {
		if isBoundError(err) || isWriteError(err) || errors.Is(err, errUploadStalled) {
			return "", err
		}
		return "", fmt.Errorf("import %s: %w", s.src.URL, err)
	}
	digest := "sha256:" + fmt.Sprintf("%x", h.Sum(nil))
	if !strings.EqualFold(s.src.Checksum, digest) {
		return "", &image.Error{Reason: image.ReasonChecksum, File: s.src.URL,
			Detail: fmt.Sprintf("its sha256 is %s, the claim's checksum says %s", digest, s.src.Checksum),
			Hint:   "upload the file again with podvirtctl image-upload (the claim must be made for that file)"}
	}
	return digest, nil
}

// waitForFile waits for the upload's first byte to create its file.
func (s *uploadSource) waitForFile(ctx context.Context) (*os.File, error) {
	deadline := time.Now().Add(s.stall)
	for {
		f, err := os.Open(s.src.Upload.Path)
		if !errors.Is(err, os.ErrNotExist) {
			return f, err
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("%w: no byte of %s arrived in %s; run podvirtctl image-upload", errUploadStalled, s.src.URL, s.stall)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(uploadPoll):
		}
	}
}

var errUploadStalled = errors.New("the upload stalled")

// followReader reads a growing file up to left more bytes, waiting at its end
// for the uploader to append, for at most stall without progress.
type followReader struct {
	ctx        context.Context
	f          *os.File
	left       int64
	stall      time.Duration
	url        string
	at, length int64
}

func (r *followReader) Read(p []byte) (int, error) {
	if r.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.left {
		p = p[:r.left]
	}
	deadline := time.Now().Add(r.stall)
	for {
		n, err := r.f.Read(p)
		if n > 0 {
			r.left -= int64(n)
			r.at += int64(n)
			return n, nil
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return 0, err
		}
		if time.Now().After(deadline) {
			return 0, fmt.Errorf("%w: no byte of %s arrived for %s (at %d of %d bytes); run podvirtctl image-upload again to resume it",
				errUploadStalled, r.url, r.stall, r.at, r.length)
		}
		select {
		case <-r.ctx.Done():
			return 0, r.ctx.Err()
		case <-time.After(uploadPoll):
		}
	}
}
