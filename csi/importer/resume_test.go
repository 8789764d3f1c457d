package importer

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
)

// An HTTP download cut off mid-file fails as retryable, keeps its checkpoint, and the next
// Acquire continues with a Range request instead of starting over. A caller that gives up
// mid-import (context cancelled) leaves a resumable import too.
func TestHTTPInterruptedResumes(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	work := t.TempDir()
	disk := makeRandomQCOW2(t, work, "h.qcow2", 24, "64M")
	size := fileSize(t, disk)
	var cutAt atomic.Int64 // the server drops the connection after this many bytes (0: never)
	var served atomic.Int64
	var ranges atomic.Int64
	var slow atomic.Bool
	files := http.FileServer(http.Dir(work))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Range") != "" {
			ranges.Add(1)
		}
		files.ServeHTTP(&cuttingWriter{ResponseWriter: w, cut: &cutAt, served: &served, slow: &slow}, r)
	}))
	t.Cleanup(srv.Close)
	src := Source{AllowPrivate: true, URL: srv.URL + "/h.qcow2", Checksum: fileSHA256(t, disk)}
	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{CheckpointBytes: 2 << 20})

	cutAt.Store(size / 2)
	_, err := c.Acquire(ctx, src, "vol-1", nil)
	if err == nil || IsTerminal(err) {
		t.Fatalf("cut download: %v, want a retryable error", err)
	}
	states, _ := filepath.Glob(filepath.Join(dir, "partial", "*", partialState))
	if len(states) != 1 {
		t.Fatalf("no checkpoint kept after the cut (%v)", err)
	}
	cp, _ := loadCheckpoint(filepath.Dir(states[0]))
	first := served.Load()

	// A caller that gives up: the import stops, its checkpoint stays.
	cutAt.Store(0)
	slow.Store(true)
	cctx, cancel := context.WithCancel(ctx)
	var seen atomic.Int64
	_, err = c.Acquire(cctx, src, "vol-1", func(p Progress) {
		if p.Bytes > cp.BlobOffset+(2<<20) && seen.Add(1) == 1 {
			cancel()
		}
	})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled Acquire: %v", err)
	}
	slow.Store(false)

	before := served.Load()
	base, err := c.Acquire(ctx, src, "vol-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != src.Checksum {
		t.Fatalf("digest %s, want %s", base.Digest, src.Checksum)
	}
	sameContent(t, disk, base.Path)
	if ranges.Load() < 2 {
		t.Fatalf("%d Range requests, want the resumes to use Range", ranges.Load())
	}
	last := served.Load() - before
	t.Logf("file %d bytes: first try %d, after cut resumed from %d; last try downloaded %d", size, first, cp.BlobOffset, last)
	if last >= size-cp.BlobOffset {
		t.Fatalf("last try downloaded %d bytes, more than what remained after the first checkpoint (%d)", last, size-cp.BlobOffset)
	}
	if parts, _ := os.ReadDir(filepath.Join(dir, "partial")); len(parts) != 0 {
		t.Fatalf("partial left: %v", parts)
	}
}

type cuttingWriter struct {
	http.ResponseWriter
	cut, served *atomic.Int64
	sent        int64
	slow        *atomic.Bool // pause 2 ms per write
}

func (w *cuttingWriter) Write(p []byte) (int, error) {
	if w.slow != nil && w.slow.Load() {
		time.Sleep(2 * time.Millisecond)
	}
	if c := w.cut.Load(); c > 0 && w.sent+int64(len(p)) > c {
		p = p[:max(0, c-w.sent)]
		n, _ := w.ResponseWriter.Write(p)
		w.served.Add(int64(n))
		panic(http.ErrAbortHandler) // drop the connection mid-body
	}
	n, err := w.ResponseWriter.Write(p)
	w.sent += int64(n)
	w.served.Add(int64(n))
	return n, err
}

// A file replaced on the server between a cut download and its resume is not spliced:
// If-Range makes the server send the new file whole, and the import starts over.
func TestHTTPFileChangedBeforeResume(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	old := makeRandomQCOW2(t, work, "old.qcow2", 16, "32M")
	fresh := makeRandomQCOW2(t, work, "new.qcow2", 16, "32M")
	served := filepath.Join(work, "disk.qcow2")
	if err := os.Rename(old, served); err != nil {
		t.Fatal(err)
	}
	var cutAt, total atomic.Int64
	files := http.FileServer(http.Dir(work))
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		files.ServeHTTP(&cuttingWriter{ResponseWriter: w, cut: &cutAt, served: &total}, r)
	}))
	t.Cleanup(srv.Close)
	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{CheckpointBytes: 1 << 20})
	src := Source{AllowPrivate: true, URL: srv.URL + "/disk.qcow2"} // no checksum: only If-Range protects the resume
	cutAt.Store(fileSize(t, served) / 2)
	if _, err := c.Acquire(ctx, src, "v", nil); err == nil || IsTerminal(err) {
		t.Fatalf("cut download: %v", err)
	}
	if states, _ := filepath.Glob(filepath.Join(dir, "partial", "*", partialState)); len(states) != 1 {
		t.Fatal("no checkpoint after the cut")
	}
	cutAt.Store(0)
	if err := os.Rename(fresh, served); err != nil {
		t.Fatal(err)
	}
	later := time.Now().Add(time.Hour)
	if err := os.Chtimes(served, later, later); err != nil {
		t.Fatal(err)
	}
	_, err := c.Acquire(ctx, src, "v", nil)
	if !errors.Is(err, errSourceChanged) || IsTerminal(err) {
		t.Fatalf("resume after the file changed: %v, want a retryable 'changed' error", err)
	}
	base, err := c.Acquire(ctx, src, "v", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != fileSHA256(t, served) {
		t.Fatalf("base digest %s is not the new file's %s", base.Digest, fileSHA256(t, served))
	}
	sameContent(t, served, base.Path)
}
