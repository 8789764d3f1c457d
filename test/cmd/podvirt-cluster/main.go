// Command podvirt-cluster brings a real Kubernetes of one or more nodes up
// on this machine and takes it down again (`make up`, `make down`, `make
// demo`).
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/env/stack"
)

const usage = `usage: podvirt-cluster [--dir DIR] [--nodes N] COMMAND

Commands:
  up          bring the local cluster up (again: harmless; with more nodes: adds
              them) and print its kubeconfig
  down        stop every process of the cluster and remove its links, mounts,
              network namespaces, cgroups and state directory
  demo        up (2 nodes unless --nodes says), then install podvirt and boot two
              VMs on different nodes on a shared L2 (see README)
  kubeconfig  print the path of the cluster-admin kubeconfig
`

func main() {
	cfg := cluster.DefaultConfig()
	if dir := os.Getenv("PODVIRT_CLUSTER_DIR"); dir != "" {
		cfg.Dir = dir
	}
	if n := os.Getenv("PODVIRT_NODES"); n != "" {
		v, err := strconv.Atoi(n)
		if err != nil {
			fmt.Fprintf(os.Stderr, "podvirt-cluster: PODVIRT_NODES=%q is not a number of nodes\n", n)
			os.Exit(2)
		}
		cfg.Nodes = v
	}
	flags := flag.NewFlagSet("podvirt-cluster", flag.ContinueOnError)
	flags.StringVar(&cfg.Dir, "dir", cfg.Dir, "state directory of the cluster (env PODVIRT_CLUSTER_DIR)")
	flags.IntVar(&cfg.Nodes, "nodes", cfg.Nodes, "number of nodes (env PODVIRT_NODES, make up NODES=N); default: as many as the cluster has, 1 for a new one")
	flags.Usage = func() { fmt.Fprint(os.Stderr, usage); flags.PrintDefaults() }
	if err := flags.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if flags.NArg() != 1 {
		flags.Usage()
		os.Exit(2)
	}
	cfg.Progress = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, flags.Arg(0)); err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-cluster %s: %v\n", flags.Arg(0), err)
		os.Exit(1)
	}
}

// demoNodes is how many nodes `make demo` brings up unless told: its two
// VMs go to different nodes.
const demoNodes = 2

func run(ctx context.Context, cfg cluster.Config, command string) error {
	if command != "up" && command != "down" && command != "demo" && command != "kubeconfig" {
		return fmt.Errorf("unknown command %q; run 'podvirt-cluster --help'", command)
	}
	if command == "demo" && cfg.Nodes == 0 {
		cfg.Nodes = demoNodes
	}
	c, err := cluster.New(cfg)
	if err != nil {
		return err
	}
	switch command {
	case "kubeconfig":
		fmt.Println(c.Kubeconfig())
		return nil
	case "down":
		return c.Down(ctx)
	}
	if err := c.Up(ctx); err != nil {
		return fmt.Errorf("%w\n(see the logs under %s/logs; 'make down' removes what was started)", err, cfg.Dir)
	}
	if command == "demo" {
		if err := demo(ctx, c, cfg.Dir); err != nil {
			return err
		}
	}
	kubectl, err := deps.Binary("kubernetes", "kubectl")
	if err != nil {
		return err
	}
	fmt.Printf("\nTo use the cluster:\n  export KUBECONFIG=%s PATH=%s:$PATH\n  kubectl get nodes\n", c.Kubeconfig(), filepath.Dir(kubectl))
	return nil
}

func demo(ctx context.Context, c *cluster.Cluster, dir string) error {
	// Under the cluster dir, so `make down` stops the registries and
	// removes the state.
	opts := stack.Options{Dir: filepath.Join(dir, "demo"), Detach: true, Progress: os.Stdout}
	if err := stack.Demo(ctx, c, opts); err != nil {
		return fmt.Errorf("%w\n(podvirt's logs: kubectl logs -n %s -l app.kubernetes.io/instance=%s --all-containers)", err, stack.Namespace, stack.Release)
	}
	kubectl, err := deps.Binary("kubernetes", "kubectl")
	if err != nil {
		return err
	}
	get := exec.CommandContext(ctx, kubectl, "--kubeconfig", c.Kubeconfig(), "get", "vm,vmi,pvc", "-n", stack.Namespace, "-o", "wide")
	get.Stdout, get.Stderr = os.Stdout, os.Stderr
	fmt.Printf("\n$ kubectl get vm,vmi,pvc -n %s -o wide\n", stack.Namespace)
	if err := get.Run(); err != nil {
		return err
	}
	fmt.Printf("\nOpen a VM's serial console (Ctrl+] leaves):\n  go run ./cmd/podvirtctl console demo-1 -n %s --kubeconfig %s\n", stack.Namespace, c.Kubeconfig())
	return nil
}
