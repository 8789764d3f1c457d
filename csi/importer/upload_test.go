package importer

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/csi/image"
)

// uploadOf is an upload source of length bytes arriving at path.
func uploadOf(path, checksum string, length int64) Source {
	return Source{URL: "upload://ns/claim", Checksum: checksum, Upload: &Upload{Path: path, Length: length}}
}

// TestUploadFollowsTheFile: an upload is imported while it arrives: the
// import reads the first half, waits at its end, and goes on when the rest
// is appended; the base is the file, cached under its checksum.
func TestUploadFollowsTheFile(t *testing.T) {
	dir := t.TempDir()
	disk := makeQCOW2(t, dir, "disk.qcow2", "64M")
	data, err := os.ReadFile(disk)
	if err != nil {
		t.Fatal(err)
	}
	sum := fileSHA256(t, disk)
	part := filepath.Join(dir, "upload", "disk.part")
	if err := os.MkdirAll(filepath.Dir(part), 0o700); err != nil {
		t.Fatal(err)
	}
	half := len(data) / 2
	if err := os.WriteFile(part, data[:half], 0o600); err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, filepath.Join(dir, "cache"), 0, Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	readHalf := make(chan struct{})
	var once bool
	progress := func(p Progress) {
		if p.Bytes >= int64(half) && !once {
			once = true
			close(readHalf)
		}
	}
	go func() {
		select {
		case <-readHalf:
		case <-ctx.Done():
			return
		}
		f, err := os.OpenFile(part, os.O_WRONLY|os.O_APPEND, 0)
		if err == nil {
			_, _ = f.Write(data[half:])
			f.Close()
		}
	}()
	base, err := c.Acquire(ctx, uploadOf(part, sum, int64(len(data))), "vol-1", progress)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != sum || base.Format != "qcow2" {
		t.Errorf("base %s (%s); want %s (qcow2)", base.Digest, base.Format, sum)
	}
	sameContent(t, base.Path, disk)
}

// TestUploadChecksum: bytes that are not the file the claim names are
// refused for good.
func TestUploadChecksum(t *testing.T) {
	dir := t.TempDir()
	disk := makeQCOW2(t, dir, "disk.qcow2", "64M")
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, filepath.Join(dir, "cache"), 0, Options{})
	wrong := "sha256:" + strings.Repeat("ab", 32)
	_, err = c.Acquire(context.Background(), uploadOf(disk, wrong, fi.Size()), "vol-1", nil)
	refused(t, err, image.ReasonChecksum)
	assertEmptyCache(t, filepath.Join(dir, "cache"))
}

// TestUploadStalls: an upload that stops arriving fails the attempt in a
// way that is retried (the user resumes it), never for good.
func TestUploadStalls(t *testing.T) {
	dir := t.TempDir()
	disk := makeQCOW2(t, dir, "disk.qcow2", "64M")
	fi, err := os.Stat(disk)
	if err != nil {
		t.Fatal(err)
	}
	c := newTestCache(t, filepath.Join(dir, "cache"), 0, Options{Stall: 100 * time.Millisecond})
	_, err = c.Acquire(context.Background(), uploadOf(disk, fileSHA256(t, disk), fi.Size()+4096), "vol-1", nil)
	if !errors.Is(err, errUploadStalled) || IsTerminal(err) {
		t.Errorf("a stalled upload: %v; want a retryable %v", err, errUploadStalled)
	}
	// Resumed with the length the file has, the same upload completes.
	if _, err := c.Acquire(context.Background(), uploadOf(disk, fileSHA256(t, disk), fi.Size()), "vol-1", nil); err != nil {
		t.Errorf("resuming the upload: %v", err)
	}
}
