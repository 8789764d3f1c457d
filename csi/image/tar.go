package image

import (
	"archive/tar"
	"path"
	"strings"
)

// Compression of the disk file inside a containerDisk, from its name.
type Compression string

// Compressions a disk file may have.
const (
	None Compression = ""
	Gzip Compression = "gzip"
	XZ   Compression = "xz"
)

// DiskDir is where a containerDisk keeps its disk.
const DiskDir = "disk"

// OCI whiteouts (image-spec layer.md): ".wh.<name>" deletes <name> of the
// lower layers; ".wh..wh..opq" in a directory deletes everything the lower
// layers put there. Neither touches its own layer.
const (
	whiteoutPrefix = ".wh."
	opaqueWhiteout = ".wh..wh..opq"
)

var diskExts = []string{".qcow2", ".raw", ".img"}

// DiskSelector picks the disk out of a containerDisk's layer tars as a
// container runtime would see the image: exactly one regular file directly
// under /disk/ named *.qcow2, *.raw or *.img (optionally + .gz or .xz) in the
// unpacked image. Later layers may replace the disk (same path), delete it
// (whiteout, opaque whiteout of /disk/ or of the root) and add another.
//
// It reads the layers once, in order, so the disk is streamed as it comes:
// when a later entry replaces or deletes the disk streamed so far, Next says
// Restart and the caller drops what it wrote. Call Layer before each layer's
// entries and Done after the last.
//
// The exported fields are its whole state (a resumed import restores them).
type DiskSelector struct {
	Image string `json:"-"` // the image reference, for messages
	// Disk is the disk file selected so far ("" if none), e.g. /disk/disk.qcow2.
	Disk string `json:"disk,omitempty"`
	// DiskLayer is the layer Disk comes from.
	DiskLayer int `json:"diskLayer"`
	// Replaced is a disk of a lower layer that Disk, from another path, took
	// over from; unless the current layer deletes it, the image holds two.
	Replaced     string `json:"replaced,omitempty"`
	ReplacedGone bool   `json:"replacedGone,omitempty"`
	// CurrentLayer is the layer being read.
	CurrentLayer int `json:"layer"`
}

// Verdict is what the selector makes of one tar entry.
type Verdict struct {
	// Disk: this entry is the disk; read its data from the tar reader.
	Disk        bool
	Compression Compression
	// Restart: the disk written so far is no longer in the image (deleted or
	// replaced); drop it before writing anything else.
	Restart bool
}

// Layer starts layer i. It refuses the image when the layer before left two
// disks (a new one and the one it did not delete).
func (s *DiskSelector) Layer(i int) error {
	if err := s.endLayer(); err != nil {
		return err
	}
	s.CurrentLayer = i
	return nil
}

// Done ends the last layer: the image must hold exactly one disk.
func (s *DiskSelector) Done(layers, entries int) error {
	if err := s.endLayer(); err != nil {
		return err
	}
	if s.Disk == "" {
		return s.noDisk(layers, entries)
	}
	return nil
}

func (s *DiskSelector) endLayer() error {
	if s.Replaced != "" && !s.ReplacedGone {
		return refuse(ReasonSeveralDisks, s.Image, "keep exactly one disk file under /disk/, or delete the old one in the layer that adds the new one",
			"it holds several disk files under /disk/ (%s and %s)", s.Replaced, s.Disk)
	}
	s.Replaced, s.ReplacedGone = "", false
	return nil
}

// Next judges one tar entry of the current layer. Entries that escape the
// layer root are refused whatever they are: a tar that tries it is hostile.
func (s *DiskSelector) Next(h *tar.Header) (Verdict, error) {
	name := h.Name
	if strings.ContainsRune(name, 0) {
		return Verdict{}, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool", "tar entry %q contains a NUL byte", name)
	}
	if escapes(name) {
		return Verdict{}, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool (docker build, buildah)",
			"tar entry %q escapes the layer root", name)
	}
	if h.Typeflag == tar.TypeLink && escapes(h.Linkname) {
		return Verdict{}, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool (docker build, buildah)",
			"tar hard link %q -> %q escapes the layer root", name, h.Linkname)
	}
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	dir, base := path.Split(clean)
	dir = strings.TrimSuffix(dir, "/")
	switch {
	case clean == DiskDir:
		return s.diskDirEntry(h)
	case dir == "" && (base == opaqueWhiteout || base == whiteoutPrefix+DiskDir),
		dir == DiskDir && base == opaqueWhiteout:
		return s.lowerDeleted(), nil
	case dir != DiskDir:
		return Verdict{}, nil
	case strings.HasPrefix(base, whiteoutPrefix):
		gone := "/" + DiskDir + "/" + strings.TrimPrefix(base, whiteoutPrefix)
		if gone == s.Replaced {
			s.ReplacedGone = true
		}
		if gone == s.Disk {
			return s.lowerDeleted(), nil
		}
		return Verdict{}, nil
	}
	comp := None
	stem := base
	switch {
	case strings.HasSuffix(base, ".gz"):
		comp, stem = Gzip, strings.TrimSuffix(base, ".gz")
	case strings.HasSuffix(base, ".xz"):
		comp, stem = XZ, strings.TrimSuffix(base, ".xz")
	}
	isDiskName := false
	for _, ext := range diskExts {
		if strings.HasSuffix(stem, ext) && len(stem) > len(ext) {
			isDiskName = true
		}
	}
	if !isDiskName {
		return Verdict{}, nil
	}
	if h.Typeflag != tar.TypeReg { // the reader reports old-style regular files (TypeRegA) as TypeReg
		return Verdict{}, refuse(ReasonNotAnImage, s.Image, "put the disk itself under /disk/, not a link",
			"/%s is not a regular file (tar type %q)", clean, h.Typeflag)
	}
	v := Verdict{Disk: true, Compression: comp}
	switch p := "/" + clean; {
	case s.Disk == "":
	case s.Disk == p: // a later entry of the same path wins
		v.Restart = true
	case s.DiskLayer == s.CurrentLayer:
		return Verdict{}, refuse(ReasonSeveralDisks, s.Image, "keep exactly one disk file under /disk/",
			"it holds several disk files under /disk/ (%s and %s)", s.Disk, p)
	default: // a disk of a lower layer: fine if this layer deletes it
		s.Replaced, s.ReplacedGone = s.Disk, false
		v.Restart = true
	}
	s.Disk, s.DiskLayer = "/"+clean, s.CurrentLayer
	return v, nil
}

// diskDirEntry judges an entry for /disk itself. A link there would make
// the disk's path depend on where the link points; podvirt reads /disk as a
// plain directory only.
func (s *DiskSelector) diskDirEntry(h *tar.Header) (Verdict, error) {
	switch h.Typeflag {
	case tar.TypeDir:
		return Verdict{}, nil
	case tar.TypeSymlink, tar.TypeLink:
		return Verdict{}, refuse(ReasonUnsupported, s.Image, "make /disk a real directory holding the disk file",
			"/disk is a link to %q; podvirt does not follow links to find the disk", h.Linkname)
	}
	return s.lowerDeleted(), nil // a file in place of the directory hides what it held
}

// lowerDeleted: the current layer deletes what the lower layers put under
// /disk/, the selected disk included when it comes from one of them.
func (s *DiskSelector) lowerDeleted() Verdict {
	if s.Replaced != "" {
		s.ReplacedGone = true
	}
	if s.Disk == "" || s.DiskLayer == s.CurrentLayer {
		return Verdict{}
	}
	s.Disk = ""
	return Verdict{Restart: true}
}

// escapes reports whether a tar path leaves the directory it is unpacked in.
func escapes(p string) bool {
	// An absolute name is unpacked relative to the layer root by every runtime, so only
	// ".." beyond the root escapes.
	depth := 0
	for _, part := range strings.Split(strings.TrimLeft(p, "/"), "/") {
		switch part {
		case "", ".":
		case "..":
			depth--
			if depth < 0 {
				return true
			}
		default:
			depth++
		}
	}
	return false
}

// noDisk is the refusal for an image whose layers hold no disk file.
func (s *DiskSelector) noDisk(layers, entries int) error {
	if layers == 0 || entries == 0 {
		return refuse(ReasonEmpty, s.Image, "build the containerDisk with the disk under /disk/", "its %d layer(s) are empty", layers)
	}
	return refuse(ReasonNoDisk, s.Image, "build the containerDisk with one .qcow2/.raw/.img (optionally .gz/.xz) file under /disk/",
		"none of its %d layers leaves a disk file under /disk/ (deleted files count as gone)", layers)
}
