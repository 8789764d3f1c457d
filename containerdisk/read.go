package containerdisk

import (
	"archive/tar"
	"compress/gzip"
	"errors"
	"fmt"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/image"
)

// Disk is what an image holds under /disk/, as far as the disk's first
// bytes tell.
type Disk struct {
	// Path is the disk's path in the image, e.g. /disk/disk.qcow2.
	Path string
	// Compression is the file's own (a .gz or .xz name), which the importer
	// undoes; image.None for most disks.
	Compression image.Compression
	// Format is qcow2 or raw; "" when the file is compressed and not qcow2
	// (the importer decides after decompression).
	Format string
	// VirtualSize is the disk's size as a guest sees it: the qcow2 header's,
	// a raw file's length; 0 when unknown.
	VirtualSize int64
	// FileSize is the file's size in the image (compressed, if it is).
	FileSize int64
}

// layerTypes are the layer media types the importer unpacks.
var layerTypes = map[types.MediaType]bool{
	types.OCIUncompressedLayer: true, types.DockerUncompressedLayer: true, types.OCIUncompressedRestrictedLayer: true,
	types.OCILayer: true, types.DockerLayer: true, types.DockerForeignLayer: true, types.OCIRestrictedLayer: true,
	types.OCILayerZStd: true,
}

// ReadDisk finds the disk of img (named ref in messages) and reads its
// header, with the importer's rules: image.DiskSelector picks the file, and
// the header checks are csi/image's, under lim. Layers below the last are
// read whole, since they may delete or replace the disk; the last layer is
// read only up to the disk's header, so for a containerDisk of one layer
// (Build's, a Dockerfile's `FROM scratch` + `ADD`) only the first bytes of
// the blob are downloaded. Entries of the last layer after the disk are not
// looked at.
//
// A refusal (*image.Error: no disk, several disks, a backing file, …)
// comes with whatever was learned before it.
func ReadDisk(img v1.Image, ref string, lim image.Limits) (Disk, error) {
	layers, err := img.Layers()
	if err != nil {
		return Disk{}, fmt.Errorf("%s: layers: %w", ref, err)
	}
	sel := &image.DiskSelector{Image: ref}
	var d Disk
	var header []byte
	entries := 0
	for i, l := range layers {
		if err := sel.Layer(i); err != nil {
			return d, err
		}
		last := i == len(layers)-1
		h, n, err := scanLayer(l, sel, last)
		entries += n
		if err != nil {
			return d, fmt.Errorf("%s: layer %d: %w", ref, i, err)
		}
		if h != nil {
			d, header = h.disk, h.header
		}
	}
	if err := sel.Done(len(layers), entries); err != nil {
		return Disk{}, err
	}
	return d, judge(&d, header, lim)
}

// found is a disk entry and its first bytes.
type found struct {
	disk   Disk
	header []byte
}

// scanLayer walks one layer's tar with sel. In the last layer it stops at
// the disk's header.
func scanLayer(l v1.Layer, sel *image.DiskSelector, last bool) (*found, int, error) {
	mt, err := l.MediaType()
	if err != nil {
		return nil, 0, err
	}
	if !layerTypes[mt] {
		return nil, 0, &image.Error{Reason: image.ReasonUnsupported, File: sel.Image,
			Detail: fmt.Sprintf("a layer has media type %q", mt), Hint: "publish the containerDisk with tar, tar+gzip or tar+zstd layers"}
	}
	// Uncompressed undoes gzip and zstd by their magic, as the importer does
	// by media type; closing it early stops the download.
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, 0, err
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var f *found
	entries := 0
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return f, entries, nil
		}
		if err != nil {
			return f, entries, err
		}
		entries++
		v, err := sel.Next(h)
		if err != nil {
			return f, entries, err
		}
		if v.Restart {
			f = nil
		}
		if !v.Disk {
			continue
		}
		head, err := readHead(tr, v.Compression)
		if err != nil {
			return f, entries, fmt.Errorf("read %s: %w", sel.Disk, err)
		}
		f = &found{disk: Disk{Path: sel.Disk, Compression: v.Compression, FileSize: h.Size}, header: head}
		if last {
			return f, entries, nil
		}
	}
}

// readHead reads the first image.HeaderSize bytes of the disk, undoing a
// gzip file's compression; an xz file's are left to the importer.
func readHead(r io.Reader, c image.Compression) ([]byte, error) {
	switch c {
	case image.XZ:
		return nil, nil
	case image.Gzip:
		zr, err := gzip.NewReader(r)
		if err != nil {
			return nil, err
		}
		r = zr
	}
	b := make([]byte, image.HeaderSize)
	n, err := io.ReadFull(r, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return b[:n], nil
}

// judge fills in the disk's format and virtual size from its header, with
// the node's checks.
func judge(d *Disk, header []byte, lim image.Limits) error {
	if d.Compression != image.None {
		if len(header) >= 4 && string(header[:4]) == "QFI\xfb" {
			d.Format = diskmeta.FormatQCOW2
			h, err := image.CheckQCOW2Header(d.Path, header, lim.MaxVirtualSize)
			d.VirtualSize = int64(h.Size)
			return err
		}
		return nil
	}
	format, err := image.DetectFormat(d.Path, header, d.FileSize)
	if err != nil {
		return err
	}
	d.Format = format
	if format == diskmeta.FormatRaw {
		d.VirtualSize = d.FileSize
		if lim.MaxVirtualSize > 0 && d.FileSize > lim.MaxVirtualSize {
			return &image.Error{Reason: image.ReasonVirtualSize, File: d.Path,
				Detail: fmt.Sprintf("virtual size %d bytes is above the limit of %d bytes", d.FileSize, lim.MaxVirtualSize),
				Hint:   "use a smaller image, or raise the node's maximum virtual size if it is really meant"}
		}
		return nil
	}
	h, err := image.CheckQCOW2Header(d.Path, header, lim.MaxVirtualSize)
	d.VirtualSize = int64(h.Size)
	return err
}
