// Command podvirt-cluster brings a real single-node Kubernetes up on this
// machine and takes it down again (`make up`, `make down`, `make demo`).
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

	corev1 "k8s.io/api/core/v1"

	"github.com/podvirt/podvirt/test/cluster"
	"github.com/podvirt/podvirt/test/deps"
)

const usage = `usage: podvirt-cluster [--dir DIR] COMMAND

Commands:
  up          bring the local cluster up (again: harmless) and print its kubeconfig
  down        stop every process of the cluster and remove its links, mounts,
              network namespaces, cgroups and state directory
  demo        up, then run a proof pod built by code and print its log
  kubeconfig  print the path of the cluster-admin kubeconfig
`

func main() {
	cfg := cluster.DefaultConfig()
	if dir := os.Getenv("PODVIRT_CLUSTER_DIR"); dir != "" {
		cfg.Dir = dir
	}
	flags := flag.NewFlagSet("podvirt-cluster", flag.ContinueOnError)
	flags.StringVar(&cfg.Dir, "dir", cfg.Dir, "state directory of the cluster (env PODVIRT_CLUSTER_DIR)")
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

func run(ctx context.Context, cfg cluster.Config, command string) error {
	if command != "up" && command != "down" && command != "demo" && command != "kubeconfig" {
		return fmt.Errorf("unknown command %q; run 'podvirt-cluster --help'", command)
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
		if err := demo(ctx, c); err != nil {
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

func demo(ctx context.Context, c *cluster.Cluster) error {
	fmt.Println("[demo] building the proof pod's image and importing it into the node")
	if err := c.ImportProbe(ctx); err != nil {
		return err
	}
	name := fmt.Sprintf("podvirt-proof-%d", time.Now().Unix())
	fmt.Printf("[demo] running pod %s to completion\n", name)
	pod := cluster.ProbePod(name, nil)
	// The pod reaches the API server through its Service (kube-proxy); the
	// kubelet expands the Service's environment variables.
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_CONNECT", Value: "$(KUBERNETES_SERVICE_HOST):$(KUBERNETES_SERVICE_PORT)"}}
	pod, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
	if err != nil {
		return err
	}
	fmt.Printf("[demo] pod %s %s on node %s (IP %s); its log, read through the API server:\n%s", pod.Name, pod.Status.Phase, pod.Spec.NodeName, pod.Status.PodIP, logs)
	return nil
}
