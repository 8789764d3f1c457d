// Package volume owns the on-disk layout of a disk.podvirt.io volume and
// every change to its disk image.
//
// A volume (and a snapshot) is a directory:
//
//	disk.img          the disk (v1alpha1.DiskImageName), qcow2 or raw
//	base.img          only for overlays: the read-only base disk.img is
//	                  backed by, named relatively so the chain resolves
//	                  wherever the directory is mounted (the launcher pod)
//	podvirt-disk.json Meta: the formats, so nothing is ever probed
//
// The launcher reads Meta through ReadMeta to declare the disk's format to
// libvirt. Every qemu-img call states the format of each image it opens
// (-f, -F): a guest-written raw disk probed as qcow2 could point QEMU at a
// host file.
package volume

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// Disk formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// Names inside a volume directory.
const (
	// DiskName is the disk image.
	DiskName = v1.DiskImageName
	// BaseName is the backing file of an overlay.
	BaseName = "base.img"
	// MetaName is the metadata file.
	MetaName = "podvirt-disk.json"
)

// Meta is what a volume directory says about its disk.
type Meta struct {
	// Format of disk.img: "qcow2" or "raw".
	Format string `json:"format"`
	// BaseFormat is the format of base.img; empty when the disk has no
	// backing file.
	BaseFormat string `json:"baseFormat,omitempty"`
	// Source is the image the disk was made from, for people reading the
	// directory (docker://…, https://…); empty for empty disks.
	Source string `json:"source,omitempty"`
	// Digest of the source image in the node cache.
	Digest string `json:"digest,omitempty"`
}

// HasBase reports whether the disk is an overlay on base.img.
func (m Meta) HasBase() bool { return m.BaseFormat != "" }

// ValidFormat reports whether f is a disk format volumes use.
func ValidFormat(f string) bool { return f == FormatQCOW2 || f == FormatRaw }

// ReadMeta reads the metadata of the volume directory dir.
func ReadMeta(dir string) (Meta, error) {
	b, err := os.ReadFile(filepath.Join(dir, MetaName))
	if err != nil {
		return Meta{}, fmt.Errorf("read disk metadata of volume %s: %w (is it a disk.podvirt.io volume?)", dir, err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("decode disk metadata %s: %w", filepath.Join(dir, MetaName), err)
	}
	if !ValidFormat(m.Format) {
		return Meta{}, fmt.Errorf("disk metadata %s: format %q: must be %q or %q", filepath.Join(dir, MetaName), m.Format, FormatQCOW2, FormatRaw)
	}
	if m.BaseFormat != "" && !ValidFormat(m.BaseFormat) {
		return Meta{}, fmt.Errorf("disk metadata %s: base format %q: must be %q or %q", filepath.Join(dir, MetaName), m.BaseFormat, FormatQCOW2, FormatRaw)
	}
	return m, nil
}

// WriteMeta writes m into dir atomically.
func WriteMeta(dir string, m Meta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, MetaName), append(b, '\n'), 0o644)
}

// WriteFileAtomic replaces path with data so a reader (or a crash) sees the
// old content or the new one, never a mix: write a temporary file in the
// same directory, fsync it, rename it over path, fsync the directory.
func WriteFileAtomic(path string, data []byte, perm os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	tmp := f.Name()
	_, err = f.Write(data)
	if err == nil {
		err = f.Chmod(perm)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// DiskPath is the disk image of the volume directory dir.
func DiskPath(dir string) string { return filepath.Join(dir, DiskName) }

// Usage is how much a volume directory holds on the host: the blocks its
// files occupy (a base shared with the cache is counted, since it is
// linked).
func Usage(dir string) (int64, error) {
	var total int64
	for _, name := range []string{DiskName, BaseName} {
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
