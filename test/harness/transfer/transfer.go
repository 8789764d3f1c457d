// Package transfer holds what the image benchmarks time podvirt's transfers
// against: a plain blob upload of a file to a registry (hash, then upload:
// what crane does) and `curl -T` of it to an HTTP sink on loopback, and the
// random disk data they move (so nothing compresses it away).
package transfer

import (
	"context"
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// WriteRandom writes n random bytes to path.
func WriteRandom(tb testing.TB, path string, n int64) {
	tb.Helper()
	f, err := os.Create(path)
	if err != nil {
		tb.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		tb.Fatal(err)
	}
}

// Sink serves an HTTP sink on loopback that reads and drops what is PUT to
// it, for the test's life, and returns its URL.
func Sink(tb testing.TB) string {
	tb.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		tb.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	})}
	go func() { _ = srv.Serve(l) }()
	tb.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/disk.raw"
}

// CurlPut times `curl -T path url`; curl must be installed (make deps).
func CurlPut(tb testing.TB, path, url string) time.Duration {
	tb.Helper()
	curl, err := exec.LookPath("curl")
	if err != nil {
		tb.Fatal("curl is not installed: run `make deps`")
	}
	start := time.Now()
	if out, err := exec.Command(curl, "-sS", "--fail", "-T", path, "-o", "/dev/null", url).CombinedOutput(); err != nil {
		tb.Fatalf("curl -T: %v: %s", err, out)
	}
	return time.Since(start)
}

// PushBlob hashes the file at path and uploads it as one blob to repo on
// the plain-HTTP registry at addr.
func PushBlob(ctx context.Context, path, addr, repo string) error {
	layer, err := partial.CompressedToLayer(&fileBlob{path: path})
	if err != nil {
		return err
	}
	r, err := name.NewRepository(addr+"/"+repo, name.Insecure)
	if err != nil {
		return err
	}
	if err := remote.WriteLayer(r, layer, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("blob upload: %w", err)
	}
	return nil
}

// fileBlob is a file uploaded as it is, its digest computed first.
type fileBlob struct {
	path   string
	digest *gcrv1.Hash
	size   int64
}

func (f *fileBlob) Digest() (gcrv1.Hash, error) {
	if f.digest == nil {
		file, err := os.Open(f.path)
		if err != nil {
			return gcrv1.Hash{}, err
		}
		defer file.Close()
		h, n, err := gcrv1.SHA256(file)
		if err != nil {
			return gcrv1.Hash{}, err
		}
		f.digest, f.size = &h, n
	}
	return *f.digest, nil
}

func (f *fileBlob) Compressed() (io.ReadCloser, error) { return os.Open(f.path) }

func (f *fileBlob) Size() (int64, error) {
	_, err := f.Digest()
	return f.size, err
}

func (f *fileBlob) MediaType() (types.MediaType, error) { return types.OCILayer, nil }
