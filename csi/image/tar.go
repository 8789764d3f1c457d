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

var diskExts = []string{".qcow2", ".raw", ".img"}

// DiskSelector picks the disk out of a containerDisk's layer tars: exactly one regular file
// directly under /disk/ named *.qcow2, *.raw or *.img (optionally + .gz or .xz). Feed it
// every tar header of every layer, in order.
type DiskSelector struct {
	Image string // the image reference, for messages
	Disk  string // the disk file selected so far ("" if none), e.g. /disk/disk.qcow2
}

// Next judges one tar entry. It returns whether this entry is the disk (then read its
// data from the tar reader) and how it is compressed. Entries that escape the layer root
// are refused whatever they are: a tar that tries it is hostile.
func (s *DiskSelector) Next(h *tar.Header) (bool, Compression, error) {
	name := h.Name
	if strings.ContainsRune(name, 0) {
		return false, None, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool", "tar entry %q contains a NUL byte", name)
	}
	if escapes(name) {
		return false, None, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool (docker build, buildah)",
			"tar entry %q escapes the layer root", name)
	}
	if h.Typeflag == tar.TypeLink && escapes(h.Linkname) {
		return false, None, refuse(ReasonPathEscape, s.Image, "rebuild the image with a standard tool (docker build, buildah)",
			"tar hard link %q -> %q escapes the layer root", name, h.Linkname)
	}
	clean := strings.TrimPrefix(path.Clean("/"+name), "/")
	dir, base := path.Split(clean)
	if strings.TrimSuffix(dir, "/") != DiskDir {
		return false, None, nil
	}
	if strings.HasPrefix(base, ".wh.") { // a whiteout in a later layer: nothing to import
		return false, None, nil
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
		return false, None, nil
	}
	if h.Typeflag != tar.TypeReg { // the reader reports old-style regular files (TypeRegA) as TypeReg
		return false, None, refuse(ReasonNotAnImage, s.Image, "put the disk itself under /disk/, not a link",
			"/%s is not a regular file (tar type %q)", clean, h.Typeflag)
	}
	if s.Disk != "" && s.Disk != "/"+clean {
		return false, None, refuse(ReasonSeveralDisks, s.Image, "keep exactly one disk file under /disk/",
			"it holds several disk files under /disk/ (%s and /%s)", s.Disk, clean)
	}
	s.Disk = "/" + clean
	return true, comp, nil
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

// NoDisk is the refusal for an image whose layers held no disk file.
func (s *DiskSelector) NoDisk(layers, entries int) error {
	if layers == 0 || entries == 0 {
		return refuse(ReasonEmpty, s.Image, "build the containerDisk with the disk under /disk/", "its %d layer(s) are empty", layers)
	}
	return refuse(ReasonNoDisk, s.Image, "build the containerDisk with one .qcow2/.raw/.img (optionally .gz/.xz) file under /disk/",
		"none of its %d layers has a disk file under /disk/", layers)
}
