package importer

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// BenchmarkDiskFromCache: how long Acquire takes to hand out an already-cached base
// (goal < 100 ms, flat in image size), and beside it the driver's next step, a
// `qemu-img create -b` overlay on that base.
func BenchmarkDiskFromCache(b *testing.B) {
	for _, tc := range []struct {
		name    string
		dataMiB int
		virtual string
	}{{"64MiB", 64, "64M"}, {"4GiB-virtual", 64, "4G"}} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			work := b.TempDir()
			disk := makeRandomQCOW2(b, work, "cached.qcow2", tc.dataMiB, tc.virtual)
			img := containerDisk(b, true, layerTar(b, fileEntry(b, "disk/disk.qcow2", disk)))
			host, _ := inProcessRegistry(b)
			push(b, img, host+"/os/cached:1")
			c := newTestCache(b, b.TempDir(), 0, Options{})
			src := Source{AllowPrivate: true, URL: "docker://" + host + "/os/cached:1"}
			base, err := c.Acquire(ctx, src, "warm", nil)
			if err != nil {
				b.Fatal(err)
			}
			var acquire, overlay time.Duration
			i := 0
			for b.Loop() {
				i++
				start := time.Now()
				got, err := c.Acquire(ctx, src, fmt.Sprintf("vol-%d", i), nil)
				if err != nil || got.Digest != base.Digest {
					b.Fatalf("Acquire from cache: %+v, %v", got, err)
				}
				acquire += time.Since(start)
				start = time.Now()
				ov := filepath.Join(work, "overlay.qcow2")
				if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", got.Path, "-F", got.Format, ov).CombinedOutput(); err != nil {
					b.Fatalf("overlay: %v: %s", err, out)
				}
				overlay += time.Since(start)
				os.Remove(ov)
			}
			b.ReportMetric(float64(acquire.Microseconds())/1000/float64(i), "acquire-ms")
			b.ReportMetric(float64(overlay.Microseconds())/1000/float64(i), "overlay-ms")
		})
	}
}

// BenchmarkFirstImport: a 512 MiB qcow2 (random data) from a real registry (docker-registry:
// plain HTTP, and TLS + htpasswd) to a validated base in the cache, as ratios against
// `qemu-img convert` of the same file from local disk and against a plain blob download
// with go-containerregistry (higher is better; 1.0 = as fast as the reference).
func BenchmarkFirstImport(b *testing.B) {
	work := b.TempDir()
	disk := makeRandomQCOW2(b, work, "big.qcow2", 512, "1G")
	tarPath := filepath.Join(work, "layer.tar")
	writeTarFile(b, tarPath, "disk/disk.qcow2", disk)
	plain := startRegistryProcess(b, "127.0.0.1", false)
	secure := startRealRegistry(b, "127.0.0.3")

	for _, tc := range []struct {
		name  string
		reg   *realRegistry
		layer func() v1.Layer
	}{
		{"http/uncompressed-layer", plain, func() v1.Layer { return newFileLayer(b, tarPath) }},
		{"https-auth/uncompressed-layer", secure, func() v1.Layer { return newFileLayer(b, tarPath) }},
		{"http/gzip-layer", plain, func() v1.Layer {
			l, err := tarball.LayerFromFile(tarPath, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
			if err != nil {
				b.Fatal(err)
			}
			return l
		}},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			layer := tc.layer()
			img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
			img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
			img, err := mutate.AppendLayers(img, layer)
			if err != nil {
				b.Fatal(err)
			}
			reg := tc.reg
			repoName := "bench/" + strings.ReplaceAll(tc.name, "/", "-")
			repo := reg.host + "/" + repoName + ":1"
			push(b, img, repo, reg.pushOpts()...)
			src := reg.source(repoName + ":1")
			digest, _ := layer.Digest()
			// The references run in the same iterations as the imports, so all three see
			// the same machine load.
			var imports, converts, downloads []time.Duration
			for b.Loop() {
				dir := b.TempDir()
				c := newTestCache(b, dir, 0, Options{})
				start := time.Now()
				base, err := c.Acquire(ctx, src, "vol", nil)
				if err != nil {
					b.Fatal(err)
				}
				imports = append(imports, time.Since(start))
				b.StopTimer()
				if base.Size != fileSize(b, disk) {
					b.Fatalf("base is %d bytes, source %d", base.Size, fileSize(b, disk))
				}
				os.RemoveAll(dir)
				start = time.Now()
				out := filepath.Join(work, "converted.qcow2")
				if o, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", disk, out).CombinedOutput(); err != nil {
					b.Fatalf("qemu-img convert: %v: %s", err, o)
				}
				converts = append(converts, time.Since(start))
				os.Remove(out)
				start = time.Now()
				plainBlobDownload(b, reg, repoName, digest, filepath.Join(work, "blob"))
				downloads = append(downloads, time.Since(start))
				b.StartTimer()
			}
			convert, download := median(converts), median(downloads)
			imp := median(imports)
			b.ReportMetric(imp.Seconds(), "import-s")
			b.ReportMetric(convert.Seconds(), "convert-s")
			b.ReportMetric(download.Seconds(), "download-s")
			b.ReportMetric(convert.Seconds()/imp.Seconds(), "convert/import")
			b.ReportMetric(download.Seconds()/imp.Seconds(), "download/import")
			b.ReportMetric(float64(fileSize(b, disk))/(1<<20)/imp.Seconds(), "MiB/s")
		})
	}
}

// plainBlobDownload fetches the layer blob with go-containerregistry into a file: the
// floor any import from this registry can reach.
func plainBlobDownload(b *testing.B, reg *realRegistry, repo string, digest v1.Hash, dst string) {
	ref, err := name.NewDigest(reg.host + "/" + repo + "@" + digest.String())
	if err != nil {
		b.Fatal(err)
	}
	l, err := remote.Layer(ref, reg.pushOpts()...)
	if err != nil {
		b.Fatal(err)
	}
	rc, err := l.Compressed()
	if err != nil {
		b.Fatal(err)
	}
	defer rc.Close()
	f, err := os.Create(dst)
	if err != nil {
		b.Fatal(err)
	}
	defer os.Remove(dst)
	defer f.Close()
	if _, err := io.Copy(f, rc); err != nil {
		b.Fatal(err)
	}
	if err := f.Sync(); err != nil {
		b.Fatal(err)
	}
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration{}, ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

func fileSize(b testing.TB, p string) int64 {
	st, err := os.Stat(p)
	if err != nil {
		b.Fatal(err)
	}
	return st.Size()
}
