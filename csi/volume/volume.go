// Package volume owns the on-disk layout of a disk.podvirt.io volume and
// every change to its disk image.
//
// A volume (and a snapshot) is a directory:
//
//	disk.img          the disk (v1alpha1.DiskImageName), qcow2 or raw
//	base.img          only for overlays: the read-only base disk.img is
//	                  backed by, named relatively so the chain resolves
//	                  wherever the directory is mounted (the launcher pod)
//	layer-ID.img      read-only qcow2 layers between disk.img and base.img,
//	                  where snapshots froze the disk (Freeze); snapshots and
//	                  volumes restored from them share these files by hard
//	                  links, so any of them can be deleted first
//	podvirt-disk.json the formats, so nothing is ever probed
//	                  (contracts/diskmeta: the launcher reads it)
//
// Every qemu-img call states the format of each image it opens
// (-f, -F): a guest-written raw disk probed as qcow2 could point QEMU at a
// host file.
package volume

import (
	"errors"
	"os"
	"path/filepath"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/internal/atomicfile"
)

// Names inside a volume directory.
const (
	// DiskName is the disk image.
	DiskName = v1.DiskImageName
	// BaseName is the backing file of an overlay.
	BaseName = "base.img"
)

// WriteMeta writes m into dir atomically.
func WriteMeta(dir string, m diskmeta.Meta) error {
	b, err := diskmeta.Encode(m)
	if err != nil {
		return err
	}
	return atomicfile.Write(diskmeta.Path(dir), b, 0o644)
}

// DiskPath is the disk image of the volume directory dir.
func DiskPath(dir string) string { return filepath.Join(dir, DiskName) }

// Usage is how much a volume directory holds on the host: the blocks its
// images occupy (a base or layer shared with the cache or a snapshot is
// counted, since it is linked).
func Usage(dir string) (int64, error) {
	m, err := diskmeta.Read(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return 0, err
	}
	var total int64
	names := append([]string{DiskName, BaseName}, m.Layers...)
	if m.Top != "" {
		names = append(names, m.Top)
	}
	for _, name := range names {
		fi, err := os.Stat(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, err
		}
		total += allocated(fi)
	}
	return total, nil
}
