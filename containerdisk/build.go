// Package containerdisk builds and reads containerDisk images: OCI images
// whose one file under /disk/ is a VM disk, the layout podvirt's importer
// (csi/importer) and KubeVirt's containerDisk both read. Build streams the
// disk file (it is never held in memory) into one deterministic layer;
// ReadDisk finds the disk in an image and reads only its header.
package containerdisk

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/pgzip"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/digestwriter"
)

// The disk's ownership and modes: KubeVirt's docs build containerDisks with
// `ADD --chown=107:107`, qemu's user in its launcher; the disk is read-only.
const (
	QEMUID   = 107
	FileMode = 0o440
	DirMode  = 0o555
)

// epoch is every entry's mtime, so that the same file gives the same digest
// whenever and wherever it is built.
var epoch = time.Unix(0, 0).UTC()

// Compression is how the layer is stored in the registry.
type Compression string

// The layer compressions Build writes; both are read by every runtime and by
// the importer.
const (
	Gzip Compression = "gzip"
	None Compression = "none"
)

// ParseCompression checks a --compress value.
func ParseCompression(s string) (Compression, error) {
	switch c := Compression(s); c {
	case Gzip, None:
		return c, nil
	}
	return "", fmt.Errorf("compression %q is not supported: use gzip or none", s)
}

// Options tune Build.
type Options struct {
	// Compression of the layer (default Gzip).
	Compression Compression
	// SpoolDir holds the gzip layer while the image is in use (default
	// $TMPDIR): compressing once costs its size on disk, but not one more
	// compression per registry.
	SpoolDir string
	// Progress, when set, is called as the disk file is read to compute the
	// layer's digest (and compress it).
	Progress func(done, total int64)
}

// Image is a built containerDisk. Its layer reads the disk file again on
// every upload: the file must not change until the image is pushed.
type Image struct {
	v1.Image
	// Disk is the disk's path in the image, /disk/<name>.
	Disk  string
	layer *diskLayer
}

// Close removes the spooled layer, if any.
func (i *Image) Close() error {
	if i.layer.spool == "" {
		return nil
	}
	return os.Remove(i.layer.spool)
}

// Build makes a containerDisk of the disk file at path: one layer holding
// /disk/ and /disk/<base name of path>, owned by QEMUID. It does not judge
// the disk; callers validate it first (csi/image.Validate). The file's base
// name must be one the importer takes for a disk (*.qcow2, *.raw, *.img).
func Build(ctx context.Context, path string, o Options) (*Image, error) {
	if o.Compression == "" {
		o.Compression = Gzip
	}
	if _, err := ParseCompression(string(o.Compression)); err != nil {
		return nil, err
	}
	st, err := CheckFile(path)
	if err != nil {
		return nil, err
	}
	l := &diskLayer{file: path, entry: entryName(path), size: st.Size(), mediaType: types.OCIUncompressedLayer}
	if o.Compression == Gzip {
		l.mediaType = types.OCILayer
		err = l.spoolGzip(ctx, o)
	} else {
		err = l.hashTar(ctx, o)
	}
	if err != nil {
		return nil, fmt.Errorf("containerDisk of %s: %w", path, err)
	}
	img, err := assemble(l)
	if err != nil {
		if l.spool != "" {
			_ = os.Remove(l.spool)
		}
		return nil, fmt.Errorf("containerDisk of %s: %w", path, err)
	}
	return &Image{Image: img, Disk: "/" + l.entry, layer: l}, nil
}

// CheckFile checks what Build needs of the disk file before anything is
// read: a regular file, with a name the importer takes for a disk
// uncompressed (its own selector decides). It returns the file's stat.
func CheckFile(path string) (os.FileInfo, error) {
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("containerDisk of %s: %w", path, err)
	}
	if !st.Mode().IsRegular() {
		return nil, fmt.Errorf("containerDisk of %s: it is not a regular file (%s); give the disk image file itself", path, st.Mode().Type())
	}
	sel := &image.DiskSelector{Image: path}
	v, err := sel.Next(&tar.Header{Name: entryName(path), Typeflag: tar.TypeReg})
	if err != nil {
		return nil, err
	}
	if !v.Disk || v.Compression != image.None {
		base := filepath.Base(path)
		return nil, fmt.Errorf("containerDisk of %s: podvirt and KubeVirt find the disk under /disk/ by its name, and %q is not an uncompressed disk's name: "+
			"rename the file to end in .qcow2, .raw or .img (decompress it first if it is compressed)", path, base)
	}
	return st, nil
}

// entryName is the disk's tar entry: disk/<base name>.
func entryName(path string) string { return image.DiskDir + "/" + filepath.Base(path) }

// assemble makes the image: an OCI manifest with l as its only layer, a
// linux/amd64 config (podvirt's nodes), no timestamps.
func assemble(l *diskLayer) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err := mutate.Append(img, mutate.Addendum{Layer: l, MediaType: l.mediaType})
	if err != nil {
		return nil, err
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Created = v1.Time{}
	cfg.OS, cfg.Architecture = "linux", "amd64"
	return mutate.ConfigFile(img, cfg)
}

// diskLayer is the containerDisk's layer. Its tar is written from the file
// on demand; a gzip layer is read from its spool file.
type diskLayer struct {
	file      string
	entry     string // disk/<name>
	size      int64  // the file's size at Build
	mediaType types.MediaType
	digest    v1.Hash
	diffID    v1.Hash
	blobSize  int64
	spool     string // the gzip blob; "" for an uncompressed layer
}

func (l *diskLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *diskLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *diskLayer) Size() (int64, error)                { return l.blobSize, nil }
func (l *diskLayer) MediaType() (types.MediaType, error) { return l.mediaType, nil }

// Compressed is the blob as the registry stores it.
func (l *diskLayer) Compressed() (io.ReadCloser, error) {
	if l.spool != "" {
		return os.Open(l.spool)
	}
	return l.Uncompressed()
}

// Uncompressed is the layer's tar, written from the file as it is read.
func (l *diskLayer) Uncompressed() (io.ReadCloser, error) {
	pr, pw := io.Pipe()
	go func() {
		pw.CloseWithError(l.writeTar(context.Background(), pw, nil))
	}()
	return pr, nil
}

// hashTar computes an uncompressed layer's digest (which is its diff ID)
// in one pass over the file.
func (l *diskLayer) hashTar(ctx context.Context, o Options) error {
	hw := digestwriter.New(io.Discard)
	if err := l.writeTar(ctx, hw, o.Progress); err != nil {
		return err
	}
	l.diffID, l.blobSize = hw.Digest(), hw.Size()
	l.digest = l.diffID
	return nil
}

// spoolGzip compresses the layer into a spool file, hashing the tar (diff
// ID) and the gzip stream (digest) on the way.
func (l *diskLayer) spoolGzip(ctx context.Context, o Options) (err error) {
	f, err := os.CreateTemp(o.SpoolDir, "podvirt-containerdisk-*.tar.gz")
	if err != nil {
		return fmt.Errorf("spool the gzip layer: %w (set $TMPDIR to a directory with room for it, or push with --compress none)", err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("spool the gzip layer at %s: %w", f.Name(), cerr)
		}
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	compressed := digestwriter.New(f)
	// pgzip cuts blocks at fixed sizes, whatever its concurrency: its output
	// depends on the input only, as a reproducible digest needs.
	zw, err := pgzip.NewWriterLevel(compressed, pgzip.DefaultCompression)
	if err != nil {
		return err
	}
	zw.ModTime = epoch
	uncompressed := digestwriter.New(zw)
	if err := l.writeTar(ctx, uncompressed, o.Progress); err != nil {
		_ = zw.Close()
		return err
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("spool the gzip layer at %s: %w", f.Name(), err)
	}
	l.spool = f.Name()
	l.digest, l.diffID, l.blobSize = compressed.Digest(), uncompressed.Digest(), compressed.Size()
	return nil
}

// writeTar writes the layer's tar: the /disk directory, then the disk.
func (l *diskLayer) writeTar(ctx context.Context, w io.Writer, progress func(done, total int64)) error {
	f, err := os.Open(l.file)
	if err != nil {
		return err
	}
	defer f.Close()
	tw := tar.NewWriter(w)
	dir := &tar.Header{Typeflag: tar.TypeDir, Name: image.DiskDir + "/", Mode: DirMode, Uid: QEMUID, Gid: QEMUID, ModTime: epoch}
	if err := tw.WriteHeader(dir); err != nil {
		return err
	}
	disk := &tar.Header{Typeflag: tar.TypeReg, Name: l.entry, Mode: FileMode, Uid: QEMUID, Gid: QEMUID, ModTime: epoch, Size: l.size}
	if err := tw.WriteHeader(disk); err != nil {
		return err
	}
	r := &fileReader{ctx: ctx, r: f, total: l.size, progress: progress}
	n, err := io.CopyN(tw, r, l.size)
	if errors.Is(err, io.EOF) {
		return fmt.Errorf("%s shrank while it was read (%d of %d bytes): do not change the disk file while it is pushed", l.file, n, l.size)
	}
	if err != nil {
		return fmt.Errorf("read %s: %w", l.file, err)
	}
	return tw.Close()
}

// fileReader reads the disk file, stopping when ctx ends and reporting
// progress.
type fileReader struct {
	ctx      context.Context
	r        io.Reader
	done     int64
	total    int64
	progress func(done, total int64)
}

func (r *fileReader) Read(p []byte) (int, error) {
	if err := r.ctx.Err(); err != nil {
		return 0, err
	}
	n, err := r.r.Read(p)
	r.done += int64(n)
	if r.progress != nil && n > 0 {
		r.progress(r.done, r.total)
	}
	return n, err
}
