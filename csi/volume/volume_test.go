package volume

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

func requireQemuImg(t *testing.T) {
	t.Helper()
	for _, tool := range []string{QemuImg, "qemu-io"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run 'make deps' (qemu-utils)", tool)
		}
	}
}

func run(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

type imageInfo struct {
	Format              string `json:"format"`
	VirtualSize         int64  `json:"virtual-size"`
	BackingFilename     string `json:"backing-filename"`
	BackingFormat       string `json:"backing-filename-format"`
	FullBackingFilename string `json:"full-backing-filename"`
}

func info(t *testing.T, path, format string) imageInfo {
	t.Helper()
	var i imageInfo
	if err := json.Unmarshal([]byte(run(t, QemuImg, "info", "-U", "--output=json", "-f", format, path)), &i); err != nil {
		t.Fatal(err)
	}
	return i
}

// hasPattern reports whether a qcow2 image reads as byte pattern over
// [off, off+n), through its backing chain.
func hasPattern(t *testing.T, path string, off, n int, pattern byte) bool {
	t.Helper()
	out := run(t, "qemu-io", "-r", "-f", diskmeta.FormatQCOW2, "-c", fmt.Sprintf("read -P 0x%02x %d %d", pattern, off, n), path)
	return !strings.Contains(out, "verification failed")
}

// makeBase writes a read-only qcow2 base with 0x5a in its first MiB, as the
// image cache holds it.
func makeBase(t *testing.T, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "base.qcow2")
	run(t, QemuImg, "create", "-q", "-f", diskmeta.FormatQCOW2, p, "16M")
	run(t, "qemu-io", "-f", diskmeta.FormatQCOW2, "-c", "write -P 0x5a 0 1M", p)
	if err := os.Chmod(p, 0o444); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestOverlayResolvesInsideTheVolume(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	root := t.TempDir()
	base := makeBase(t, root)
	vol := filepath.Join(root, "vol")
	if err := os.Mkdir(vol, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := Overlay(ctx, vol, base, diskmeta.FormatQCOW2, 64<<20, diskmeta.Meta{Source: "docker://r/x:1", Digest: "sha256:aa"}); err != nil {
		t.Fatal(err)
	}
	m, err := diskmeta.Read(vol)
	if err != nil {
		t.Fatal(err)
	}
	if want := (diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2, Source: "docker://r/x:1", Digest: "sha256:aa"}); !reflect.DeepEqual(m, want) {
		t.Errorf("meta = %+v, want %+v", m, want)
	}
	i := info(t, DiskPath(vol), diskmeta.FormatQCOW2)
	if i.BackingFilename != BaseName || i.BackingFormat != diskmeta.FormatQCOW2 || i.VirtualSize != 64<<20 {
		t.Errorf("overlay = %+v, want backing %q (format qcow2, stated) and 64 MiB", i, BaseName)
	}
	// base.img is the cached file itself (a hard link), not a copy.
	var a, b syscall.Stat_t
	if err := syscall.Stat(base, &a); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(vol, BaseName), &b); err != nil {
		t.Fatal(err)
	}
	if a.Ino != b.Ino {
		t.Error("base.img is not a hard link of the cached image")
	}
	// Moved elsewhere (as when mounted into the launcher pod) and with the
	// original base gone, the chain still resolves and reads the base.
	moved := filepath.Join(root, "elsewhere", "disk")
	if err := os.MkdirAll(filepath.Dir(moved), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(vol, moved); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(base); err != nil {
		t.Fatal(err)
	}
	if !hasPattern(t, DiskPath(moved), 0, 1<<20, 0x5a) {
		t.Error("the moved overlay does not read the base's data")
	}
}

func TestCopyKeepsOverlayOrFlattens(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	root := t.TempDir()
	base := makeBase(t, root)
	src := filepath.Join(root, "src")
	os.Mkdir(src, 0o755)
	if err := Overlay(ctx, src, base, diskmeta.FormatQCOW2, 32<<20, diskmeta.Meta{}); err != nil {
		t.Fatal(err)
	}
	// The guest writes 0xa5 at 2 MiB.
	run(t, "qemu-io", "-f", diskmeta.FormatQCOW2, "-c", "write -P 0xa5 2M 64k", DiskPath(src))

	tests := []struct {
		name     string
		format   string
		flatten  bool
		size     int64
		wantBase bool
	}{
		{name: "overlay", format: diskmeta.FormatQCOW2, size: 32 << 20, wantBase: true},
		{name: "flat-qcow2", format: diskmeta.FormatQCOW2, flatten: true, size: 48 << 20},
		{name: "raw", format: diskmeta.FormatRaw, size: 32 << 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dst := filepath.Join(root, tt.name)
			os.Mkdir(dst, 0o755)
			if err := Copy(ctx, src, dst, tt.format, tt.size, "", tt.flatten); err != nil {
				t.Fatal(err)
			}
			m, err := diskmeta.Read(dst)
			if err != nil {
				t.Fatal(err)
			}
			if m.Format != tt.format || m.HasBase() != tt.wantBase {
				t.Fatalf("meta = %+v, want format %s, base %v", m, tt.format, tt.wantBase)
			}
			i := info(t, DiskPath(dst), tt.format)
			if i.VirtualSize != tt.size {
				t.Errorf("virtual size %d, want %d", i.VirtualSize, tt.size)
			}
			if (i.BackingFilename == BaseName) != tt.wantBase {
				t.Errorf("backing file %q, want base: %v", i.BackingFilename, tt.wantBase)
			}
			if _, err := os.Stat(filepath.Join(dst, BaseName)); (err == nil) != tt.wantBase {
				t.Errorf("base.img present: %v, want %v", err == nil, tt.wantBase)
			}
			// Same content: qemu-img compare reads both chains.
			run(t, QemuImg, "compare", "-f", diskmeta.FormatQCOW2, "-F", tt.format, DiskPath(src), DiskPath(dst))
		})
	}
}

func TestCreateResizeAndMeta(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	for _, format := range []string{diskmeta.FormatQCOW2, diskmeta.FormatRaw} {
		dir := t.TempDir()
		if err := Create(ctx, dir, format, 8<<20, ""); err != nil {
			t.Fatal(err)
		}
		if err := Resize(ctx, dir, 16<<20, ""); err != nil {
			t.Fatal(err)
		}
		if err := Resize(ctx, dir, 4<<20, ""); err != nil { // never shrinks
			t.Fatal(err)
		}
		if got, err := VirtualSize(ctx, dir); err != nil || got != 16<<20 {
			t.Errorf("%s: size %d, %v; want 16 MiB", format, got, err)
		}
		if m, err := diskmeta.Read(dir); err != nil || m.Format != format || m.HasBase() {
			t.Errorf("%s: meta %+v, %v", format, m, err)
		}
	}
	if err := ValidPreallocation(diskmeta.FormatRaw, "metadata"); err == nil {
		t.Error("raw accepted preallocation=metadata")
	}
	if _, err := diskmeta.Read(t.TempDir()); err == nil || !strings.Contains(err.Error(), "disk.podvirt.io volume") {
		t.Errorf("diskmeta.Read of an empty dir: %v", err)
	}
}

func TestLoop(t *testing.T) {
	requireQemuImg(t)
	if os.Geteuid() != 0 {
		t.Fatal("loop devices need root")
	}
	ctx := context.Background()
	dir := t.TempDir()
	if err := Create(ctx, dir, diskmeta.FormatRaw, 4<<20, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { DetachLoopsOf(context.Background(), DiskPath(dir)) })
	dev, err := AttachLoop(ctx, DiskPath(dir))
	if err != nil {
		t.Fatal(err)
	}
	devs, err := LoopsOf(ctx, DiskPath(dir))
	if err != nil || len(devs) != 1 || devs[0] != dev {
		t.Fatalf("LoopsOf = %v, %v; want [%s]", devs, err, dev)
	}
	size := func() string { return strings.TrimSpace(run(t, "blockdev", "--getsize64", dev)) }
	if got := size(); got != "4194304" {
		t.Errorf("loop size %s, want 4194304", got)
	}
	if err := Resize(ctx, dir, 8<<20, ""); err != nil {
		t.Fatal(err)
	}
	if err := RefreshLoop(ctx, dev); err != nil {
		t.Fatal(err)
	}
	if got := size(); got != "8388608" {
		t.Errorf("loop size after refresh %s, want 8388608", got)
	}
	if err := DetachLoopsOf(ctx, DiskPath(dir)); err != nil {
		t.Fatal(err)
	}
	if devs, _ := LoopsOf(ctx, DiskPath(dir)); len(devs) != 0 {
		t.Errorf("loop devices left: %v", devs)
	}
}
