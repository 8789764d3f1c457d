// Command podvirt-images builds podvirt's component images without Docker
// and imports them into the local cluster's containerd (`make images`).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/images/components"
	"github.com/podvirt/podvirt/test/images/oci"
)

const usage = `usage: podvirt-images [flags] COMMAND [IMAGE...]

Commands:
  import  build the images and import them into every node's containerd of the
          local cluster (the 'make up' cluster, or --dir), or --containerd-socket
  save    build the images and write each as an OCI image-layout tar under --out
  push    build the images and push each to --registry REG as REG/<name>:<tag>,
          where the chart's imageRegistry=REG pulls them (credentials from
          docker login; --insecure for a plain-HTTP registry)
  list    print the image references

IMAGE is one of: launcher controller handler csi csi-provisioner csi-snapshotter
snapshot-controller csi-resizer (default: all).
`

func main() {
	cfg := cluster.DefaultConfig()
	if dir := os.Getenv("PODVIRT_CLUSTER_DIR"); dir != "" {
		cfg.Dir = dir
	}
	var opts components.Options
	var dest destination
	flags := flag.NewFlagSet("podvirt-images", flag.ContinueOnError)
	flags.StringVar(&cfg.Dir, "dir", cfg.Dir, "state directory of the local cluster (env PODVIRT_CLUSTER_DIR)")
	flags.StringVar(&dest.socket, "containerd-socket", "", "containerd socket to import into (default: the local cluster's)")
	flags.StringVar(&opts.Version, "version", "dev", "version stamped into podvirt's binaries")
	flags.StringVar(&dest.out, "out", "images", "directory for 'save'")
	flags.StringVar(&dest.registry, "registry", "", "registry and path for 'push', e.g. registry.example.com/podvirt")
	flags.BoolVar(&dest.insecure, "insecure", false, "'push' over plain HTTP")
	flags.Usage = func() { fmt.Fprint(os.Stderr, usage); flags.PrintDefaults() }
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() < 1 {
		flags.Usage()
		os.Exit(2)
	}
	opts.Progress = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, opts, dest, flags.Arg(0), flags.Args()[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-images %s: %v\n", flags.Arg(0), err)
		os.Exit(1)
	}
}

// destination is where the command puts the images.
type destination struct {
	socket   string // import: a containerd socket instead of the cluster's
	out      string // save: a directory
	registry string // push
	insecure bool   // push over plain HTTP
}

func run(ctx context.Context, cfg cluster.Config, opts components.Options, dest destination, command string, names []string) error {
	start := time.Now()
	switch command {
	case "list":
		if len(names) == 0 {
			names = components.All
		}
		for _, n := range names {
			fmt.Println(components.Ref(n))
		}
		return nil
	case "import":
		sockets := []string{dest.socket}
		if dest.socket == "" {
			c, err := cluster.New(cfg)
			if err != nil {
				return err
			}
			sockets = c.ContainerdSockets()
		}
		for _, s := range sockets {
			if _, err := os.Stat(s); err != nil {
				return fmt.Errorf("no containerd at %s: is the local cluster up? ('make up')", s)
			}
		}
		if _, err := components.BuildAndImport(ctx, sockets, opts, names...); err != nil {
			return err
		}
	case "save":
		imgs, err := components.Build(ctx, opts, names...)
		if err != nil {
			return err
		}
		if err := os.MkdirAll(dest.out, 0o755); err != nil {
			return err
		}
		for _, img := range imgs {
			path := filepath.Join(dest.out, img.Name+".tar")
			if err := oci.WriteOCITar(img.Image, img.Ref, path); err != nil {
				return err
			}
			fmt.Printf("%s -> %s\n", img.Ref, path)
		}
	case "push":
		if dest.registry == "" {
			return fmt.Errorf("push needs --registry, e.g. --registry registry.example.com/podvirt")
		}
		imgs, err := components.Build(ctx, opts, names...)
		if err != nil {
			return err
		}
		if _, err := components.Push(ctx, dest.registry, dest.insecure, imgs, opts.Progress); err != nil {
			return err
		}
	default:
		return fmt.Errorf("unknown command %q; run 'podvirt-images --help'", command)
	}
	fmt.Printf("[images] done in %.1fs\n", time.Since(start).Seconds())
	return nil
}
