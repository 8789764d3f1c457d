package cli

import (
	"crypto/rand"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvirt/podvirt/test/harness/durations"
)

// benchDiskBytes is the benchmark disk's data: random, so nothing
// compresses it away.
const benchDiskBytes = 512 << 20

// BenchmarkImagePush measures `podvirtctl image push` of a raw disk with
// 512 MiB of data (validation, build, push, the digest asked back) to a
// real registry process, side by side in each iteration with the plain
// upload of the same bytes as one blob to a fresh registry of the same kind
// (hash, then upload: what crane does) and with `curl -T` of the file to
// an HTTP sink on loopback. Each push goes to a registry of its own, so no
// blob is already there. It reports the medians and the ratios (goal ≤ 1.2):
//
//	go test -run '^$' -bench ImagePush -benchtime 3x ./cmd/podvirtctl/internal/cli/
func BenchmarkImagePush(b *testing.B) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		b.Fatal("curl is not installed: run `make deps`")
	}
	disk := filepath.Join(b.TempDir(), "disk.raw")
	writeRandom(b, disk, benchDiskBytes)
	sink := startSink(b)
	var plain, gzip, blob, put []time.Duration
	for i := range b.N {
		plain = append(plain, onFreshRegistry(b, func(reg string) {
			if out, err := imageCmd(b, "push", disk, reg+fmt.Sprintf("/vms/plain:%d", i), "--insecure", "--compress", "none"); err != nil {
				b.Fatalf("image push: %v\n%s", err, out)
			}
		}))
		gzip = append(gzip, onFreshRegistry(b, func(reg string) {
			if out, err := imageCmd(b, "push", disk, reg+fmt.Sprintf("/vms/gzip:%d", i), "--insecure", "--compress", "gzip"); err != nil {
				b.Fatalf("image push: %v\n%s", err, out)
			}
		}))
		blob = append(blob, onFreshRegistry(b, func(reg string) { uploadBlob(b, disk, reg) }))
		start := time.Now()
		if out, err := exec.Command(curl, "-sS", "--fail", "-T", disk, "-o", "/dev/null", sink).CombinedOutput(); err != nil {
			b.Fatalf("curl -T: %v: %s", err, out)
		}
		put = append(put, time.Since(start))
	}
	p, g, bl, c := durations.Median(plain), durations.Median(gzip), durations.Median(blob), durations.Median(put)
	b.ReportMetric(float64(p.Milliseconds()), "push-none-ms")
	b.ReportMetric(float64(g.Milliseconds()), "push-gzip-ms")
	b.ReportMetric(float64(bl.Milliseconds()), "blob-ms")
	b.ReportMetric(float64(c.Milliseconds()), "curl-ms")
	b.ReportMetric(float64(p)/float64(bl), "push-none/blob")
	b.ReportMetric(float64(p)/float64(c), "push-none/curl")
	b.ReportMetric(float64(g)/float64(bl), "push-gzip/blob")
	b.Logf("512 MiB disk, median of %d: push (none) %s, push (gzip) %s, plain blob %s, curl -T %s; push/blob %.2f, push/curl %.2f, gzip push/blob %.2f (goal ≤ 1.2)",
		len(plain), p.Round(time.Millisecond), g.Round(time.Millisecond), bl.Round(time.Millisecond), c.Round(time.Millisecond),
		float64(p)/float64(bl), float64(p)/float64(c), float64(g)/float64(bl))
}

// onFreshRegistry times f against a registry process of its own, so no
// blob is there before; the registry's start and stop are not timed.
func onFreshRegistry(b *testing.B, f func(addr string)) time.Duration {
	b.Helper()
	reg := startRegistries(b, false)[0]
	defer reg.Stop()
	start := time.Now()
	f(reg.Addr)
	return time.Since(start)
}

// uploadBlob hashes disk and uploads it as one blob to the registry at
// addr, as a plain blob push does.
func uploadBlob(b *testing.B, disk, addr string) {
	b.Helper()
	layer, err := partial.CompressedToLayer(&fileBlob{path: disk})
	if err != nil {
		b.Fatal(err)
	}
	repo, err := name.NewRepository(addr+"/vms/blob", name.Insecure)
	if err != nil {
		b.Fatal(err)
	}
	if err := remote.WriteLayer(repo, layer, remote.WithContext(b.Context())); err != nil {
		b.Fatalf("blob upload: %v", err)
	}
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

// writeRandom writes n random bytes to path.
func writeRandom(b *testing.B, path string, n int64) {
	b.Helper()
	f, err := os.Create(path)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	if _, err := io.CopyN(f, rand.Reader, n); err != nil {
		b.Fatal(err)
	}
}

// startSink serves an HTTP sink on loopback that reads and drops what is
// PUT to it, and returns its URL.
func startSink(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 10 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
	})}
	go func() { _ = srv.Serve(l) }()
	b.Cleanup(func() { _ = srv.Close() })
	return "http://" + l.Addr().String() + "/disk.raw"
}
