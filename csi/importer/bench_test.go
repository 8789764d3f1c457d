package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync/atomic"
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

// BenchmarkFirstImport: an image from a real registry (docker-registry: plain HTTP, and TLS +
// htpasswd) to a validated base in the cache, against two references run in the same
// iterations, so all see the same machine load: `qemu-img convert` of the same disk file
// from local disk, and a plain blob download with go-containerregistry. Ratios are
// reference time ÷ import time (1.0 = as fast, higher is better). The rows:
//
//   - 512 MiB of random data (qcow2, 1 GiB virtual) in an uncompressed layer over plain HTTP
//     and over HTTPS + auth, and in a gzip layer (random data: stored deflate blocks);
//   - 512 MiB of what disks hold (makeDiskLikeQCOW2: files from /usr) in a gzip layer, and as
//     disk/disk.qcow2.xz (`xz -T0 -1`, multi-block) in an uncompressed layer;
//   - 2 GiB of random data in an uncompressed layer, made, served by a registry of its own
//     and removed within its row (about 10 GiB of /tmp at its peak).
//
// peak-MiB is how far the process's peak RSS (VmHWM, reset before each import, after the
// Go heap was handed back to the OS) rose above its RSS when the import began: the
// importer's own memory; child-MiB is the largest RSS of an xz or qemu-img process the
// import ran (sampled every 10 ms). Each is the largest of the iterations.
// With -cpuprofile, `go tool pprof -tagfocus phase=import` keeps the imports only.
func BenchmarkFirstImport(b *testing.B) {
	work := b.TempDir()
	plain := startRegistryProcess(b, "127.0.0.1", false)
	secure := startRealRegistry(b, "127.0.0.3")
	plainReg := func(*testing.B) *realRegistry { return plain }
	secureReg := func(*testing.B) *realRegistry { return secure }
	ownReg := func(rb *testing.B) *realRegistry { return startRegistryProcess(rb, "127.0.0.1", false) }
	// The 512 MiB disks are made once, by the first row that needs them.
	var random, diskLike *benchDisk
	randomDisk := func(rb *testing.B) *benchDisk {
		if random == nil {
			random = newBenchDisk(rb, work, "random", makeRandomQCOW2(rb, work, "random.qcow2", 512, "1G"))
		}
		return random
	}
	diskLikeDisk := func(rb *testing.B) *benchDisk {
		if diskLike == nil {
			diskLike = newBenchDisk(rb, work, "disklike", makeDiskLikeQCOW2(rb, work, "disklike.qcow2", 512, "1G"))
		}
		return diskLike
	}
	random2G := func(rb *testing.B) *benchDisk {
		dir := rb.TempDir()
		return newBenchDisk(rb, dir, "random2g", makeRandomQCOW2(rb, dir, "random2g.qcow2", 2048, "4G"))
	}
	uncompressed := func(rb *testing.B, d *benchDisk) v1.Layer { return newFileLayer(rb, d.tar) }
	gzipped := func(rb *testing.B, d *benchDisk) v1.Layer {
		l, err := tarball.LayerFromFile(d.tar, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
		if err != nil {
			rb.Fatal(err)
		}
		return l
	}
	xzInLayer := func(rb *testing.B, d *benchDisk) v1.Layer {
		needTool(rb, "xz", "xz-utils")
		xz := d.disk + ".xz"
		run(rb, "xz", "-k", "-f", "-T0", "-1", d.disk)
		tarPath := filepath.Join(filepath.Dir(d.tar), filepath.Base(xz)+".tar")
		writeTarFile(rb, tarPath, "disk/disk.qcow2.xz", xz)
		os.Remove(xz)
		return newFileLayer(rb, tarPath)
	}

	for _, tc := range []struct {
		name  string
		reg   func(*testing.B) *realRegistry
		disk  func(*testing.B) *benchDisk
		layer func(*testing.B, *benchDisk) v1.Layer
	}{
		{"http/uncompressed-layer", plainReg, randomDisk, uncompressed},
		{"https-auth/uncompressed-layer", secureReg, randomDisk, uncompressed},
		{"http/gzip-layer", plainReg, randomDisk, gzipped},
		{"http/gzip-layer-disklike", plainReg, diskLikeDisk, gzipped},
		{"http/xz-disk-disklike", plainReg, diskLikeDisk, xzInLayer},
		{"http/uncompressed-layer-2GiB", ownReg, random2G, uncompressed},
	} {
		b.Run(tc.name, func(b *testing.B) {
			ctx := context.Background()
			d := tc.disk(b)
			layer := tc.layer(b, d)
			img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
			img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
			img, err := mutate.AppendLayers(img, layer)
			if err != nil {
				b.Fatal(err)
			}
			reg := tc.reg(b)
			repoName := "bench/" + strings.ToLower(strings.ReplaceAll(tc.name, "/", "-"))
			repo := reg.host + "/" + repoName + ":1"
			push(b, img, repo, reg.pushOpts()...)
			src := reg.source(repoName + ":1")
			digest, _ := layer.Digest()
			scratch := filepath.Dir(d.tar)
			var imports, converts, downloads []time.Duration
			var peak, childPeak int64
			for b.Loop() {
				b.StopTimer()
				dir := b.TempDir()
				c := newTestCache(b, dir, 0, Options{})
				mw := watchMemory(b)
				b.StartTimer()
				start := time.Now()
				var base Base
				pprof.Do(ctx, pprof.Labels("phase", "import"), func(ctx context.Context) {
					base, err = c.Acquire(ctx, src, "vol", nil)
				})
				if err != nil {
					b.Fatal(err)
				}
				imports = append(imports, time.Since(start))
				b.StopTimer()
				self, child := mw.end()
				peak, childPeak = max(peak, self), max(childPeak, child)
				if base.Size != fileSize(b, d.disk) {
					b.Fatalf("base is %d bytes, source %d", base.Size, fileSize(b, d.disk))
				}
				os.RemoveAll(dir)
				start = time.Now()
				out := filepath.Join(scratch, "converted.qcow2")
				if o, err := exec.Command("qemu-img", "convert", "-f", "qcow2", "-O", "qcow2", d.disk, out).CombinedOutput(); err != nil {
					b.Fatalf("qemu-img convert: %v: %s", err, o)
				}
				converts = append(converts, time.Since(start))
				os.Remove(out)
				start = time.Now()
				plainBlobDownload(b, reg, repoName, digest, filepath.Join(scratch, "blob"))
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
			b.ReportMetric(float64(fileSize(b, d.disk))/(1<<20)/imp.Seconds(), "MiB/s")
			b.ReportMetric(float64(peak)/(1<<20), "peak-MiB")
			b.ReportMetric(float64(childPeak)/(1<<20), "child-MiB")
		})
	}
}

// benchDisk is a benchmark's disk file and a layer tar holding it as disk/disk.qcow2.
type benchDisk struct{ disk, tar string }

func newBenchDisk(b *testing.B, dir, name, disk string) *benchDisk {
	tarPath := filepath.Join(dir, name+".tar")
	writeTarFile(b, tarPath, "disk/disk.qcow2", disk)
	return &benchDisk{disk: disk, tar: tarPath}
}

// memWatch measures the memory one import costs (see BenchmarkFirstImport).
type memWatch struct {
	b     *testing.B
	rss   int64 // at the start
	child atomic.Int64
	stop  chan struct{}
	done  chan struct{}
}

func watchMemory(b *testing.B) *memWatch {
	debug.FreeOSMemory()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		b.Fatalf("reset the peak RSS: %v", err)
	}
	m := &memWatch{b: b, rss: procStatusBytes(b, "VmRSS"), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(m.done)
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			m.child.Store(max(m.child.Load(), childRSS()))
			select {
			case <-m.stop:
				return
			case <-t.C:
			}
		}
	}()
	return m
}

// end returns the peak RSS growth of this process and the largest child RSS seen.
func (m *memWatch) end() (self, child int64) {
	close(m.stop)
	<-m.done
	return procStatusBytes(m.b, "VmHWM") - m.rss, m.child.Load()
}

func procStatusBytes(b *testing.B, field string) int64 {
	s, err := os.ReadFile("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	for line := range strings.Lines(string(s)) {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("%s: %v", field, err)
			}
			return kb << 10
		}
	}
	b.Fatalf("no %s in /proc/self/status", field)
	return 0
}

// childRSS is the largest RSS of this process's xz and qemu-img children now.
func childRSS() int64 {
	var largest int64
	lists, _ := filepath.Glob("/proc/self/task/*/children")
	for _, l := range lists {
		pids, _ := os.ReadFile(l)
		for pid := range strings.FieldsSeq(string(pids)) {
			comm, _ := os.ReadFile("/proc/" + pid + "/comm")
			if c := strings.TrimSpace(string(comm)); c != "xz" && c != "qemu-img" {
				continue
			}
			st, _ := os.ReadFile("/proc/" + pid + "/statm")
			if f := strings.Fields(string(st)); len(f) > 1 {
				pages, _ := strconv.ParseInt(f[1], 10, 64)
				largest = max(largest, pages*int64(os.Getpagesize()))
			}
		}
	}
	return largest
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

// makeDiskLikeQCOW2 creates a qcow2 whose first dataMiB MiB hold what disks hold: the
// contents of the files under /usr (binaries, libraries, text; sorted by path, repeated
// if there are too few), which gzip -1 makes about 40 % and xz -1 about 30 % of their size.
func makeDiskLikeQCOW2(t testing.TB, dir, file string, dataMiB int, virtual string) string {
	t.Helper()
	needTool(t, "qemu-img", "qemu-utils")
	var files []string
	for _, root := range []string{"/usr/lib", "/usr/bin", "/usr/share"} {
		_ = filepath.WalkDir(root, func(p string, e fs.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				files = append(files, p)
			}
			return nil
		})
	}
	if len(files) == 0 {
		t.Fatal("no files under /usr to make a disk-like image of")
	}
	raw := filepath.Join(dir, file+".raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	want, n := int64(dataMiB)<<20, int64(0)
	for n < want {
		pass := n
		for _, p := range files {
			in, err := os.Open(p)
			if err != nil {
				continue
			}
			m, err := io.CopyN(f, in, want-n)
			in.Close()
			n += m
			if err != nil && !errors.Is(err, io.EOF) {
				t.Fatal(err)
			}
			if n == want {
				break
			}
		}
		if n == pass {
			t.Fatal("the files under /usr cannot be read")
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, file)
	run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, p)
	run(t, "qemu-img", "resize", "-q", "-f", "qcow2", p, virtual)
	os.Remove(raw)
	return p
}
