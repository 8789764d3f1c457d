package importer

import (
	"bytes"
	"crypto/rand"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	"github.com/podvirt/podvirt/csi/image"
)

// sparseRawDisk writes a 32 MiB raw disk: random data at the start and in the middle,
// zeros elsewhere.
func sparseRawDisk(t *testing.T, dir string) (string, []byte) {
	t.Helper()
	data := make([]byte, 32<<20)
	for _, off := range []int{0, 13 << 20} {
		if _, err := rand.Read(data[off : off+1<<20]); err != nil {
			t.Fatal(err)
		}
	}
	p := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(p, data, 0o644); err != nil {
		t.Fatal(err)
	}
	return p, data
}

func gzipFile(t *testing.T, src string) string {
	t.Helper()
	b, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(b); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(src+".gz", buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return src + ".gz"
}

// xzFile compresses src into 1 MiB blocks, which xz decompresses on several threads.
func xzFile(t *testing.T, src string) string {
	t.Helper()
	needTool(t, "xz", "xz-utils")
	run(t, "xz", "-k", "-f", "-0", "-T2", "--block-size=1MiB", src)
	return src + ".xz"
}

// checkSparseCopy checks that base holds want and that its zero runs were not written.
func checkSparseCopy(t *testing.T, base string, want []byte) {
	t.Helper()
	got, err := os.ReadFile(base)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("base %s (%d bytes) differs from the disk (%d bytes)", base, len(got), len(want))
	}
	var st syscall.Stat_t
	if err := syscall.Stat(base, &st); err != nil {
		t.Fatal(err)
	}
	if allocated := st.Blocks * 512; allocated > 4<<20 {
		t.Errorf("base allocates %d KiB for 2 MiB of data: zero runs were written", allocated>>10)
	}
}

// Compressed disk files: .gz and .xz (multi-block, so xz runs threaded) inside
// uncompressed and gzip layers, and as HTTP files. Each arrives whole and sparse.
func TestImportCompressedDisks(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	raw, data := sparseRawDisk(t, work)
	gz, xz := gzipFile(t, raw), xzFile(t, raw)
	host, _ := inProcessRegistry(t)
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	t.Cleanup(srv.Close)

	for _, tc := range []struct {
		name, file, entry string
		uncompressedLayer bool
	}{
		{"gz in uncompressed layer", gz, "disk/disk.raw.gz", true},
		{"xz in uncompressed layer", xz, "disk/disk.raw.xz", true},
		{"gz in gzip layer", gz, "disk/disk.raw.gz", false},
		{"xz in gzip layer", xz, "disk/disk.raw.xz", false},
		{"raw in gzip layer", raw, "disk/disk.raw", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			img := containerDisk(t, tc.uncompressedLayer, layerTar(t, tarEntry{name: "disk/", typeflag: '5'}, fileEntry(t, tc.entry, tc.file)))
			repo := host + "/compressed/" + filepath.Base(tc.entry) + map[bool]string{true: "-u", false: "-z"}[tc.uncompressedLayer] + ":1"
			push(t, img, repo)
			c := newTestCache(t, t.TempDir(), 0, Options{})
			base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + repo}, "vol", nil)
			if err != nil {
				t.Fatal(err)
			}
			if base.Format != "raw" || base.Size != int64(len(data)) {
				t.Fatalf("base = %+v, want raw, %d bytes", base, len(data))
			}
			checkSparseCopy(t, base.Path, data)
		})
	}
	for _, file := range []string{gz, xz} {
		t.Run("http "+filepath.Base(file), func(t *testing.T) {
			c := newTestCache(t, t.TempDir(), 0, Options{})
			base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/" + filepath.Base(file)}, "vol", nil)
			if err != nil {
				t.Fatal(err)
			}
			if base.Digest != fileSHA256(t, file) {
				t.Fatalf("base digest %s, want the file's %s", base.Digest, fileSHA256(t, file))
			}
			checkSparseCopy(t, base.Path, data)
		})
	}
}

// A compressed file cut short, or with a byte changed, is refused as corrupt: the
// decompressor's end of stream is checked, not taken from the reader running out.
func TestImportBrokenCompressedFiles(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	raw, _ := sparseRawDisk(t, work)
	gz, xz := gzipFile(t, raw), xzFile(t, raw)
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	t.Cleanup(srv.Close)
	for _, file := range []string{gz, xz} {
		b, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		ext := filepath.Ext(file)
		flipped := append([]byte{}, b...)
		flipped[len(flipped)/2] ^= 0x55
		for name, content := range map[string][]byte{
			"cut" + ext:            b[:len(b)*2/3],
			"cut-at-trailer" + ext: b[:len(b)-8],
			"flipped" + ext:        flipped,
		} {
			t.Run(name, func(t *testing.T) {
				if err := os.WriteFile(filepath.Join(work, name), content, 0o644); err != nil {
					t.Fatal(err)
				}
				dir := t.TempDir()
				c := newTestCache(t, dir, 0, Options{})
				_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/" + name}, "vol", nil)
				refused(t, err, image.ReasonCorrupt)
				assertEmptyCache(t, dir)
			})
		}
	}
}

// A gzip layer that is not gzip, or is cut short, with the digest of what the registry
// serves: refused as corrupt (not as altered), and the decompressor's goroutine is done
// with the blob before the digest is checked.
func TestImportBrokenGzipLayers(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	raw, _ := sparseRawDisk(t, work)
	host, _ := inProcessRegistry(t)
	layer := layerTar(t, fileEntry(t, "disk/disk.raw", raw))
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	if _, err := zw.Write(layer); err != nil {
		t.Fatal(err)
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	for name, blob := range map[string][]byte{
		"not-gzip": layer,
		"cut":      buf.Bytes()[:buf.Len()/2],
	} {
		t.Run(name, func(t *testing.T) {
			img := containerDiskFromBlobs(t, blob)
			repo := host + "/broken/" + name + ":1"
			push(t, img, repo)
			dir := t.TempDir()
			c := newTestCache(t, dir, 0, Options{})
			_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + repo}, "vol", nil)
			refused(t, err, image.ReasonCorrupt)
			assertEmptyCache(t, dir)
		})
	}
}

// containerDiskFromBlobs builds an image whose gzip layers are the given blobs as they are.
func containerDiskFromBlobs(t *testing.T, blobs ...[]byte) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, b := range blobs {
		var err error
		if img, err = mutate.AppendLayers(img, static.NewLayer(b, types.OCILayer)); err != nil {
			t.Fatal(err)
		}
	}
	return img
}
