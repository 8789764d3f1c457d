package importer

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"
	"github.com/klauspost/compress/zstd"
	"golang.org/x/sys/unix"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/image"
)

// Decompression bombs: a few hundred KB that unpack to 256 MiB (four times the bound;
// the bytes past it are never read), through every way a disk can be
// compressed. Each stops at its bound with a terminal refusal naming it, the cache never
// holds more than the bound while it runs, and nothing is left after.
func TestImportBombsStopAtTheirBound(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	needTool(t, "xz", "xz-utils")
	const unpacked = 256 << 20 // what every bomb unpacks to
	const claim = 64 << 20     // the claim it is imported for
	limit := claim + diskmeta.QCOW2Room(claim)
	const slack = 64 << 10 // the partial import's checkpoint file, beside its data

	host, _ := inProcessRegistry(t)
	files := map[string][]byte{}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, ok := files[r.URL.Path]
		if !ok {
			http.NotFound(w, r)
			return
		}
		http.ServeContent(w, r, r.URL.Path, time.Time{}, bytes.NewReader(b))
	}))
	defer srv.Close()

	packed := map[string][]byte{} // comp+fill → the compressed disk, made once
	pack := func(comp string, fill byte) []byte {
		k := comp + string(rune(fill))
		if packed[k] == nil {
			packed[k] = compress(t, comp, func(w io.Writer) { fillTo(t, w, fill, unpacked) })
		}
		return packed[k]
	}
	type bomb struct {
		name string
		url  func(fill byte) string
	}
	var bombs []bomb
	for _, comp := range []string{"gz", "xz"} {
		bombs = append(bombs, bomb{"http ." + comp, func(fill byte) string {
			p := "/bomb-" + string(rune('a'+fill%26)) + ".raw." + comp
			files[p] = pack(comp, fill)
			return srv.URL + p
		}})
	}
	layer := func(name, tag string, fill byte, layerComp, fileComp string) string {
		tb := compress(t, layerComp, func(w io.Writer) {
			var data []byte
			size := int64(unpacked)
			if fileComp != "" {
				data = pack(fileComp, fill)
				size = int64(len(data))
			}
			tw := tar.NewWriter(w)
			if err := tw.WriteHeader(&tar.Header{Name: name, Typeflag: tar.TypeReg, Mode: 0o444, Size: size}); err != nil {
				t.Fatal(err)
			}
			if fileComp == "" {
				fillTo(t, tw, fill, unpacked)
			} else if _, err := tw.Write(data); err != nil {
				t.Fatal(err)
			}
			if err := tw.Close(); err != nil {
				t.Fatal(err)
			}
		})
		mt := map[string]types.MediaType{"": types.OCIUncompressedLayer, "gz": types.OCILayer, "zstd": types.OCILayerZStd}[layerComp]
		img, err := mutate.AppendLayers(mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON),
			static.NewLayer(tb, mt))
		if err != nil {
			t.Fatal(err)
		}
		ref := host + "/bomb/" + tag
		push(t, img, ref)
		return "docker://" + ref
	}
	for _, lc := range []string{"gz", "zstd"} {
		bombs = append(bombs, bomb{"registry " + lc + " layer", func(fill byte) string {
			return layer("disk/disk.raw", lc+":"+string(rune('a'+fill%26)), fill, lc, "")
		}})
	}
	for _, fc := range []string{"gz", "xz"} {
		bombs = append(bombs, bomb{"registry ." + fc + " file in a tar layer", func(fill byte) string {
			return layer("disk/disk.raw."+fc, "file-"+fc+":"+string(rune('a'+fill%26)), fill, "", fc)
		}})
		bombs = append(bombs, bomb{"registry ." + fc + " file in a gz layer", func(fill byte) string {
			return layer("disk/disk.raw."+fc, "both-"+fc+":"+string(rune('a'+fill%26)), fill, "gz", fc)
		}})
	}
	for _, b := range bombs {
		for _, fill := range []byte{0, 0x5a} {
			what := "zeros"
			if fill != 0 {
				what = "data"
			}
			t.Run(b.name+" of "+what, func(t *testing.T) {
				url := b.url(fill)
				dir := t.TempDir()
				c := newTestCache(t, dir, 0, Options{})
				peak := watchUsage(t, dir)
				_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: url, MaxDiskSize: claim}, "vol-1", nil)
				refused(t, err, image.ReasonOutputTooLarge)
				if !strings.Contains(err.Error(), "64.0 MiB its claim asks for") || !strings.Contains(err.Error(), "larger claim") {
					t.Fatalf("the refusal does not name the claim's size and the fix: %v", err)
				}
				if got := peak(); got > limit+slack {
					t.Fatalf("the cache held %d bytes during the import, past the bound of %d", got, limit)
				}
				assertEmptyCache(t, dir)
			})
		}
	}

	// The other bounds: the node's maximum virtual size and the cache's size.
	url := bombs[0].url(0x5a)
	for _, tc := range []struct {
		name  string
		cache int64
		opts  Options
		words string
	}{
		{"node maximum virtual size", 0, Options{Limits: image.Limits{MaxVirtualSize: 32 << 20, CPUSeconds: 30, AddressSpace: 1 << 30, Timeout: time.Minute}}, "maximum virtual size of 32.0 MiB"},
		{"cache size", 48 << 20, Options{}, "image cache size of 48.0 MiB"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newTestCache(t, dir, tc.cache, tc.opts)
			peak := watchUsage(t, dir)
			_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: url}, "vol-1", nil)
			refused(t, err, image.ReasonOutputTooLarge)
			if !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("%v does not say %q", err, tc.words)
			}
			if got := peak(); got > limit+slack {
				t.Fatalf("the cache held %d bytes during the import", got)
			}
			assertEmptyCache(t, dir)
		})
	}

	// A qcow2 whose header declares more than the claim is refused from its header.
	t.Run("qcow2 header larger than the claim", func(t *testing.T) {
		big := makeQCOW2(t, t.TempDir(), "big.qcow2", "10G")
		b, err := os.ReadFile(big)
		if err != nil {
			t.Fatal(err)
		}
		files["/big.qcow2"] = b
		dir := t.TempDir()
		c := newTestCache(t, dir, 0, Options{})
		_, err = c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/big.qcow2", MaxDiskSize: claim}, "vol-1", nil)
		refused(t, err, image.ReasonVirtualSize)
		if !strings.Contains(err.Error(), "declares a virtual size of 10.0 GiB") || !strings.Contains(err.Error(), "its claim asks for") {
			t.Fatalf("%v", err)
		}
		assertEmptyCache(t, dir)
	})
}

// A claim larger than the one whose import stopped at its size joins, then imports again
// with its own bound.
func TestImportBoundIsPerClaim(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	disk := makeRandomQCOW2(t, work, "d.qcow2", 24, "24M")
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	defer srv.Close()
	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{})
	src := Source{AllowPrivate: true, URL: srv.URL + "/" + filepath.Base(disk)}
	small := src
	small.MaxDiskSize = 1 << 20
	if _, err := c.Acquire(ctx, small, "small", nil); err == nil {
		t.Fatal("a 24 MiB disk fit a 1 MiB claim")
	}
	big := src
	big.MaxDiskSize = 1 << 30
	if _, err := c.Acquire(ctx, big, "big", nil); err != nil {
		t.Fatalf("a 1 GiB claim after a 1 MiB one: %v", err)
	}
}

// Zero runs stay holes on every path, whatever size the decompressor's reads are.
func TestImportKeepsZerosSparse(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	needTool(t, "xz", "xz-utils")
	// 64 MiB raw: 4 KiB of data every 4 MiB, zeros between.
	raw := make([]byte, 64<<20)
	for off := 0; off < len(raw); off += 4 << 20 {
		copy(raw[off:], bytes.Repeat([]byte{0x5a}, 4096))
	}
	work := t.TempDir()
	for _, comp := range []string{"", "gz", "xz"} {
		name := "sparse.raw"
		if comp != "" {
			name += "." + comp
		}
		if err := os.WriteFile(filepath.Join(work, name), compress(t, comp, func(w io.Writer) { _, _ = w.Write(raw) }), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	defer srv.Close()
	host, _ := inProcessRegistry(t)
	rawPath := filepath.Join(work, "sparse.raw")
	urls := map[string]string{}
	for _, comp := range []string{"", "gz", "xz"} {
		n := "sparse.raw"
		if comp != "" {
			n += "." + comp
		}
		urls["http "+n] = srv.URL + "/" + n
	}
	for _, uncompressed := range []bool{true, false} {
		tag := "gz"
		if uncompressed {
			tag = "tar"
		}
		img := containerDisk(t, uncompressed, layerTar(t, fileEntry(t, "disk/disk.raw", rawPath)))
		push(t, img, host+"/sparse/raw:"+tag)
		urls["registry "+tag+" layer"] = "docker://" + host + "/sparse/raw:" + tag
		img = containerDisk(t, uncompressed, layerTar(t, fileEntry(t, "disk/disk.raw.xz", filepath.Join(work, "sparse.raw.xz"))))
		push(t, img, host+"/sparse/xz:"+tag)
		urls["registry .xz in "+tag+" layer"] = "docker://" + host + "/sparse/xz:" + tag
	}
	for name, url := range urls {
		t.Run(name, func(t *testing.T) {
			c := newTestCache(t, t.TempDir(), 0, Options{})
			base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: url}, "vol-1", nil)
			if err != nil {
				t.Fatal(err)
			}
			var st syscall.Stat_t
			if err := syscall.Stat(base.Path, &st); err != nil {
				t.Fatal(err)
			}
			if st.Size != 64<<20 {
				t.Fatalf("base is %d bytes, want %d", st.Size, 64<<20)
			}
			if alloc := st.Blocks * 512; alloc > 1<<20 {
				t.Fatalf("base allocates %d bytes for 64 KiB of data: zeros were written", alloc)
			}
		})
	}
}

// The free-space reserve: an import does not start when it would leave less, evicting
// unused bases first (and never one a volume holds); one that crosses it mid-way stops
// and removes what it wrote.
func TestImportKeepsTheFreeSpaceReserve(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	host, _ := inProcessRegistry(t)
	for i, tag := range []string{"held", "unused"} {
		disk := makeQCOW2(t, work, tag+".qcow2", "16M")
		run(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+string(rune('1'+i))+" 4M 64k", disk)
		push(t, containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk))), host+"/vm/r:"+tag)
	}
	big := filepath.Join(work, "big.raw")
	f, err := os.Create(big)
	if err != nil {
		t.Fatal(err)
	}
	fillTo(t, f, 0x5a, 256<<20)
	f.Close()
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	defer srv.Close()

	dir := t.TempDir()
	src := func(tag string) Source { return Source{AllowPrivate: true, URL: "docker://" + host + "/vm/r:" + tag} }
	setup := newTestCache(t, dir, 0, Options{})
	held, err := setup.Acquire(ctx, src("held"), "vol-held", nil)
	if err != nil {
		t.Fatal(err)
	}
	unused, err := setup.Acquire(ctx, src("unused"), "vol-gone", nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := setup.Release("vol-gone"); err != nil {
		t.Fatal(err)
	}

	t.Run("refuses to start", func(t *testing.T) {
		c := newTestCache(t, dir, 0, Options{FreeSpaceReserve: freeBytes(t, dir) + 1<<40})
		_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/big.raw"}, "vol-1", nil)
		var se *spaceError
		if !errors.As(err, &se) || IsTerminal(err) || !strings.Contains(err.Error(), "--free-space-reserve") {
			t.Fatalf("import below the reserve: %v, want a retryable error naming --free-space-reserve", err)
		}
		if _, err := os.Stat(unused.Path); !os.IsNotExist(err) {
			t.Fatalf("the unused base was not evicted first: %v", err)
		}
		if _, err := os.Stat(held.Path); err != nil {
			t.Fatalf("the held base was evicted: %v", err)
		}
		if ents, _ := os.ReadDir(filepath.Join(dir, "partial")); len(ents) != 0 {
			t.Fatalf("partial imports left: %v", ents)
		}
	})
	t.Run("stops mid-way", func(t *testing.T) {
		c := newTestCache(t, dir, 0, Options{FreeSpaceReserve: freeBytes(t, dir) - 16<<20})
		_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/big.raw"}, "vol-2", nil)
		var se *spaceError
		if !errors.As(err, &se) {
			t.Fatalf("a 256 MiB import with 16 MiB above the reserve: %v, want it stopped", err)
		}
		if ents, _ := os.ReadDir(filepath.Join(dir, "partial")); len(ents) != 0 {
			t.Fatalf("partial imports left: %v", ents)
		}
	})
}

// An import past the node's time limit stops, naming the limit.
func TestImportTimeLimit(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Length", "1073741824")
		chunk := bytes.Repeat([]byte{0x5a}, 4096)
		for r.Context().Err() == nil {
			if _, err := w.Write(chunk); err != nil {
				return
			}
			w.(http.Flusher).Flush()
			time.Sleep(20 * time.Millisecond) // a trickle: never a stall, never done
		}
	}))
	defer srv.Close()
	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{ImportTimeout: 2 * time.Second})
	start := time.Now()
	_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/slow.raw"}, "vol-1", nil)
	refused(t, err, image.ReasonTimeout)
	if !strings.Contains(err.Error(), "limit of 2s") || !strings.Contains(err.Error(), "--import-timeout") {
		t.Fatalf("%v does not name the limit and the flag", err)
	}
	if el := time.Since(start); el > 20*time.Second {
		t.Fatalf("stopped after %s", el)
	}
	assertEmptyCache(t, dir)
}

// compress returns what gen writes, compressed as comp ("", "gz", "xz", "zstd").
func compress(t testing.TB, comp string, gen func(io.Writer)) []byte {
	t.Helper()
	var buf bytes.Buffer
	switch comp {
	case "":
		gen(&buf)
	case "gz":
		zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
		gen(zw)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	case "zstd":
		zw, err := zstd.NewWriter(&buf)
		if err != nil {
			t.Fatal(err)
		}
		gen(zw)
		if err := zw.Close(); err != nil {
			t.Fatal(err)
		}
	case "xz":
		cmd := exec.Command("xz", "--compress", "--stdout", "-0", "--threads=1")
		in, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		cmd.Stdout = &buf
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		gen(in)
		in.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatal(err)
		}
	default:
		t.Fatalf("compression %q", comp)
	}
	return buf.Bytes()
}

// fillTo writes n bytes of fill.
func fillTo(t testing.TB, w io.Writer, fill byte, n int64) {
	t.Helper()
	chunk := bytes.Repeat([]byte{fill}, 1<<20)
	for n > 0 {
		m := min(n, int64(len(chunk)))
		if _, err := w.Write(chunk[:m]); err != nil {
			t.Fatal(err)
		}
		n -= m
	}
}

// watchUsage samples how much dir's files allocate until the test ends; the returned
// func reports the peak so far.
func watchUsage(t testing.TB, dir string) func() int64 {
	var mu sync.Mutex
	var peak int64
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			var n int64
			_ = filepath.WalkDir(dir, func(_ string, d fs.DirEntry, err error) error {
				if err == nil && d.Type().IsRegular() {
					if info, err := d.Info(); err == nil {
						n += info.Sys().(*syscall.Stat_t).Blocks * 512
					}
				}
				return nil
			})
			mu.Lock()
			peak = max(peak, n)
			mu.Unlock()
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
	return func() int64 {
		mu.Lock()
		defer mu.Unlock()
		return peak
	}
}

func freeBytes(t testing.TB, dir string) int64 {
	t.Helper()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	return int64(st.Bavail) * st.Bsize
}
