package volume

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// nextName is the overlay Freeze builds before it becomes disk.img.
const nextName = DiskName + ".next"

// CanFreeze reports whether the disk of dir can be frozen in O(1): only a
// qcow2 disk can carry an overlay.
func CanFreeze(dir string) (bool, error) {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return false, err
	}
	return m.Format == diskmeta.FormatQCOW2, nil
}

// Freeze makes the disk of dir read-only under the name layer and puts an
// empty overlay on it as the new disk.img: no data is copied. Nothing may
// hold disk.img open (the caller knows the volume is not published). A
// Freeze of the same layer again does nothing.
//
// The steps are ordered so that Recover finishes or undoes a crash at any
// point: the overlay is built aside, the disk linked as the layer, the
// metadata written, and only then the overlay renamed over disk.img.
func Freeze(ctx context.Context, dir, layer string) error {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	if slices.Contains(m.Layers, layer) {
		return nil
	}
	if m.Top != "" {
		if err := Settle(dir); err != nil {
			return err
		}
		if m, err = diskmeta.Read(dir); err != nil {
			return err
		}
	}
	if m.Format != diskmeta.FormatQCOW2 {
		return fmt.Errorf("volume %s holds a %s disk: only qcow2 disks can be frozen under an overlay", dir, m.Format)
	}
	size, err := imageSize(ctx, DiskPath(dir), m.Format)
	if err != nil {
		return err
	}
	next := filepath.Join(dir, nextName)
	if err := os.Remove(next); err != nil && !errors.Is(err, os.ErrNotExist) {
		return err
	}
	// -u: the backing file is named before it exists under that name.
	if err := qemuImgIn(ctx, dir, "create", "-q", "-u", "-f", diskmeta.FormatQCOW2, "-b", layer, "-F", diskmeta.FormatQCOW2, nextName, strconv.FormatInt(size, 10)); err != nil {
		return err
	}
	if err := syncFile(next); err != nil {
		return err
	}
	if err := os.Link(DiskPath(dir), filepath.Join(dir, layer)); err != nil && !sameFile(DiskPath(dir), filepath.Join(dir, layer)) {
		return fmt.Errorf("freeze the disk of %s as %s: %w", dir, layer, err)
	}
	m.Layers = append([]string{layer}, m.Layers...)
	if err := WriteMeta(dir, m); err != nil {
		return err
	}
	if err := os.Rename(next, DiskPath(dir)); err != nil {
		return err
	}
	return syncFile(dir)
}

// Recover finishes or undoes a Freeze that a crash interrupted in dir.
func Recover(dir string) error {
	next := filepath.Join(dir, nextName)
	if _, err := os.Stat(next); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	disk := DiskPath(dir)
	if len(m.Layers) > 0 && sameFile(disk, filepath.Join(dir, m.Layers[0])) {
		// The metadata already names the layer: only the rename is left.
		return os.Rename(next, disk)
	}
	// The metadata was not written: disk.img is still the disk. Drop the
	// overlay and any link made to the disk.
	links, err := filepath.Glob(filepath.Join(dir, diskmeta.LayerName("*")))
	if err != nil {
		return err
	}
	for _, l := range links {
		if !slices.Contains(m.Layers, filepath.Base(l)) && sameFile(disk, l) {
			if err := os.Remove(l); err != nil {
				return err
			}
		}
	}
	return os.Remove(next)
}

// Frozen reports whether the disk of dir was frozen at layer (by Freeze,
// or by the launcher switching a running disk to a new overlay).
func Frozen(dir, layer string) (bool, error) {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return false, err
	}
	return slices.Contains(m.Layers, layer), nil
}

// Keep makes the new directory snap hold the disk of dir as it was frozen
// at layer by hard links: snap's disk.img is the layer, and the layers and
// base beneath it keep their names. O(1) in the disk's size; deleting
// either directory later leaves the other whole.
func Keep(dir, layer, snap string) error {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	i := slices.Index(m.Layers, layer)
	if i < 0 {
		return fmt.Errorf("volume %s is not frozen at %s", dir, layer)
	}
	if err := os.Link(filepath.Join(dir, layer), DiskPath(snap)); err != nil {
		return fmt.Errorf("keep layer %s of %s: %w", layer, dir, err)
	}
	// The guest's memory, when the launcher saved it with the layer.
	if err := os.Link(filepath.Join(dir, diskmeta.MemoryFor(layer)), filepath.Join(snap, diskmeta.MemoryName)); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("keep the memory saved with layer %s of %s: %w", layer, dir, err)
	}
	m.Layers, m.Top, m.Resume = m.Layers[i+1:], "", ""
	if err := linkChain(dir, snap, m); err != nil {
		return err
	}
	return WriteMeta(snap, m)
}

// Restore makes dir an empty overlay of size bytes on the disk of the
// snapshot directory snap (made by Keep), linked into dir as layer: O(1),
// whatever the snapshot holds.
func Restore(ctx context.Context, snap, dir, layer string, size int64) error {
	m, err := diskmeta.Read(snap)
	if err != nil {
		return err
	}
	if m.Format != diskmeta.FormatQCOW2 {
		return fmt.Errorf("snapshot %s holds a %s disk: only qcow2 disks restore as an overlay", snap, m.Format)
	}
	if slices.Contains(m.Layers, layer) {
		return fmt.Errorf("snapshot %s already has a layer %s", snap, layer)
	}
	if err := os.Link(DiskPath(snap), filepath.Join(dir, layer)); err != nil {
		return fmt.Errorf("link the disk of snapshot %s: %w", snap, err)
	}
	if err := linkChain(snap, dir, m); err != nil {
		return err
	}
	if err := qemuImgIn(ctx, dir, "create", "-q", "-u", "-f", diskmeta.FormatQCOW2, "-b", layer, "-F", diskmeta.FormatQCOW2, DiskName, strconv.FormatInt(size, 10)); err != nil {
		return err
	}
	m.Layers = append([]string{layer}, m.Layers...)
	// A snapshot with the guest's memory: the guest resumes from it.
	if err := os.Link(filepath.Join(snap, diskmeta.MemoryName), filepath.Join(dir, diskmeta.MemoryName)); err == nil {
		m.Resume = diskmeta.MemoryName
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("link the memory of snapshot %s: %w", snap, err)
	}
	return finish(dir, m)
}

// Settle makes disk.img the writable image again after online snapshots
// switched a running VM to top-….img (diskmeta Top), and drops the names
// earlier switches left; nothing may hold the volume open. A Settle a
// crash interrupted is finished by the next one.
func Settle(dir string) error {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	if m.Top != "" {
		top := filepath.Join(dir, m.Top)
		if _, err := os.Stat(top); err == nil {
			if err := os.Rename(top, DiskPath(dir)); err != nil {
				return err
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			return err
		}
		m.Top = ""
		if err := WriteMeta(dir, m); err != nil {
			return err
		}
	}
	// Other top-….img are names of layers now: no header refers to them.
	// Memory states saved with layers are the snapshots' by now (they
	// link them), and a resume already used is done with.
	stale, err := filepath.Glob(filepath.Join(dir, "top-*.img"))
	if err != nil {
		return err
	}
	memories, err := filepath.Glob(filepath.Join(dir, diskmeta.MemoryFor("layer-*.img")))
	if err != nil {
		return err
	}
	stale = append(stale, memories...)
	if m.Resume == "" {
		stale = append(stale, filepath.Join(dir, diskmeta.MemoryName))
	}
	for _, f := range stale {
		if err := os.Remove(f); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
	}
	return syncFile(dir)
}

// linkChain links the layers and base m names from directory from into to.
func linkChain(from, to string, m diskmeta.Meta) error {
	names := slices.Clone(m.Layers)
	if m.HasBase() {
		names = append(names, BaseName)
	}
	for _, n := range names {
		if err := os.Link(filepath.Join(from, n), filepath.Join(to, n)); err != nil {
			return fmt.Errorf("link %s of %s: %w", n, from, err)
		}
	}
	return nil
}

func sameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// syncFile flushes a file or directory to disk.
func syncFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", path, err)
	}
	return nil
}
