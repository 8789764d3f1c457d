// Package diskmeta is the metadata file of a disk.podvirt.io volume: the
// CSI driver writes it into every volume directory (csi/volume), the
// launcher reads it to declare the disk's format to libvirt (runtime/poddisk),
// so no one ever probes a format — a guest-written raw disk probed as qcow2
// could point QEMU at a host file through a backing file.
package diskmeta

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// Disk formats.
const (
	FormatQCOW2 = "qcow2"
	FormatRaw   = "raw"
)

// FileName is the metadata file in a volume directory.
const FileName = "podvirt-disk.json"

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
	// Layers are the read-only qcow2 images between disk.img and base.img,
	// nearest first, each named relatively in the one above: a snapshot
	// froze the disk there. Their names start with "layer-" and end in
	// ".img".
	Layers []string `json:"layers,omitempty"`
	// Top is the writable image when it is not disk.img: an online
	// snapshot switched the running VM to a new overlay (top-….img) and
	// disk.img names the frozen layer too. The CSI driver renames Top back
	// to disk.img before the volume is next published.
	Top string `json:"top,omitempty"`
	// Resume is a saved memory state (memory.img) the launcher resumes the
	// guest from at its next start instead of booting it: the volume was
	// restored from a snapshot that included the VM's memory. The launcher
	// clears it once used.
	Resume string `json:"resume,omitempty"`
}

// MemoryFor is the memory state an online snapshot that includes memory
// saves beside the disk frozen at layer.
func MemoryFor(layer string) string {
	return "memory-" + strings.TrimSuffix(strings.TrimPrefix(layer, "layer-"), ".img") + ".img"
}

// MemoryName is a snapshot's, or a restored volume's, memory state.
const MemoryName = "memory.img"

// TopName is the writable image of the volume.
func (m Meta) TopName() string {
	if m.Top != "" {
		return m.Top
	}
	return "disk.img"
}

// LayerName is the layer a disk is frozen at for the snapshot id (the
// CSI snapshot's ID, or the VolumeSnapshot's name for a running disk the
// launcher froze).
func LayerName(id string) string { return "layer-" + id + ".img" }

// TopFor is the overlay a running disk switches to when it is frozen at
// layer.
func TopFor(layer string) string {
	return "top-" + strings.TrimSuffix(strings.TrimPrefix(layer, "layer-"), ".img") + ".img"
}

// ValidLayerName reports whether name can name a layer: a plain file name
// in the volume directory, never a path out of it.
func ValidLayerName(name string) bool {
	return strings.HasPrefix(name, "layer-") && strings.HasSuffix(name, ".img") && len(name) > len("layer-.img") &&
		!strings.ContainsAny(name, "/\\") && !strings.Contains(name, "..")
}

// HasBase reports whether the disk is an overlay on base.img.
func (m Meta) HasBase() bool { return m.BaseFormat != "" }

// ValidFormat reports whether f is a disk format volumes use.
func ValidFormat(f string) bool { return f == FormatQCOW2 || f == FormatRaw }

// Path is the metadata file of the volume directory dir.
func Path(dir string) string { return filepath.Join(dir, FileName) }

// Read reads the metadata of the volume directory dir.
func Read(dir string) (Meta, error) {
	b, err := os.ReadFile(Path(dir))
	if err != nil {
		return Meta{}, fmt.Errorf("read disk metadata of volume %s: %w (is it a disk.podvirt.io volume?)", dir, err)
	}
	var m Meta
	if err := json.Unmarshal(b, &m); err != nil {
		return Meta{}, fmt.Errorf("decode disk metadata %s: %w", Path(dir), err)
	}
	if !ValidFormat(m.Format) {
		return Meta{}, fmt.Errorf("disk metadata %s: format %q: must be %q or %q", Path(dir), m.Format, FormatQCOW2, FormatRaw)
	}
	for _, l := range m.Layers {
		if !ValidLayerName(l) {
			return Meta{}, fmt.Errorf("disk metadata %s: layer %q: must be a file name layer-….img", Path(dir), l)
		}
	}
	if m.Top != "" && (!strings.HasPrefix(m.Top, "top-") || !strings.HasSuffix(m.Top, ".img") || strings.ContainsAny(m.Top, "/\\") || strings.Contains(m.Top, "..")) {
		return Meta{}, fmt.Errorf("disk metadata %s: top %q: must be a file name top-….img", Path(dir), m.Top)
	}
	if m.Resume != "" && m.Resume != MemoryName {
		return Meta{}, fmt.Errorf("disk metadata %s: resume %q: must be %s", Path(dir), m.Resume, MemoryName)
	}
	if m.BaseFormat != "" && !ValidFormat(m.BaseFormat) {
		return Meta{}, fmt.Errorf("disk metadata %s: base format %q: must be %q or %q", Path(dir), m.BaseFormat, FormatQCOW2, FormatRaw)
	}
	return m, nil
}

// Encode is m as the metadata file holds it.
func Encode(m Meta) ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, err
	}
	return append(b, '\n'), nil
}

// QCOW2Room is what a qcow2 of virtual size v may need beyond v for its
// metadata (L1/L2 and refcount tables), at the smallest cluster size: the
// largest file a disk of v bytes can be, less v.
func QCOW2Room(v int64) int64 { return v/32 + 16<<20 }
