package volume

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// QemuImg is the qemu-img binary (Debian qemu-utils).
var QemuImg = "qemu-img"

// Preallocation modes qemu-img knows for each format.
var preallocations = map[string][]string{
	diskmeta.FormatQCOW2: {"off", "metadata", "falloc", "full"},
	diskmeta.FormatRaw:   {"off", "falloc", "full"},
}

// ValidPreallocation checks that mode ("" is off) exists for format.
func ValidPreallocation(format, mode string) error {
	if mode == "" {
		return nil
	}
	for _, m := range preallocations[format] {
		if m == mode {
			return nil
		}
	}
	return fmt.Errorf("preallocation %q is not valid for format %s: use one of %s", mode, format, strings.Join(preallocations[format], ", "))
}

// Create makes dir an empty disk of size bytes.
func Create(ctx context.Context, dir, format string, size int64, prealloc string) error {
	args := []string{"create", "-q", "-f", format}
	if prealloc != "" {
		args = append(args, "-o", "preallocation="+prealloc)
	}
	if err := qemuImg(ctx, append(args, DiskPath(dir), strconv.FormatInt(size, 10))...); err != nil {
		return err
	}
	return finish(dir, diskmeta.Meta{Format: format})
}

// Overlay makes dir a qcow2 overlay of size bytes on the read-only image
// base (format baseFormat): base is linked into dir as base.img and named
// relatively, so nothing outside dir is referenced. m says where the image
// came from.
func Overlay(ctx context.Context, dir, base, baseFormat string, size int64, m diskmeta.Meta) error {
	if err := linkOrCopy(base, filepath.Join(dir, BaseName)); err != nil {
		return err
	}
	if err := qemuImgIn(ctx, dir, "create", "-q", "-f", diskmeta.FormatQCOW2, "-b", BaseName, "-F", baseFormat, DiskName, strconv.FormatInt(size, 10)); err != nil {
		return err
	}
	m.Format, m.BaseFormat = diskmeta.FormatQCOW2, baseFormat
	return finish(dir, m)
}

// Convert makes dir a standalone copy of image src (format srcFormat) in
// format, grown to size bytes.
func Convert(ctx context.Context, dir, src, srcFormat, format string, size int64, prealloc string, m diskmeta.Meta) error {
	args := []string{"convert", "-U", "-f", srcFormat, "-O", format}
	if prealloc != "" {
		args = append(args, "-o", "preallocation="+prealloc)
	}
	if err := qemuImg(ctx, append(args, src, DiskPath(dir))...); err != nil {
		return err
	}
	if err := grow(ctx, DiskPath(dir), format, size, prealloc); err != nil {
		return err
	}
	m.Format, m.BaseFormat = format, ""
	return finish(dir, m)
}

// Copy makes dir a copy of the volume directory src, in format, grown to
// size bytes. When src is an overlay and the copy stays qcow2 and flatten
// is false, the copy is an overlay on the same base holding only what src
// changed; otherwise it is standalone. The source may be in use: it is
// read with -U, so the copy is crash-consistent.
func Copy(ctx context.Context, src, dir, format string, size int64, prealloc string, flatten bool) error {
	m, err := diskmeta.Read(src)
	if err != nil {
		return err
	}
	top := topPath(src, m)
	if !m.HasBase() || flatten || format != diskmeta.FormatQCOW2 {
		return Convert(ctx, dir, top, m.Format, format, size, prealloc, diskmeta.Meta{Source: m.Source, Digest: m.Digest})
	}
	if err := linkOrCopy(filepath.Join(src, BaseName), filepath.Join(dir, BaseName)); err != nil {
		return err
	}
	// -B writes only the clusters src holds above its base; the new
	// overlay names base.img relatively, and both chains resolve in their
	// own directory.
	if err := qemuImgIn(ctx, dir, "convert", "-U", "-f", m.Format, "-O", diskmeta.FormatQCOW2, "-B", BaseName, "-F", m.BaseFormat, top, DiskName); err != nil {
		return err
	}
	if err := grow(ctx, DiskPath(dir), diskmeta.FormatQCOW2, size, ""); err != nil {
		return err
	}
	// The copy holds src's layers in its one overlay.
	m.Layers, m.Top, m.Resume = nil, "", ""
	return finish(dir, m)
}

// Resize grows the disk of dir to size bytes; a smaller size is left alone
// (disks never shrink under a guest).
func Resize(ctx context.Context, dir string, size int64, prealloc string) error {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	return grow(ctx, topPath(dir, m), m.Format, size, prealloc)
}

// VirtualSize is the size of the disk of dir as the guest sees it.
func VirtualSize(ctx context.Context, dir string) (int64, error) {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return 0, err
	}
	return imageSize(ctx, topPath(dir, m), m.Format)
}

// topPath is the writable image of the volume directory dir.
func topPath(dir string, m diskmeta.Meta) string { return filepath.Join(dir, m.TopName()) }

func grow(ctx context.Context, path, format string, size int64, prealloc string) error {
	cur, err := imageSize(ctx, path, format)
	if err != nil {
		return err
	}
	if size <= cur {
		return nil
	}
	args := []string{"resize", "-q", "-f", format}
	if prealloc != "" && prealloc != "off" {
		args = append(args, "--preallocation="+prealloc)
	}
	return qemuImg(ctx, append(args, path, strconv.FormatInt(size, 10))...)
}

func imageSize(ctx context.Context, path, format string) (int64, error) {
	// --backing-chain is not asked for: the size is the top image's.
	out, err := qemuImgOutput(ctx, "", "info", "-U", "--output=json", "-f", format, path)
	if err != nil {
		return 0, err
	}
	var info struct {
		VirtualSize int64 `json:"virtual-size"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		return 0, fmt.Errorf("qemu-img info %s: %w", path, err)
	}
	return info.VirtualSize, nil
}

// finish writes the metadata and flushes the disk, so a volume recorded as
// created survives a crash of the node.
func finish(dir string, m diskmeta.Meta) error {
	f, err := os.OpenFile(DiskPath(dir), os.O_RDWR, 0)
	if err != nil {
		return err
	}
	err = f.Sync()
	f.Close()
	if err != nil {
		return fmt.Errorf("sync %s: %w", DiskPath(dir), err)
	}
	return WriteMeta(dir, m)
}

// linkOrCopy hard-links the read-only base into a volume (the cache and
// the volumes share a filesystem, so this is O(1)); across filesystems it
// falls back to a sparse copy.
func linkOrCopy(src, dst string) error {
	err := os.Link(src, dst)
	if err == nil || !errors.Is(err, syscall.EXDEV) {
		if err != nil {
			return fmt.Errorf("link base image %s into volume: %w", src, err)
		}
		return nil
	}
	if out, err := exec.Command("cp", "--sparse=always", "--reflink=auto", src, dst).CombinedOutput(); err != nil {
		return fmt.Errorf("copy base image %s to %s: %w: %s", src, dst, err, bytes.TrimSpace(out))
	}
	return nil
}

func qemuImg(ctx context.Context, args ...string) error {
	_, err := qemuImgOutput(ctx, "", args...)
	return err
}

func qemuImgIn(ctx context.Context, dir string, args ...string) error {
	_, err := qemuImgOutput(ctx, dir, args...)
	return err
}

func qemuImgOutput(ctx context.Context, dir string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, QemuImg, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("%s is not installed (Debian qemu-utils; run 'make deps')", QemuImg)
	}
	if err != nil {
		return nil, fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}

func allocated(fi os.FileInfo) int64 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Blocks * 512
	}
	return fi.Size()
}
