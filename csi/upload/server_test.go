package upload

import (
	"bytes"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/podvirt/podvirt/contracts/upload"
)

func request(t *testing.T, srv *httptest.Server, method string, offset int64, body []byte) *http.Response {
	t.Helper()
	req, err := http.NewRequest(method, srv.URL+upload.Path, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", upload.ContentType)
	req.Header.Set(upload.OffsetHeader, strconv.FormatInt(offset, 10))
	resp, err := srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

// TestResume: bytes append at the offset that has arrived only; a wrong
// offset is refused with the right one; bytes past the length are refused
// and dropped, so the file stays a prefix of the upload.
func TestResume(t *testing.T) {
	dir := t.TempDir()
	data := bytes.Repeat([]byte("0123456789abcdef"), 4096)
	srv := httptest.NewServer((&Server{Dir: dir, Length: int64(len(data)), Log: slog.New(slog.DiscardHandler)}).Handler())
	defer srv.Close()

	offset := func() string { return request(t, srv, http.MethodHead, 0, nil).Header.Get(upload.OffsetHeader) }
	if got := offset(); got != "0" {
		t.Fatalf("a new upload's offset is %q; want 0", got)
	}
	if resp := request(t, srv, http.MethodPatch, 0, data[:1000]); resp.StatusCode != http.StatusNoContent || resp.Header.Get(upload.OffsetHeader) != "1000" {
		t.Fatalf("first PATCH: %s, offset %q", resp.Status, resp.Header.Get(upload.OffsetHeader))
	}
	if resp := request(t, srv, http.MethodPatch, 0, data[:1000]); resp.StatusCode != http.StatusConflict || resp.Header.Get(upload.OffsetHeader) != "1000" {
		t.Errorf("PATCH at a stale offset: %s, offset %q; want 409 saying 1000", resp.Status, resp.Header.Get(upload.OffsetHeader))
	}
	if resp := request(t, srv, http.MethodPatch, 1000, append(append([]byte{}, data[1000:]...), "extra"...)); resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("PATCH past the length: %s; want 413", resp.Status)
	}
	if got := offset(); got != strconv.Itoa(len(data)) {
		t.Errorf("after the oversized PATCH the offset is %q; want the length %d", got, len(data))
	}
	got, err := os.ReadFile(filepath.Join(dir, upload.PartFile))
	if err != nil || !bytes.Equal(got, data) {
		t.Errorf("the file holds %d bytes (%v); want exactly the upload's %d", len(got), err, len(data))
	}
	req, _ := http.NewRequest(http.MethodPatch, srv.URL+upload.Path, nil)
	req.Header.Set(upload.OffsetHeader, "0")
	if resp, err := srv.Client().Do(req); err != nil || resp.StatusCode != http.StatusUnsupportedMediaType {
		t.Errorf("PATCH without the content type: %v %v; want 415", resp, err)
	}
}
