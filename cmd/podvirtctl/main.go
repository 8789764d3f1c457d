// Command podvirtctl writes, starts, stops and reaches podvirt VMs: create
// vm and convert (print manifests), start, stop, restart, pause, unpause,
// console, vnc, version and shell completion; image push and image inspect
// publish VM disk files as containerDisks to registries.
//
// Installed (or linked) as kubectl-virt on the PATH it is also the kubectl
// plugin `kubectl virt`. It takes kubectl's connection flags (--kubeconfig,
// --context, -n/--namespace, --as, ...).
package main

import (
	"os"

	"k8s.io/cli-runtime/pkg/genericiooptions"

	"github.com/podvirt/podvirt/cmd/podvirtctl/internal/cli"
)

func main() {
	streams := genericiooptions.IOStreams{In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr}
	os.Exit(cli.Main(os.Args, streams))
}
