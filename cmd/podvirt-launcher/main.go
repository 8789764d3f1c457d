// Command podvirt-launcher runs one VM's QEMU through libvirt inside its launcher pod.
//
//	podvirt-launcher --vmi vmi.json [--networks networks.json] [--run-dir DIR] [--socket-dir DIR] [--private-mounts] [--domain-type qemu]
//
// It starts a private libvirtd under the run dir, renders the VMI as a
// domain, serves the command socket <socket dir>/<vmi-uid>.sock
// (runtime/cmdserver: status, pause, resume, shutdown, console) for the
// node daemon, starts the domain, and on SIGTERM shuts the guest down gracefully
// (ACPI, then destroy after the VMI's grace period). With --networks (the
// CNI results of the pod's L2 attachments, see runtime/network) it plugs
// each tap-bound NIC into the tap podvirt-l2 made, with the guest MAC the
// plugin chose, and serves the guest its address over DHCP on that tap
// while the domain runs. It exits when the
// domain is gone, removing its socket: 0 when the guest shut down, 1 when
// it crashed.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/launcher"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/network"
)

func main() {
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Printf("podvirt-launcher %s\n", version.Version)
		return
	}
	vmiPath := flag.String("vmi", "", "VMI as JSON (required)")
	runDir := flag.String("run-dir", v1.PrivateDir, "private run dir: libvirtd config, socket, logs, overlays")
	private := flag.Bool("private-mounts", false, "run libvirtd in its own mount namespace (root; outside a pod)")
	domainType := flag.String("domain-type", "", "kvm or qemu (default: kvm when /dev/kvm exists)")
	networks := flag.String("networks", "", "CNI results of the pod's L2 attachments as JSON (runtime/network.Status)")
	socketDir := flag.String("socket-dir", v1.SocketDir, "directory of the command socket <vmi-uid>.sock")
	flag.Parse()
	if err := run(*vmiPath, *networks, *runDir, *socketDir, *private, *domainType); err != nil {
		slog.Error("launcher", "err", err)
		os.Exit(1)
	}
}

func run(vmiPath, networksPath, runDir, socketDir string, private bool, domainType string) error {
	if vmiPath == "" {
		return fmt.Errorf("--vmi is required")
	}
	b, err := os.ReadFile(vmiPath)
	if err != nil {
		return err
	}
	vmi := &v1.VirtualMachineInstance{}
	if err := json.Unmarshal(b, vmi); err != nil {
		return fmt.Errorf("decoding %s: %w", vmiPath, err)
	}
	if vmi.UID == "" {
		return fmt.Errorf("%s: the VMI has no UID (the command socket is named after it)", vmiPath)
	}
	grace := 30 * time.Second
	if g := vmi.Spec.TerminationGracePeriodSeconds; g != nil {
		grace = time.Duration(*g) * time.Second
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := libvirtd.Start(ctx, libvirtd.Config{Dir: filepath.Join(runDir, "libvirt"), Private: private, Log: os.Stderr})
	if err != nil {
		return err
	}
	defer func() {
		if err := d.Stop(); err != nil {
			slog.Error("stop libvirtd", "err", err)
		}
	}()

	opts := converter.Options{DomainType: domainType, ConsoleLog: filepath.Join(runDir, "console.log"), NVRAMDir: runDir}
	for _, vol := range vmi.Spec.Volumes {
		if vol.CloudInitNoCloud != nil {
			opts.CloudInitDisk = filepath.Join(runDir, "cloud-init.iso")
			if err := converter.WriteNoCloudISO(opts.CloudInitDisk, converter.NoCloudFiles(vmi, vol.CloudInitNoCloud)); err != nil {
				return err
			}
		}
	}
	var nics []network.GuestNIC
	if networksPath != "" {
		st, err := network.Load(networksPath)
		if err != nil {
			return err
		}
		if nics, err = st.GuestNICs(); err != nil {
			return err
		}
		opts.Taps = map[string]converter.Tap{}
		for i := range nics {
			// The launcher runs in the pod: the taps are in its own netns,
			// whatever path the plugin knew the netns by.
			nics[i].NetNS = ""
			opts.Taps[nics[i].Network] = converter.Tap{Dev: nics[i].Tap, MAC: nics[i].MAC.String()}
		}
	}
	xml, err := converter.ConvertXML(vmi, opts)
	if err != nil {
		return err
	}
	l, err := launcher.New(d.URI, converter.DomainName(vmi))
	if err != nil {
		return err
	}
	defer l.Close()
	srv := cmdserver.New(l, cmdserver.Config{
		VMI:        vmi.Namespace + "/" + vmi.Name,
		UID:        string(vmi.UID),
		DomainName: converter.DomainName(vmi),
		Grace:      grace,
	})
	sock := cmdserver.SocketPath(socketDir, string(vmi.UID))
	if err := srv.ListenAndServe(sock); err != nil {
		return err
	}
	defer func() {
		// Lets a Shutdown call in flight get its answer; removes the socket.
		if err := srv.Stop(5 * time.Second); err != nil {
			slog.Error("stop command server", "err", err)
		}
	}()
	slog.Info("serving commands", "socket", sock)
	if err := l.ServeDHCP(nics); err != nil {
		return err
	}
	if err := l.Start(xml); err != nil {
		return err
	}
	slog.Info("domain started", "domain", converter.DomainName(vmi))
	select {
	case <-l.Done():
	case <-ctx.Done():
		graceful, err := l.Shutdown(context.Background(), grace)
		slog.Info("domain shut down", "graceful", graceful, "err", err)
	}
	if s, reason := l.State(); s == launcher.StateCrashed {
		return fmt.Errorf("domain crashed: %s", reason)
	}
	return nil
}
