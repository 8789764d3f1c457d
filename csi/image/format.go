package image

import (
	"bytes"
	"encoding/binary"
	"fmt"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// HeaderSize is how many leading bytes DetectFormat and ParseQCOW2Header want.
const HeaderSize = 4096

const qcow2Magic = "QFI\xfb"

// foreign are formats qemu-img knows but a base may not be: their drivers open other
// files (VMDK extents, …) or are rarely what a user meant. Offsets and magics follow each
// format's specification.
var foreign = []struct {
	name   string
	offset int
	magic  string
}{
	{"vmdk", 0, "KDMV"},
	{"vmdk descriptor", 0, "# Disk DescriptorFile"},
	{"vhdx", 0, "vhdxfile"},
	{"vpc (vhd)", 0, "conectix"},
	{"vdi", 0x40, "\x7f\x10\xda\xbe"},
	{"qed", 0, "QED\x00"},
	{"luks", 0, "LUKS\xba\xbe"},
	{"parallels", 0, "WithoutFreeSpace"},
	{"parallels", 0, "WithouFreSpacExt"},
	{"bochs", 0, "Bochs Virtual HD Image"},
	{"cloop", 0, "#!/bin/sh\n#V2.0 Format\n"},
	{"dmg", 0, "koly"},
}

// notDisks are things people put under /disk/ by mistake.
var notDisks = []struct {
	name  string
	magic string
}{
	{"gzip data (name the file .gz)", "\x1f\x8b"},
	{"xz data (name the file .xz)", "\xfd7zXZ\x00"},
	{"zstd data", "\x28\xb5\x2f\xfd"},
	{"a zip archive", "PK\x03\x04"},
	{"an ELF executable", "\x7fELF"},
	{"a shell script", "#!"},
}

// DetectFormat names the format of an image from its first bytes (up to HeaderSize) and
// its size, without asking qemu-img to probe (probing untrusted files is what qemu-img
// warns against). Anything that is neither qcow2 nor a plausible raw disk is refused.
func DetectFormat(file string, header []byte, size int64) (string, error) {
	if size == 0 {
		return "", refuse(ReasonEmpty, file, "put a qcow2 or raw disk image in the containerDisk under /disk/", "the disk file is empty")
	}
	if bytes.HasPrefix(header, []byte(qcow2Magic)) {
		return diskmeta.FormatQCOW2, nil
	}
	for _, f := range foreign {
		if len(header) >= f.offset+len(f.magic) && string(header[f.offset:f.offset+len(f.magic)]) == f.magic {
			return "", refuse(ReasonUnsupported, file, "convert it with `qemu-img convert -O qcow2`", "it is a %s image; only qcow2 and raw are accepted", f.name)
		}
	}
	for _, f := range notDisks {
		if bytes.HasPrefix(header, []byte(f.magic)) {
			return "", refuse(ReasonNotAnImage, file, "put a qcow2 or raw disk image under /disk/", "it is %s, not a disk image", f.name)
		}
	}
	if size%512 != 0 {
		return "", refuse(ReasonNotAnImage, file, "put a qcow2 or raw disk image under /disk/",
			"it has no qcow2 header and its size (%d bytes) is not a whole number of 512-byte sectors, so it is not a raw disk either", size)
	}
	return diskmeta.FormatRaw, nil
}

// QCOW2Header holds the fields of a qcow2 header that decide whether it is safe to use.
type QCOW2Header struct {
	Version             uint32
	BackingFileOffset   uint64
	BackingFileSize     uint32
	ClusterBits         uint32
	Size                uint64
	CryptMethod         uint32
	IncompatibleFeature uint64
}

// Incompatible feature bits (qcow2 specification, "incompatible_features").
const (
	qcow2Dirty        = 1 << 0
	qcow2Corrupt      = 1 << 1
	qcow2ExternalData = 1 << 2
)

// ParseQCOW2Header reads the big-endian qcow2 header fields (spec: docs/interop/qcow2.txt).
func ParseQCOW2Header(b []byte) (QCOW2Header, error) {
	var h QCOW2Header
	if len(b) < 72 || string(b[:4]) != qcow2Magic {
		return h, fmt.Errorf("not a qcow2 header")
	}
	be := binary.BigEndian
	h.Version = be.Uint32(b[4:])
	h.BackingFileOffset = be.Uint64(b[8:])
	h.BackingFileSize = be.Uint32(b[16:])
	h.ClusterBits = be.Uint32(b[20:])
	h.Size = be.Uint64(b[24:])
	h.CryptMethod = be.Uint32(b[32:])
	if h.Version >= 3 {
		if len(b) < 104 {
			return h, fmt.Errorf("qcow2 v3 header is truncated")
		}
		h.IncompatibleFeature = be.Uint64(b[72:])
	}
	return h, nil
}

// CheckQCOW2Header refuses what must never reach qemu-img: a backing file or external data
// file (qemu-img would open a path of the image's choosing on this host), encryption, an
// absurd virtual size.
func CheckQCOW2Header(file string, b []byte, maxVirtualSize int64) (QCOW2Header, error) {
	h, err := ParseQCOW2Header(b)
	if err != nil {
		return h, refuse(ReasonCorrupt, file, "rebuild the image with `qemu-img convert -O qcow2`", "%v", err)
	}
	if h.Version != 2 && h.Version != 3 {
		return h, refuse(ReasonCorrupt, file, "rebuild the image with `qemu-img convert -O qcow2`", "qcow2 version %d is not 2 or 3", h.Version)
	}
	if h.BackingFileOffset != 0 || h.BackingFileSize != 0 {
		return h, refuse(ReasonBackingFile, file, "flatten it first: `qemu-img convert -O qcow2 in.qcow2 out.qcow2`",
			"the qcow2 names a backing file (%s); a base must be self-contained", backingName(b, h))
	}
	if h.IncompatibleFeature&qcow2ExternalData != 0 {
		return h, refuse(ReasonDataFile, file, "convert it to a self-contained image with `qemu-img convert -O qcow2`",
			"the qcow2 keeps its data in an external data file")
	}
	if h.CryptMethod != 0 {
		return h, refuse(ReasonEncrypted, file, "publish an unencrypted image (`qemu-img convert -O qcow2` with the key)",
			"the qcow2 is encrypted (method %d); the node has no key for it", h.CryptMethod)
	}
	if h.IncompatibleFeature&qcow2Corrupt != 0 {
		return h, refuse(ReasonCorrupt, file, "repair it with `qemu-img check -r all` and publish it again", "the qcow2 is marked corrupt")
	}
	if h.ClusterBits < 9 || h.ClusterBits > 21 {
		return h, refuse(ReasonCorrupt, file, "rebuild the image with `qemu-img convert -O qcow2`", "cluster_bits %d is out of range 9..21", h.ClusterBits)
	}
	if err := checkVirtualSize(file, h.Size, maxVirtualSize); err != nil {
		return h, err
	}
	return h, nil
}

func checkVirtualSize(file string, size uint64, max int64) error {
	if max > 0 && size > uint64(max) {
		return refuse(ReasonVirtualSize, file, "use a smaller image, or raise the node's maximum virtual size if it is really meant",
			"virtual size %d bytes is above the limit of %d bytes", size, max)
	}
	return nil
}

// backingName returns the backing file name for the error message, when it lies in b.
func backingName(b []byte, h QCOW2Header) string {
	end := h.BackingFileOffset + uint64(h.BackingFileSize)
	if h.BackingFileSize == 0 || h.BackingFileSize > 1023 || end > uint64(len(b)) || end < h.BackingFileOffset {
		return "name outside the header"
	}
	return fmt.Sprintf("%q", b[h.BackingFileOffset:end])
}
