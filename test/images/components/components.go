// Package images builds podvirt's component images without Docker, the same
// images the Dockerfiles under cmd/ describe for real registries, and
// imports them into a local cluster's containerd:
//
//   - podvirt-launcher: a Debian bookworm root with libvirtd, QEMU (x86,
//     TCG or KVM), qemu-img, OVMF and passt (test/images/debian), plus the
//     launcher (cgo, links libvirt);
//   - podvirt-controller: the static controller alone;
//   - podvirt-handler: the static node daemon and the podvirt-l2 CNI plugin
//     it installs;
//   - podvirt-csi: a Debian root with qemu-img, losetup, mount and xz, plus
//     the CSI driver;
//   - the CSI sidecars (csi-provisioner, csi-snapshotter,
//     snapshot-controller, csi-resizer): each static binary alone, from
//     `make deps`.
//
// Big layers (the Debian roots) are cached under the cache dir and reused as
// they are; only a changed binary's small layer is rebuilt. Import skips an
// image containerd already has at the same digest.
package components

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/images/debian"
	"github.com/podvirt/podvirt/test/images/oci"
)

// The images' names, as Build and the chart's values know them.
const (
	Launcher           = "launcher"
	Controller         = "controller"
	Handler            = "handler"
	CSI                = "csi"
	CSIProvisioner     = "csi-provisioner"
	CSISnapshotter     = "csi-snapshotter"
	SnapshotController = "snapshot-controller"
	CSIResizer         = "csi-resizer"
)

// All lists every image, in build order.
var All = []string{Launcher, Controller, Handler, CSI, CSIProvisioner, CSISnapshotter, SnapshotController, CSIResizer}

// Repository is the registry prefix of locally built images.
const Repository = "podvirt.local/"

// Tag is the tag of podvirt's own locally built images (the controller's
// default launcher image is podvirt.local/podvirt-launcher:dev).
const Tag = "dev"

// Ref returns the reference image name is built and imported as:
// podvirt.local/podvirt-<name>:dev for podvirt's components,
// podvirt.local/<sidecar>:<upstream version> for the CSI sidecars.
func Ref(name string) string {
	if v := sidecarVersion(name); v != "" {
		return Repository + name + ":" + v
	}
	return Repository + "podvirt-" + name + ":" + Tag
}

// sidecarVersion is the upstream version of a CSI sidecar image, or "".
func sidecarVersion(name string) string {
	switch name {
	case CSIProvisioner:
		return deps.Version("csi-provisioner")
	case CSISnapshotter, SnapshotController:
		return deps.Version("csi-snapshotter")
	case CSIResizer:
		return deps.Version("csi-resizer")
	}
	return ""
}

// Options tune Build.
type Options struct {
	// Cache holds the Debian roots, their layers and downloaded .debs;
	// empty means deps.Cache().
	Cache string
	// Version is stamped into podvirt's binaries; empty means "dev".
	Version string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

func (o Options) withDefaults() Options {
	if o.Cache == "" {
		o.Cache = deps.Cache()
	}
	if o.Version == "" {
		o.Version = Tag
	}
	if o.Progress == nil {
		o.Progress = io.Discard
	}
	return o
}

func (o Options) progress(format string, args ...any) {
	fmt.Fprintf(o.Progress, "[images %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

// Image is a built image.
type Image struct {
	Name  string
	Ref   string
	Image v1.Image
}

// Build builds the named images (every image when names is empty).
func Build(ctx context.Context, opts Options, names ...string) ([]Image, error) {
	opts = opts.withDefaults()
	if len(names) == 0 {
		names = All
	}
	for _, n := range names {
		if !slices.Contains(All, n) {
			return nil, fmt.Errorf("unknown image %q (want one of %s)", n, strings.Join(All, ", "))
		}
	}
	work, err := os.MkdirTemp("", "podvirt-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	bins, err := buildBinaries(ctx, opts, work, names)
	if err != nil {
		return nil, err
	}
	var out []Image
	for _, n := range names {
		start := time.Now()
		img, err := build(ctx, opts, n, bins)
		if err != nil {
			return nil, fmt.Errorf("image %s: %w", Ref(n), err)
		}
		opts.progress("%s: built (%.1fs)", Ref(n), time.Since(start).Seconds())
		out = append(out, Image{Name: n, Ref: Ref(n), Image: img})
	}
	return out, nil
}

// Import imports imgs into the containerds listening on sockets (namespace
// k8s.io, where the kubelet looks): one per node of a cluster. Each skips
// the images it already has at the same digest. It returns the references
// it imported somewhere: new or changed.
func Import(ctx context.Context, sockets []string, imgs []Image, progress io.Writer) ([]string, error) {
	opts := Options{Progress: progress}.withDefaults()
	work, err := os.MkdirTemp("", "podvirt-images-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	var imported []string
	for _, img := range imgs {
		start := time.Now()
		digest, err := img.Image.Digest()
		if err != nil {
			return imported, fmt.Errorf("image %s: %w", img.Ref, err)
		}
		var missing []string
		for _, socket := range sockets {
			present, err := oci.Present(ctx, socket, img.Ref, digest)
			if err != nil {
				return imported, err
			}
			if !present {
				missing = append(missing, socket)
			}
		}
		if len(missing) == 0 {
			opts.progress("%s: already in containerd at %s", img.Ref, digest)
			continue
		}
		tar := filepath.Join(work, img.Name+".tar")
		if err := oci.WriteOCITar(img.Image, img.Ref, tar); err != nil {
			return imported, err
		}
		for _, socket := range missing {
			if err := oci.Import(ctx, socket, tar); err != nil {
				return imported, err
			}
		}
		_ = os.Remove(tar)
		imported = append(imported, img.Ref)
		opts.progress("%s: imported %s into %d containerd(s) (%.1fs)", img.Ref, digest, len(missing), time.Since(start).Seconds())
	}
	return imported, nil
}

// BuildAndImport builds the named images (all when none are named) and
// imports them into the containerds at sockets, e.g. a test cluster's
// (*cluster.Cluster).ContainerdSockets(). It returns the references it
// imported: new or changed.
func BuildAndImport(ctx context.Context, sockets []string, opts Options, names ...string) ([]string, error) {
	imgs, err := Build(ctx, opts, names...)
	if err != nil {
		return nil, err
	}
	return Import(ctx, sockets, imgs, opts.Progress)
}

// goBinaries maps an image to the Go commands (under cmd/) it carries.
var goBinaries = map[string][]string{
	Launcher:   {"podvirt-launcher"},
	Controller: {"podvirt-controller"},
	Handler:    {"podvirt-handler", "podvirt-l2"},
	CSI:        {"podvirt-csi"},
}

// buildBinaries builds the Go commands the named images carry into dir:
// the static ones in one `go build` (they share most packages), the
// launcher separately (cgo).
func buildBinaries(ctx context.Context, opts Options, dir string, names []string) (map[string]string, error) {
	var static, cgo []string
	for _, n := range names {
		for _, cmd := range goBinaries[n] {
			if cmd == "podvirt-launcher" {
				cgo = append(cgo, cmd)
			} else {
				static = append(static, cmd)
			}
		}
	}
	bins := map[string]string{}
	ldflags := "-s -w -X github.com/podvirt/podvirt/cmd/internal/version.Version=" + opts.Version
	for _, set := range []struct {
		cmds []string
		cgo  string
	}{{static, "0"}, {cgo, "1"}} {
		if len(set.cmds) == 0 {
			continue
		}
		start := time.Now()
		args := []string{"build", "-trimpath", "-ldflags=" + ldflags, "-o", dir + "/"}
		for _, c := range set.cmds {
			args = append(args, "github.com/podvirt/podvirt/cmd/"+c)
			bins[c] = filepath.Join(dir, c)
		}
		cmd := exec.CommandContext(ctx, "go", args...)
		cmd.Env = append(os.Environ(), "CGO_ENABLED="+set.cgo)
		if out, err := cmd.CombinedOutput(); err != nil {
			hint := ""
			if set.cgo == "1" && strings.Contains(string(out), "libvirt") {
				hint = " (the launcher links libvirt: Debian packages libvirt-dev and pkg-config; run 'make deps')"
			}
			return nil, fmt.Errorf("go build %s%s: %w: %s", strings.Join(set.cmds, " "), hint, err, strings.TrimSpace(string(out)))
		}
		opts.progress("go build %s (cgo=%s): %.1fs", strings.Join(set.cmds, " "), set.cgo, time.Since(start).Seconds())
	}
	return bins, nil
}

func build(ctx context.Context, opts Options, name string, bins map[string]string) (v1.Image, error) {
	ref := Ref(name)
	switch name {
	case Launcher:
		base, err := rootLayer(ctx, opts, launcherRoot)
		if err != nil {
			return nil, err
		}
		return oci.Build(oci.Spec{
			Ref:        ref,
			Base:       []v1.Layer{base},
			Files:      []oci.File{{Path: "/usr/bin/podvirt-launcher", Source: bins["podvirt-launcher"]}},
			Entrypoint: []string{"/usr/bin/podvirt-launcher"},
		})
	case Controller:
		return oci.Build(oci.Spec{
			Ref:        ref,
			Files:      []oci.File{{Path: "/usr/bin/podvirt-controller", Source: bins["podvirt-controller"]}},
			Entrypoint: []string{"/usr/bin/podvirt-controller"},
		})
	case Handler:
		return oci.Build(oci.Spec{
			Ref: ref,
			Files: []oci.File{
				{Path: "/usr/bin/podvirt-handler", Source: bins["podvirt-handler"]},
				{Path: "/usr/bin/podvirt-l2", Source: bins["podvirt-l2"]},
			},
			Entrypoint: []string{"/usr/bin/podvirt-handler"},
		})
	case CSI:
		base, err := rootLayer(ctx, opts, csiRoot)
		if err != nil {
			return nil, err
		}
		return oci.Build(oci.Spec{
			Ref:        ref,
			Base:       []v1.Layer{base},
			Files:      []oci.File{{Path: "/usr/bin/podvirt-csi", Source: bins["podvirt-csi"]}},
			Entrypoint: []string{"/usr/bin/podvirt-csi"},
		})
	default: // a CSI sidecar
		bin, err := deps.Binary("csi-sidecars", name)
		if err != nil {
			return nil, err
		}
		return oci.Build(oci.Spec{
			Ref:        ref,
			Files:      []oci.File{{Path: "/" + name, Source: bin}},
			Entrypoint: []string{"/" + name},
		})
	}
}

// rootLayer builds (or finds cached) the Debian root spec and its layer.
func rootLayer(ctx context.Context, opts Options, spec debian.Spec) (v1.Layer, error) {
	start := time.Now()
	root, err := debian.Build(ctx, opts.Cache, spec)
	if err != nil {
		return nil, err
	}
	dir := filepath.Join(opts.Cache, "images", "layers")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	layer, err := oci.DirLayer(root.Dir, filepath.Join(dir, "rootfs-"+root.Key+".tar.zst"))
	if err != nil {
		return nil, err
	}
	opts.progress("Debian root %s (%d packages) and its layer: %.1fs", root.Key, len(root.Packages), time.Since(start).Seconds())
	return layer, nil
}
