// Package poddisk finds, inside the launcher pod, the disk of a volume the
// disk.podvirt.io CSI driver provides, with the format the volume declares,
// so the launcher never lets QEMU probe a format: a Block volume is a raw
// device; a Filesystem volume's directory carries metadata (csi/volume)
// naming the format of its disk.img.
package poddisk

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/runtime/converter"
)

// Source is the disk of volume under diskDir (v1alpha1.DiskDir in the pod):
// the device <diskDir>/<volume>.dev, raw, or <diskDir>/<volume>/disk.img in
// the format its metadata declares. ok is false when the volume has
// neither (not a disk.podvirt.io volume), so the caller keeps its default.
func Source(diskDir, name string) (src converter.DiskSource, ok bool, err error) {
	dev := filepath.Join(diskDir, name+".dev")
	if fi, err := os.Stat(dev); err == nil && fi.Mode()&os.ModeDevice != 0 {
		return converter.DiskSource{Path: dev, Format: diskmeta.FormatRaw, Block: true}, true, nil
	}
	dir := filepath.Join(diskDir, name)
	if _, err := os.Stat(filepath.Join(dir, diskmeta.FileName)); errors.Is(err, os.ErrNotExist) {
		return converter.DiskSource{}, false, nil
	}
	m, err := diskmeta.Read(dir)
	if err != nil {
		return converter.DiskSource{}, false, fmt.Errorf("volume %s: %w", name, err)
	}
	return converter.DiskSource{Path: filepath.Join(dir, v1.DiskImageName), Format: m.Format}, true, nil
}
