package containerdisk

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/csi/importer"
	testregistry "github.com/podvirt/podvirt/test/env/registry"
	"github.com/podvirt/podvirt/test/images/guest"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// qemuImg runs qemu-img, failing the test (naming make deps) when it is missing.
func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img (Debian package qemu-utils) is not installed: run `make deps`")
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

func build(t *testing.T, path string, c Compression) *Image {
	t.Helper()
	img, err := Build(t.Context(), path, Options{Compression: c, SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = img.Close() })
	return img
}

func fileSHA256(t *testing.T, path string) string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(h.Sum(nil))
}

// The layer holds /disk (0555) and the disk (0440), both 107:107 at the
// epoch, and nothing else; the same file gives the same digest every time;
// the image is linux/amd64 with the layer's media type.
func TestBuildLayout(t *testing.T) {
	dir := t.TempDir()
	disk := filepath.Join(dir, "fedora.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", disk, "64M")
	want := fileSHA256(t, disk)
	for _, c := range []Compression{Gzip, None} {
		t.Run(string(c), func(t *testing.T) {
			img := build(t, disk, c)
			if img.Disk != "/disk/fedora.qcow2" {
				t.Fatalf("Disk = %q", img.Disk)
			}
			layers, err := img.Layers()
			if err != nil || len(layers) != 1 {
				t.Fatalf("layers: %d, %v", len(layers), err)
			}
			mt, _ := layers[0].MediaType()
			if wantMT := map[Compression]types.MediaType{Gzip: types.OCILayer, None: types.OCIUncompressedLayer}[c]; mt != wantMT {
				t.Fatalf("media type %s, want %s", mt, wantMT)
			}
			rc, err := layers[0].Uncompressed()
			if err != nil {
				t.Fatal(err)
			}
			defer rc.Close()
			tr := tar.NewReader(rc)
			var names []string
			for {
				h, err := tr.Next()
				if errors.Is(err, io.EOF) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				names = append(names, h.Name)
				if h.Uid != QEMUID || h.Gid != QEMUID || !h.ModTime.Equal(time.Unix(0, 0)) {
					t.Errorf("%s: owner %d:%d, mtime %v", h.Name, h.Uid, h.Gid, h.ModTime)
				}
				switch h.Name {
				case "disk/":
					if h.Typeflag != tar.TypeDir || h.Mode != DirMode {
						t.Errorf("disk/: type %c mode %o", h.Typeflag, h.Mode)
					}
				case "disk/fedora.qcow2":
					if h.Typeflag != tar.TypeReg || h.Mode != FileMode {
						t.Errorf("disk file: type %c mode %o", h.Typeflag, h.Mode)
					}
					sum := sha256.New()
					if _, err := io.Copy(sum, tr); err != nil {
						t.Fatal(err)
					}
					if hex.EncodeToString(sum.Sum(nil)) != want {
						t.Error("the layer's disk differs from the file")
					}
				}
			}
			if strings.Join(names, ",") != "disk/,disk/fedora.qcow2" {
				t.Fatalf("entries %v", names)
			}
			cfg, err := img.ConfigFile()
			if err != nil || cfg.OS != "linux" || cfg.Architecture != "amd64" {
				t.Fatalf("config %+v, %v", cfg, err)
			}
			d1, _ := img.Digest()
			d2, _ := build(t, disk, c).Digest()
			if d1 != d2 {
				t.Fatalf("two builds of the same file: %s and %s", d1, d2)
			}
		})
	}
}

// A name the importer would not take for a disk, and what is not a regular
// file, are refused before anything is read.
func TestCheckFile(t *testing.T) {
	dir := t.TempDir()
	for _, n := range []string{"disk", "disk.qcow2.gz", "notes.txt"} {
		p := filepath.Join(dir, n)
		if err := os.WriteFile(p, make([]byte, 512), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := CheckFile(p); err == nil || !strings.Contains(err.Error(), "rename the file") || !strings.Contains(err.Error(), n) {
			t.Errorf("%s: %v", n, err)
		}
	}
	if _, err := CheckFile(dir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory: %v", err)
	}
	if _, err := CheckFile(filepath.Join(dir, "missing.qcow2")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// A big disk is streamed: building the image of a 512 MiB (sparse) file
// allocates a small fraction of it.
func TestBuildStreams(t *testing.T) {
	disk := filepath.Join(t.TempDir(), "big.raw")
	qemuImg(t, "create", "-q", "-f", "raw", disk, "512M")
	for _, c := range []Compression{Gzip, None} {
		var before, after runtime.MemStats
		runtime.ReadMemStats(&before)
		img := build(t, disk, c)
		runtime.ReadMemStats(&after)
		alloc := after.TotalAlloc - before.TotalAlloc
		t.Logf("%s: %d KiB allocated", c, alloc>>10)
		if alloc > 64<<20 {
			t.Errorf("%s: building allocated %d MiB for a 512 MiB file", c, alloc>>20)
		}
		if _, err := img.Digest(); err != nil {
			t.Fatal(err)
		}
	}
}

// startRegistry runs a real registry process for the test.
func startRegistry(t *testing.T, ctx context.Context) *testregistry.Registry {
	t.Helper()
	r, err := testregistry.Start(ctx, testregistry.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	return r
}

// countingTransport counts the response body bytes read through it.
type countingTransport struct {
	rt http.RoundTripper
	n  *atomic.Int64
}

func (c countingTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	resp, err := c.rt.RoundTrip(req)
	if err == nil {
		resp.Body = &countingBody{ReadCloser: resp.Body, n: c.n}
	}
	return resp, err
}

type countingBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (b *countingBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.n.Add(int64(n))
	return n, err
}

// The test guest's containerDisk, pushed to a real registry, is imported by
// the CSI driver's own importer into a base that is the guest's disk, byte
// for byte; ReadDisk reads its format and virtual size from the registry
// with a few KiB of the layer.
func TestImporterAcceptsBuiltImage(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2", art.Disk).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v (run `make deps` if qemu-img is missing)", art.Disk, err)
	}
	info, err := image.ParseInfo(art.Disk, diskmeta.FormatQCOW2, out, image.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	reg := startRegistry(t, ctx)
	for _, c := range []Compression{Gzip, None} {
		t.Run(string(c), func(t *testing.T) {
			img := build(t, art.Disk, c)
			ref, err := reg.Push(ctx, "vm/guest:"+string(c), img)
			if err != nil {
				t.Fatal(err)
			}
			cache, err := importer.NewCacheWithOptions(t.TempDir(), 0, nil, importer.Options{Stall: 10 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			base, err := cache.Acquire(ctx, importer.Source{URL: "docker://" + ref, Insecure: true, AllowPrivate: true}, "vol-1", nil)
			if err != nil {
				t.Fatalf("the importer refused the image: %v", err)
			}
			digest, _ := img.Digest()
			if base.Digest != digest.String() || base.Format != diskmeta.FormatQCOW2 || base.VirtualSize != info.VirtualSize {
				t.Fatalf("base %+v, want digest %s, qcow2 of %d bytes", base, digest, info.VirtualSize)
			}
			if fileSHA256(t, base.Path) != fileSHA256(t, art.Disk) {
				t.Fatal("the imported base differs from the guest's disk")
			}

			var read atomic.Int64
			tag, err := name.NewTag(reg.Addr+"/vm/guest:"+string(c), name.Insecure)
			if err != nil {
				t.Fatal(err)
			}
			remoteImg, err := remote.Image(tag, remote.WithContext(ctx), remote.WithTransport(countingTransport{rt: reg.Transport(), n: &read}))
			if err != nil {
				t.Fatal(err)
			}
			d, err := ReadDisk(remoteImg, tag.String(), image.DefaultLimits)
			if err != nil {
				t.Fatal(err)
			}
			st, _ := os.Stat(art.Disk)
			if d.Path != "/disk/disk.qcow2" || d.Format != diskmeta.FormatQCOW2 || d.VirtualSize != info.VirtualSize || d.FileSize != st.Size() {
				t.Fatalf("ReadDisk = %+v, want /disk/disk.qcow2, qcow2 of %d bytes, file %d bytes", d, info.VirtualSize, st.Size())
			}
			t.Logf("ReadDisk read %d bytes from the registry", read.Load())
			if n := read.Load(); n > 64<<10 {
				t.Fatalf("ReadDisk read %d KiB from the registry for a %d KiB disk; the header needs 4 KiB", n>>10, st.Size()>>10)
			}
		})
	}
}

// ReadDisk applies the nodes' header checks: a qcow2 with a backing file
// is reported as refused, with the disk's path.
func TestReadDiskRefuses(t *testing.T) {
	dir := t.TempDir()
	qemuImg(t, "create", "-q", "-f", "qcow2", filepath.Join(dir, "base.qcow2"), "1M")
	top := filepath.Join(dir, "top.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", top)
	// Build does not judge the disk: the image is what a careless Dockerfile makes.
	img := build(t, top, None)
	d, err := ReadDisk(img, "local", image.DefaultLimits)
	var ie *image.Error
	if !errors.As(err, &ie) || ie.Reason != image.ReasonBackingFile || d.Path != "/disk/top.qcow2" {
		t.Fatalf("ReadDisk = %+v, %v; want a BackingFile refusal of /disk/top.qcow2", d, err)
	}
	raw := filepath.Join(dir, "disk.raw")
	if err := os.WriteFile(raw, bytes.Repeat([]byte{1}, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	d, err = ReadDisk(build(t, raw, Gzip), "local", image.DefaultLimits)
	if err != nil || d.Format != diskmeta.FormatRaw || d.VirtualSize != 4096 {
		t.Fatalf("raw: %+v, %v", d, err)
	}
}
