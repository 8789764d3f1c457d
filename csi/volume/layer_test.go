package volume

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

func write(t *testing.T, path string, off int, pattern byte) {
	t.Helper()
	run(t, "qemu-io", "-f", diskmeta.FormatQCOW2, "-c", "write -P 0x"+strconv.FormatUint(uint64(pattern), 16)+" "+strconv.Itoa(off)+" 64k", path)
}

// TestFreezeKeepRestore snapshots a volume twice in O(1), restores the
// first snapshot, and deletes the volume and snapshots in an order that
// leaves each survivor whole.
func TestFreezeKeepRestore(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	root := t.TempDir()
	vol, snap1, snap2, restored := filepath.Join(root, "vol"), filepath.Join(root, "s1"), filepath.Join(root, "s2"), filepath.Join(root, "r")
	for _, d := range []string{vol, snap1, snap2, restored} {
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if err := Overlay(ctx, vol, makeBase(t, root), diskmeta.FormatQCOW2, 64<<20, diskmeta.Meta{Digest: "sha256:aa"}); err != nil {
		t.Fatal(err)
	}
	write(t, DiskPath(vol), 2<<20, 0x11)
	if err := Freeze(ctx, vol, diskmeta.LayerName("s1")); err != nil {
		t.Fatal(err)
	}
	if err := Freeze(ctx, vol, diskmeta.LayerName("s1")); err != nil { // a retry
		t.Fatal(err)
	}
	if err := Keep(vol, diskmeta.LayerName("s1"), snap1); err != nil {
		t.Fatal(err)
	}
	write(t, DiskPath(vol), 2<<20, 0x22)
	if err := Freeze(ctx, vol, diskmeta.LayerName("s2")); err != nil {
		t.Fatal(err)
	}
	if err := Keep(vol, diskmeta.LayerName("s2"), snap2); err != nil {
		t.Fatal(err)
	}
	write(t, DiskPath(vol), 2<<20, 0x33)

	m, err := diskmeta.Read(vol)
	if err != nil || len(m.Layers) != 2 || m.Layers[0] != diskmeta.LayerName("s2") || m.Digest != "sha256:aa" {
		t.Fatalf("volume meta = %+v, %v; want layers s2, s1 on the base", m, err)
	}
	if i := info(t, DiskPath(vol), diskmeta.FormatQCOW2); i.BackingFilename != diskmeta.LayerName("s2") || i.VirtualSize != 64<<20 {
		t.Errorf("disk after freezing = %+v, want a 64 MiB overlay on %s", i, diskmeta.LayerName("s2"))
	}
	if !hasPattern(t, DiskPath(snap1), 2<<20, 64<<10, 0x11) || !hasPattern(t, DiskPath(snap2), 2<<20, 64<<10, 0x22) || !hasPattern(t, DiskPath(vol), 2<<20, 64<<10, 0x33) {
		t.Fatal("a snapshot or the volume does not read what was written when it was taken")
	}
	if !hasPattern(t, DiskPath(snap1), 0, 1<<20, 0x5a) {
		t.Error("snapshot 1 does not read the base through its chain")
	}
	// Each snapshot's disk is the frozen layer itself: nothing was copied.
	if !sameFile(DiskPath(snap1), filepath.Join(vol, diskmeta.LayerName("s1"))) || !sameFile(filepath.Join(snap2, diskmeta.LayerName("s1")), filepath.Join(vol, diskmeta.LayerName("s1"))) {
		t.Error("the snapshots do not share the volume's layers")
	}

	if err := Restore(ctx, snap1, restored, diskmeta.LayerName("s1"), 128<<20); err != nil {
		t.Fatal(err)
	}
	write(t, DiskPath(restored), 4<<20, 0x44)
	// Delete the source volume and snapshot 1 first: the restored volume
	// and snapshot 2 still read whole.
	for _, d := range []string{vol, snap1} {
		if err := os.RemoveAll(d); err != nil {
			t.Fatal(err)
		}
	}
	if !hasPattern(t, DiskPath(restored), 2<<20, 64<<10, 0x11) || !hasPattern(t, DiskPath(restored), 4<<20, 64<<10, 0x44) || !hasPattern(t, DiskPath(restored), 0, 1<<20, 0x5a) {
		t.Error("the restored volume lost data when its source and snapshot were deleted")
	}
	if i := info(t, DiskPath(restored), diskmeta.FormatQCOW2); i.VirtualSize != 128<<20 {
		t.Errorf("restored disk = %+v, want 128 MiB", i)
	}
	if !hasPattern(t, DiskPath(snap2), 2<<20, 64<<10, 0x22) {
		t.Error("snapshot 2 lost data when the volume and snapshot 1 were deleted")
	}
	for _, d := range []string{restored, snap2} {
		run(t, QemuImg, "check", "-q", "-f", diskmeta.FormatQCOW2, DiskPath(d))
	}
	if u, err := Usage(restored); err != nil || u <= 0 {
		t.Errorf("Usage of the restored volume = %d, %v", u, err)
	}
}

func TestFreezeRefusesRaw(t *testing.T) {
	requireQemuImg(t)
	dir := t.TempDir()
	if err := Create(context.Background(), dir, diskmeta.FormatRaw, 1<<20, ""); err != nil {
		t.Fatal(err)
	}
	if ok, err := CanFreeze(dir); ok || err != nil {
		t.Errorf("CanFreeze of a raw disk = %v, %v", ok, err)
	}
	if err := Freeze(context.Background(), dir, diskmeta.LayerName("x")); err == nil {
		t.Error("Freeze of a raw disk succeeded")
	}
}

// TestRecover interrupts Freeze after each of its steps: Recover leaves a
// volume that reads the data and, once the metadata names the layer, is
// frozen.
func TestRecover(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	layer := diskmeta.LayerName("c")
	for _, step := range []string{"overlay built", "linked", "meta written"} {
		t.Run(step, func(t *testing.T) {
			dir := t.TempDir()
			if err := Create(ctx, dir, diskmeta.FormatQCOW2, 16<<20, ""); err != nil {
				t.Fatal(err)
			}
			write(t, DiskPath(dir), 0, 0x77)
			run(t, QemuImg, "create", "-q", "-u", "-f", "qcow2", "-b", layer, "-F", "qcow2", filepath.Join(dir, nextName), "16M")
			if step != "overlay built" {
				if err := os.Link(DiskPath(dir), filepath.Join(dir, layer)); err != nil {
					t.Fatal(err)
				}
			}
			if step == "meta written" {
				if err := WriteMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, Layers: []string{layer}}); err != nil {
					t.Fatal(err)
				}
			}
			if err := Recover(dir); err != nil {
				t.Fatal(err)
			}
			if _, err := os.Stat(filepath.Join(dir, nextName)); !os.IsNotExist(err) {
				t.Errorf("the overlay in progress is left: %v", err)
			}
			m, err := diskmeta.Read(dir)
			if err != nil {
				t.Fatal(err)
			}
			frozen := len(m.Layers) == 1
			if frozen != (step == "meta written") {
				t.Errorf("layers %v after a crash with %s", m.Layers, step)
			}
			if _, err := os.Stat(filepath.Join(dir, layer)); frozen == os.IsNotExist(err) {
				t.Errorf("layer file after a crash with %s: %v", step, err)
			}
			if !hasPattern(t, DiskPath(dir), 0, 64<<10, 0x77) {
				t.Error("the disk lost its data")
			}
			if err := Recover(dir); err != nil { // nothing left to do
				t.Fatal(err)
			}
		})
	}
}

// TestKeepAndSettleAfterOnlineSwitch: the launcher froze a running disk
// (disk.img linked as a layer, a new top-….img over it, written to) and
// saved the guest's memory with it; the snapshot keeps the layer and the
// memory, a volume restored from it resumes from that memory, and Settle
// makes the top disk.img again and drops what the snapshot now holds.
func TestKeepAndSettleAfterOnlineSwitch(t *testing.T) {
	requireQemuImg(t)
	ctx := context.Background()
	vol, snap := t.TempDir(), t.TempDir()
	if err := Create(ctx, vol, diskmeta.FormatQCOW2, 16<<20, ""); err != nil {
		t.Fatal(err)
	}
	write(t, DiskPath(vol), 0, 0x01)
	// As the launcher does it.
	layer, top := diskmeta.LayerName("online"), "top-online.img"
	if err := os.Link(DiskPath(vol), filepath.Join(vol, layer)); err != nil {
		t.Fatal(err)
	}
	run(t, QemuImg, "create", "-q", "-u", "-f", "qcow2", "-b", layer, "-F", "qcow2", filepath.Join(vol, top), "16M")
	if err := WriteMeta(vol, diskmeta.Meta{Format: diskmeta.FormatQCOW2, Layers: []string{layer}, Top: top}); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(vol, top), 0, 0x02)
	if size, err := VirtualSize(ctx, vol); err != nil || size != 16<<20 {
		t.Errorf("VirtualSize = %d, %v", size, err)
	}

	// The guest's memory saved with the layer (an includeMemory snapshot).
	if err := os.WriteFile(filepath.Join(vol, diskmeta.MemoryFor(layer)), []byte("memory state"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ok, err := Frozen(vol, layer); !ok || err != nil {
		t.Fatalf("Frozen = %v, %v", ok, err)
	}
	if err := Keep(vol, layer, snap); err != nil {
		t.Fatal(err)
	}
	if !hasPattern(t, DiskPath(snap), 0, 64<<10, 0x01) {
		t.Error("the snapshot does not hold the disk as it was frozen")
	}
	if !sameFile(filepath.Join(snap, diskmeta.MemoryName), filepath.Join(vol, diskmeta.MemoryFor(layer))) {
		t.Error("the snapshot does not keep the memory saved with its layer")
	}
	// Restored, the volume resumes from that memory.
	restored := t.TempDir()
	if err := Restore(ctx, snap, restored, diskmeta.LayerName("r"), 16<<20); err != nil {
		t.Fatal(err)
	}
	if rm, err := diskmeta.Read(restored); err != nil || rm.Resume != diskmeta.MemoryName || !sameFile(filepath.Join(restored, diskmeta.MemoryName), filepath.Join(snap, diskmeta.MemoryName)) {
		t.Errorf("restored volume %+v, %v: want it to resume from the snapshot's memory", rm, err)
	}
	if err := Settle(vol); err != nil {
		t.Fatal(err)
	}
	m, err := diskmeta.Read(vol)
	if err != nil || m.Top != "" || len(m.Layers) != 1 {
		t.Fatalf("meta after Settle %+v, %v", m, err)
	}
	for _, f := range []string{top, diskmeta.MemoryFor(layer)} {
		if _, err := os.Stat(filepath.Join(vol, f)); !os.IsNotExist(err) {
			t.Errorf("%s is left after Settle: %v", f, err)
		}
	}
	if !hasPattern(t, DiskPath(vol), 0, 64<<10, 0x02) {
		t.Error("disk.img after Settle does not read what was written to the top")
	}
	if err := Settle(vol); err != nil { // nothing left to do
		t.Fatal(err)
	}
	// A copy flattens the layers into one standalone disk.
	cp := t.TempDir()
	if err := Copy(ctx, vol, cp, diskmeta.FormatQCOW2, 16<<20, "", false); err != nil {
		t.Fatal(err)
	}
	if cm, err := diskmeta.Read(cp); err != nil || len(cm.Layers) != 0 || !hasPattern(t, DiskPath(cp), 0, 64<<10, 0x02) {
		t.Errorf("copy of a layered volume: meta %+v, %v", cm, err)
	}
}
