package poddisk

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/volume"
	"github.com/podvirt/podvirt/runtime/converter"
)

func TestSource(t *testing.T) {
	if _, err := exec.LookPath(volume.QemuImg); err != nil {
		t.Fatal("qemu-img is not installed: run 'make deps' (qemu-utils)")
	}
	ctx := context.Background()
	diskDir := t.TempDir()
	for _, format := range []string{diskmeta.FormatQCOW2, diskmeta.FormatRaw} {
		dir := filepath.Join(diskDir, format)
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := volume.Create(ctx, dir, format, 1<<20, ""); err != nil {
			t.Fatal(err)
		}
		src, ok, err := Source(diskDir, format)
		if err != nil || !ok {
			t.Fatalf("Source(%s) = %v, %v", format, ok, err)
		}
		want := converter.DiskSource{Path: filepath.Join(dir, "disk.img"), Format: format}
		if src != want {
			t.Errorf("Source(%s) = %+v, want %+v", format, src, want)
		}
	}

	// A directory without metadata is not ours: the caller's default holds.
	if err := os.Mkdir(filepath.Join(diskDir, "other"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := Source(diskDir, "other"); ok || err != nil {
		t.Errorf("Source(other) = %v, %v; want not found", ok, err)
	}

	// Broken metadata is an error naming the volume, never a guess.
	bad := filepath.Join(diskDir, "bad")
	if err := os.Mkdir(bad, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(bad, diskmeta.FileName), []byte(`{"format":"vmdk"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, _, err := Source(diskDir, "bad"); err == nil {
		t.Error("Source(bad) accepted format vmdk")
	}

	// A Block volume is a device node: raw.
	if err := os.Symlink("/dev/null", filepath.Join(diskDir, "blk.dev")); err != nil {
		t.Fatal(err)
	}
	src, ok, err := Source(diskDir, "blk")
	if err != nil || !ok {
		t.Fatalf("Source(blk) = %v, %v", ok, err)
	}
	if want := (converter.DiskSource{Path: filepath.Join(diskDir, "blk.dev"), Format: "raw", Block: true}); src != want {
		t.Errorf("Source(blk) = %+v, want %+v", src, want)
	}
}
