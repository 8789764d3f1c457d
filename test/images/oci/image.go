// Package image builds OCI images without a container engine: files (static
// binaries, a rootfs) go into one layer, optionally on top of prebuilt base
// layers (DirLayer caches a big directory's compressed layer on disk), the
// image is written as an OCI image-layout tar with go-containerregistry, and
// `ctr` imports that tar into a containerd (Present tells whether it is
// already there).
package oci

import (
	"archive/tar"
	"bytes"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// File is one file of an image: Source on the build machine lands at Path
// inside the image.
type File struct {
	Path   string
	Source string
	Mode   fs.FileMode
}

// Spec describes an image to build.
type Spec struct {
	Ref        string     // e.g. podvirt.local/pause:1
	Base       []v1.Layer // layers below the one holding RootFS and Files
	Files      []File     // single files
	RootFS     string     // optional directory copied to / (symlinks kept)
	Entrypoint []string   // the image's ENTRYPOINT
	Env        []string
}

// Build assembles the image described by spec.
func Build(spec Spec) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	layers := slices.Clone(spec.Base)
	if spec.RootFS != "" || len(spec.Files) > 0 {
		layer, err := filesLayer(spec)
		if err != nil {
			return nil, err
		}
		layers = append(layers, layer)
	}
	for _, layer := range layers {
		mt, err := layer.MediaType()
		if err != nil {
			return nil, fmt.Errorf("image %s: layer: %w", spec.Ref, err)
		}
		if img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: mt}); err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Ref, err)
		}
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cfg = cfg.DeepCopy()
	cfg.Created = v1.Time{} // reproducible: the same inputs give the same digest
	cfg.Architecture = "amd64"
	cfg.OS = "linux"
	cfg.Config.Entrypoint = spec.Entrypoint
	cfg.Config.Env = append([]string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}, spec.Env...)
	return mutate.ConfigFile(img, cfg)
}

// filesLayer puts spec's RootFS and Files into one gzip layer.
func filesLayer(spec Spec) (v1.Layer, error) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if spec.RootFS != "" {
		if err := addTree(tw, spec.RootFS); err != nil {
			return nil, fmt.Errorf("image %s: rootfs %s: %w", spec.Ref, spec.RootFS, err)
		}
	}
	for _, f := range spec.Files {
		if err := addFile(tw, f); err != nil {
			return nil, fmt.Errorf("image %s: %w", spec.Ref, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerBytes)), nil
	}, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("image %s: layer: %w", spec.Ref, err)
	}
	return layer, nil
}

// WriteOCITar writes img as an OCI image-layout tar at path, named ref so
// that `ctr images import` registers it under that name.
func WriteOCITar(img v1.Image, ref, path string) error {
	tag, err := name.NewTag(ref)
	if err != nil {
		return fmt.Errorf("image reference %q: %w", ref, err)
	}
	dir, err := os.MkdirTemp(filepath.Dir(path), ".oci-layout-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	lp, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	err = lp.AppendImage(img, layout.WithAnnotations(map[string]string{
		"io.containerd.image.name":          tag.Name(),
		"org.opencontainers.image.ref.name": tag.TagStr(),
	}))
	if err != nil {
		return fmt.Errorf("write OCI layout for %s: %w", ref, err)
	}
	return tarDir(dir, path)
}

// Import loads an image tar into the containerd listening on socket, in the
// k8s.io namespace the kubelet's CRI uses.
func Import(ctx context.Context, socket, tarPath string) error {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return fmt.Errorf("ctr (Debian package containerd) is not installed: run 'make deps'")
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", socket, "--namespace", "k8s.io",
		"images", "import", "--no-unpack=false", tarPath).CombinedOutput()
	if err != nil {
		return fmt.Errorf("import %s into containerd at %s: %w: %s", tarPath, socket, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Present reports whether the containerd at socket has ref (k8s.io
// namespace) at exactly digest, so an unchanged image need not be written
// and imported again.
func Present(ctx context.Context, socket, ref string, digest v1.Hash) (bool, error) {
	ctr, err := exec.LookPath("ctr")
	if err != nil {
		return false, fmt.Errorf("ctr (Debian package containerd) is not installed: run 'make deps'")
	}
	out, err := exec.CommandContext(ctx, ctr, "--address", socket, "--namespace", "k8s.io",
		"images", "ls", "name=="+ref).CombinedOutput()
	if err != nil {
		return false, fmt.Errorf("list images in containerd at %s: %w: %s", socket, err, strings.TrimSpace(string(out)))
	}
	for line := range strings.Lines(string(out)) {
		// REF TYPE DIGEST SIZE PLATFORMS LABELS
		if f := strings.Fields(line); len(f) >= 3 && f[0] == ref && f[2] == digest.String() {
			return true, nil
		}
	}
	return false, nil
}

// GoBinary builds the Go command pkg (an import path inside this module)
// as a static binary at out, ready to go into an image with no libc.
func GoBinary(ctx context.Context, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}

func addFile(tw *tar.Writer, f File) error {
	data, err := os.ReadFile(f.Source)
	if err != nil {
		return err
	}
	mode := f.Mode
	if mode == 0 {
		mode = 0o755
	}
	for _, dir := range parents(f.Path) {
		if err := tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: 0o755}); err != nil {
			return err
		}
	}
	hdr := &tar.Header{Typeflag: tar.TypeReg, Name: strings.TrimPrefix(f.Path, "/"), Mode: int64(mode), Size: int64(len(data))}
	if err := tw.WriteHeader(hdr); err != nil {
		return err
	}
	_, err = tw.Write(data)
	return err
}

// parents lists the directories above p, outermost first, without a
// leading slash: "/usr/bin/x" → ["usr", "usr/bin"].
func parents(p string) []string {
	var dirs []string
	for d := filepath.Dir(strings.TrimPrefix(p, "/")); d != "." && d != "/"; d = filepath.Dir(d) {
		dirs = append([]string{d}, dirs...)
	}
	return dirs
}

func addTree(tw *tar.Writer, root string) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, path)
		if err != nil || rel == "." {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if info.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(path); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(info, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if d.IsDir() {
			hdr.Name += "/"
		}
		hdr.Uname, hdr.Gname = "", ""
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if !info.Mode().IsRegular() {
			return nil
		}
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = io.Copy(tw, f)
		return err
	})
}

// tarDir writes the files under dir into a tar at path, atomically.
func tarDir(dir, path string) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	tw := tar.NewWriter(f)
	if err := addTree(tw, dir); err != nil {
		f.Close()
		return err
	}
	if err := tw.Close(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
