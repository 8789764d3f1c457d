// Command podvirt-launcher runs one VM's QEMU through libvirt inside its launcher pod.
//
//	podvirt-launcher [--vmi vmi.json [--networks networks.json]] [--run-dir DIR] [--socket-dir DIR] [--disk-dir DIR] [--private-mounts] [--domain-type qemu]
//
// It starts a private libvirtd under the run dir and serves the command
// socket <socket dir>/<vmi-uid>.sock (runtime/cmdserver) for the node
// daemon. In a launcher pod it is started without --vmi: the VMI's UID
// comes from $PODVIRT_VMI_UID (set by the controller), and the launcher
// waits until the node daemon sends the VMI and the CNI results of the
// pod's L2 attachments over the socket (Start). With --vmi (and
// optionally --networks, see runtime/network) it starts the domain at
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
	"encoding/json"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/launcher"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/network"
	"github.com/podvirt/podvirt/runtime/poddisk"
)

// UIDEnv is where the launcher pod's VMI UID comes from when no --vmi is given.
const UIDEnv = "PODVIRT_VMI_UID"

func main() {
	subcommand(os.Args[1:]) // console, vnc: see console.go
	if len(os.Args) > 1 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Printf("podvirt-launcher %s\n", version.Version)
		return
	}
	if os.Getpid() == 1 {
		runAsInit()
		return
	}
	var o options
	flag.StringVar(&o.vmiPath, "vmi", "", "VMI as JSON: start it at once (default: wait for the node daemon's Start, for the VMI with UID $"+UIDEnv+")")
	flag.StringVar(&o.runDir, "run-dir", v1.PrivateDir, "private run dir: libvirtd config, socket, logs, overlays")
	flag.BoolVar(&o.private, "private-mounts", false, "run libvirtd in its own mount namespace (root; outside a pod)")
	flag.StringVar(&o.domainType, "domain-type", "", "kvm or qemu (default: kvm when /dev/kvm exists)")
	flag.StringVar(&o.networksPath, "networks", "", "with --vmi: CNI results of the pod's L2 attachments as JSON (runtime/launchercmd.Networks)")
	flag.StringVar(&o.socketDir, "socket-dir", v1.SocketDir, "directory of the command socket <vmi-uid>.sock")
	flag.StringVar(&o.diskDir, "disk-dir", v1.DiskDir, "where the volumes' disks are (<dir>/<volume>/...)")
	flag.Parse()
	if err := run(o); err != nil {
		slog.Error("launcher", "err", err)
		os.Exit(1)
	}
}

type options struct {
	vmiPath, networksPath, runDir, socketDir, diskDir, domainType string
	private                                                       bool
}

func run(o options) error {
	var vmi *v1.VirtualMachineInstance
	var networks *launchercmd.Networks
	uid := os.Getenv(UIDEnv)
	if o.vmiPath != "" {
		var err error
		if vmi, err = loadVMI(o.vmiPath); err != nil {
			return err
		}
		uid = string(vmi.UID)
		if o.networksPath != "" {
			if networks, err = network.Load(o.networksPath); err != nil {
				return err
			}
		}
	} else if uid == "" {
		return fmt.Errorf("no VMI: pass --vmi, or set $%s to wait for the node daemon to send it", UIDEnv)
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	d, err := libvirtd.Start(ctx, libvirtd.Config{
		Dir:     filepath.Join(o.runDir, "libvirt"),
		Private: o.private,
		Log:     os.Stderr,
		// Waiting for the node daemon means running in a launcher pod,
		// whose /etc is the container's own.
		SystemQEMUConf: vmi == nil && !o.private,
	})
	if err != nil {
		return err
	}
	defer func() {
		if err := d.Stop(); err != nil {
			slog.Error("stop libvirtd", "err", err)
		}
	}()

	var l *launcher.Launcher
	start := func(ctx context.Context, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks) (cmdserver.Domain, cmdserver.Config, error) {
		var err error
		l, err = startDomain(d.URI, vmi, networks, o)
		if err != nil {
			return nil, cmdserver.Config{}, err
		}
		return l, serverConfig(vmi), nil
	}
	var srv *cmdserver.Server
	if vmi != nil {
		if _, _, err := start(ctx, vmi, networks); err != nil {
			return err
		}
		srv = cmdserver.New(l, serverConfig(vmi))
	} else {
		srv = cmdserver.NewWaiting(uid, start)
	}
	defer func() {
		if l != nil {
			_ = l.Close()
		}
	}()
	sock := launchercmd.SocketPath(o.socketDir, uid)
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

	select {
	case <-srv.Started():
	case <-d.Exited():
		return fmt.Errorf("libvirtd exited before the domain was started; see its log under %s", d.Dir)
	case <-ctx.Done():
		slog.Info("stopped before the domain was started")
		return nil
	}
	cfg := srv.Config()
	slog.Info("domain started", "vmi", cfg.VMI, "domain", cfg.DomainName)
	select {
	case <-l.Done():
	case <-ctx.Done():
		graceful, err := l.Shutdown(context.Background(), cfg.Grace)
		slog.Info("domain shut down", "graceful", graceful, "err", err)
	}
	if s, reason := l.State(); s == v1.DomainCrashed {
		return fmt.Errorf("domain crashed: %s", reason)
	}
	return nil
}

func loadVMI(path string) (*v1.VirtualMachineInstance, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	vmi := &v1.VirtualMachineInstance{}
	if err := json.Unmarshal(b, vmi); err != nil {
		return nil, fmt.Errorf("decoding %s: %w", path, err)
	}
	if vmi.UID == "" {
		return nil, fmt.Errorf("%s: the VMI has no UID (the command socket is named after it)", path)
	}
	return vmi, nil
}

func grace(vmi *v1.VirtualMachineInstance) time.Duration {
	if g := vmi.Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

func serverConfig(vmi *v1.VirtualMachineInstance) cmdserver.Config {
	return cmdserver.Config{
		VMI:        vmi.Namespace + "/" + vmi.Name,
		UID:        string(vmi.UID),
		DomainName: converter.DomainName(vmi),
		Grace:      grace(vmi),
	}
}

// startDomain renders vmi for this pod and starts its domain, with DHCP
// on its tap NICs.
func startDomain(uri string, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, o options) (*launcher.Launcher, error) {
	opts := converter.Options{
		DomainType: o.domainType,
		ConsoleLog: filepath.Join(o.runDir, "console.log"),
		NVRAMDir:   o.runDir,
		Disks:      map[string]converter.DiskSource{},
		// Used only when the VMI asks for VNC; `podvirt-launcher vnc`
		// connects here.
		VNCSocket: filepath.Join(o.runDir, VNCSocketName),
	}
	for i := range vmi.Spec.Volumes {
		vol := &vmi.Spec.Volumes[i]
		if vol.CloudInitNoCloud != nil {
			opts.CloudInitDisk = filepath.Join(o.runDir, "cloud-init.iso")
			if err := converter.WriteNoCloudISO(opts.CloudInitDisk, converter.NoCloudFiles(vmi, vol.CloudInitNoCloud)); err != nil {
				return nil, err
			}
			continue
		}
		src, err := converter.DefaultDiskSource(vol, opts)
		if err != nil {
			return nil, err
		}
		if rel, ok := strings.CutPrefix(src.Path, v1.DiskDir+"/"); ok {
			src.Path = filepath.Join(o.diskDir, rel)
		}
		// A disk.podvirt.io volume declares its format (raw for Block).
		if declared, ok, err := poddisk.Source(o.diskDir, vol.Name); err != nil {
			return nil, err
		} else if ok {
			src = declared
		}
		opts.Disks[vol.Name] = src
	}
	var nics []network.GuestNIC
	if networks != nil {
		var err error
		if nics, err = network.GuestNICs(networks); err != nil {
			return nil, err
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
		return nil, err
	}
	l, err := launcher.New(uri, converter.DomainName(vmi))
	if err != nil {
		return nil, err
	}
	if err := l.ServeDHCP(nics); err != nil {
		_ = l.Close()
		return nil, err
	}
	if err := l.Start(xml); err != nil {
		_ = l.Close()
		return nil, err
	}
	return l, nil
}
