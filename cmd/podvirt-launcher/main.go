// Command podvirt-launcher runs one VM's QEMU through libvirt inside its launcher pod.
//
//	podvirt-launcher [--vmi vmi.json [--networks networks.json]] [--run-dir DIR] [--socket-dir DIR] [--disk-dir DIR] [--private-mounts] [--domain-type qemu]
//
// main only wires flags to runtime/launcher.Run, which starts a private
// libvirtd under the run dir and serves the command
// socket <socket dir>/<vmi-uid>.sock (runtime/cmdserver) for the node
// daemon. In a launcher pod it is started without --vmi: the VMI's UID
// comes from $PODVIRT_VMI_UID (set by the controller), and the launcher
// waits until the node daemon sends the VMI and the CNI results of the
// pod's L2 attachments over the socket (Start). With --vmi (and
// optionally --networks, see contracts/launchercmd) it starts the domain at
// once, for standalone use.
//
// Either way it renders the VMI as a domain, plugs each tap-bound NIC into
// the tap podvirt-l2 made, with the guest MAC the plugin chose, serves the
// guest its address over DHCP on that tap while the domain runs, starts
// the domain, and on SIGTERM shuts the guest down gracefully (ACPI, then
// destroy after the VMI's grace period). It exits when the domain is gone,
// removing its socket: 0 when the guest shut down, 1 when it crashed.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/runtime/launcher"
)

// UIDEnv is where the launcher pod's VMI UID comes from when no --vmi is given.
const UIDEnv = "PODVIRT_VMI_UID"

func main() {
	subcommand(os.Args[1:]) // console, vnc: see console.go
	if version.Asked(os.Stdout, "podvirt-launcher", os.Args[1:]) {
		return
	}
	if os.Getpid() == 1 {
		runAsInit()
		return
	}
	var cfg launcher.Config
	flag.StringVar(&cfg.VMIPath, "vmi", "", "VMI as JSON: start it at once (default: wait for the node daemon's Start, for the VMI with UID $"+UIDEnv+")")
	flag.StringVar(&cfg.RunDir, "run-dir", v1.PrivateDir, "private run dir: libvirtd config, socket, logs, overlays")
	flag.BoolVar(&cfg.Private, "private-mounts", false, "run libvirtd in its own mount namespace (root; outside a pod)")
	flag.StringVar(&cfg.DomainType, "domain-type", "", "kvm or qemu (default: kvm when /dev/kvm exists)")
	flag.StringVar(&cfg.NetworksPath, "networks", "", "with --vmi: CNI results of the pod's L2 attachments as JSON (contracts/launchercmd.Networks)")
	flag.StringVar(&cfg.SocketDir, "socket-dir", v1.SocketDir, "directory of the command socket <vmi-uid>.sock")
	flag.StringVar(&cfg.DiskDir, "disk-dir", v1.DiskDir, "where the volumes' disks are (<dir>/<volume>/...)")
	flag.StringVar(&cfg.SecretDir, "secret-dir", v1.SecretDir, "where the Secrets for the guest are (access credentials, cloud-init data)")
	flag.Parse()
	cfg.UID = os.Getenv(UIDEnv)
	if err := run(cfg); err != nil {
		slog.Error("launcher", "err", err)
		os.Exit(1)
	}
}

func run(cfg launcher.Config) error {
	if cfg.VMIPath == "" && cfg.UID == "" {
		return fmt.Errorf("no VMI: pass --vmi, or set $%s to wait for the node daemon to send it", UIDEnv)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	return launcher.Run(ctx, cfg)
}
