package launcher

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/kvm"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/migrationproxy"
	"github.com/podvirt/podvirt/runtime/network"
	"github.com/podvirt/podvirt/runtime/poddisk"
)

// VNCSocketName is the domain's VNC socket in the launcher's run dir
// (used only when the VMI asks for VNC).
const VNCSocketName = "vnc.sock"

// Config is what the launcher process is told (podvirt-launcher's flags).
type Config struct {
	// VMIPath, when set, is the VMI as JSON: the domain starts at once.
	// Empty: wait for the node daemon's Start for the VMI with UID.
	VMIPath string
	// NetworksPath, with VMIPath, is the CNI results of the pod's L2
	// attachments as JSON (launchercmd.Networks).
	NetworksPath string
	// UID is the VMI's UID when VMIPath is empty.
	UID string
	// RunDir is the private run dir: libvirtd's config, socket and logs,
	// the console log, the cloud-init disk, NVRAM, the VNC socket.
	RunDir string
	// SocketDir holds the command socket <uid>.sock.
	SocketDir string
	// DiskDir is where the volumes' disks are (<dir>/<volume>/...).
	DiskDir string
	// SecretDir is where the Secrets for the guest are mounted (see
	// v1.SecretDir).
	SecretDir string
	// DomainType is kvm or qemu; empty: DefaultDomainType.
	DomainType string
	// Private runs libvirtd in its own mount namespace (root, outside a
	// pod).
	Private bool
}

// KVMDevice is the device kvm.Probe tries to decide the default domain type.
var KVMDevice = kvm.DevicePath

// DefaultDomainType is kvm when kvm.Probe(KVMDevice) succeeds — the device
// exists, the CPU has VMX/SVM and a throwaway VM runs — qemu (TCG)
// otherwise.
func DefaultDomainType() string {
	if kvm.Probe(KVMDevice) == nil {
		return converter.DomainKVM
	}
	return converter.DomainQEMU
}

// Run is the launcher process: it starts a private libvirtd under the run
// dir, serves the command socket for the node daemon, starts the domain
// (at once with cfg.VMIPath, else on the node daemon's Start), and on
// ctx's end shuts the guest down gracefully (ACPI, then destroy after the
// VMI's grace period). It returns when the domain is gone, an error when
// it crashed.
func Run(ctx context.Context, cfg Config) error {
	began := time.Now()
	var vmi *v1.VirtualMachineInstance
	var networks *launchercmd.Networks
	uid := cfg.UID
	if cfg.VMIPath != "" {
		var err error
		if vmi, err = LoadVMI(cfg.VMIPath); err != nil {
			return err
		}
		uid = string(vmi.UID)
		if cfg.NetworksPath != "" {
			if networks, err = network.Load(cfg.NetworksPath); err != nil {
				return err
			}
		}
	} else if uid == "" {
		return fmt.Errorf("no VMI: give its JSON, or the UID of the VMI to wait for the node daemon to send")
	}
	if cfg.DomainType == "" {
		cfg.DomainType = DefaultDomainType()
	}

	d, err := libvirtd.Start(ctx, libvirtd.Config{
		Dir:     filepath.Join(cfg.RunDir, "libvirt"),
		Private: cfg.Private,
		Log:     os.Stderr,
		// Waiting for the node daemon means running in a launcher pod,
		// whose /etc is the container's own.
		SystemQEMUConf: vmi == nil && !cfg.Private,
	})
	if err != nil {
		return err
	}
	boot := cmdserver.Startup{LauncherStarted: began, LibvirtdReady: time.Now()}
	defer func() {
		if err := d.Stop(); err != nil {
			slog.Error("stop libvirtd", "err", err)
		}
	}()

	socks := MigrationSockets{Daemon: libvirtd.MigrationDir, Visible: d.Visible(libvirtd.MigrationDir)}
	if err := os.MkdirAll(socks.Visible, 0o700); err != nil {
		return fmt.Errorf("migration sockets: %w", err)
	}
	var l *Launcher
	start := func(ctx context.Context, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks) (cmdserver.Domain, cmdserver.Config, error) {
		var err error
		l, err = startDomain(d.URI, vmi, networks, cfg, boot)
		if err != nil {
			return nil, cmdserver.Config{}, err
		}
		l.sockets = socks
		return l, serverConfig(vmi), nil
	}
	var in *Incoming
	defer func() {
		if in != nil {
			_ = in.Close()
		}
	}()
	prepare := func(ctx context.Context, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, listen string) (
		*launchercmd.PrepareMigrationResponse, func(context.Context) (cmdserver.Domain, cmdserver.Config, error), error) {
		var resp *launchercmd.PrepareMigrationResponse
		var err error
		l, resp, in, err = prepareIncoming(d, vmi, networks, cfg, socks, listen)
		if err != nil {
			return nil, nil, err
		}
		wait := func(ctx context.Context) (cmdserver.Domain, cmdserver.Config, error) {
			// Arrived or failed, no one else connects; the source's
			// connections end the handshake, then close.
			defer func() { _ = in.StopAccepting() }()
			if err := in.Wait(ctx); err != nil {
				return nil, cmdserver.Config{}, err
			}
			if st, err := in.Stats(); err == nil {
				slog.Info("domain arrived by migration", "memory", st.MemoryProcessed, "disk", st.DiskProcessed, "downtime", st.Downtime)
			}
			return l, serverConfig(vmi), nil
		}
		return resp, wait, nil
	}
	var srv *cmdserver.Server
	if vmi != nil {
		if _, _, err := start(ctx, vmi, networks); err != nil {
			return err
		}
		srv = cmdserver.New(l, serverConfig(vmi))
	} else {
		srv = cmdserver.NewWaiting(uid, start)
		srv.AcceptMigrations(prepare)
	}
	defer func() {
		if l != nil {
			_ = l.Close()
		}
	}()
	sock := launchercmd.SocketPath(cfg.SocketDir, uid)
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
	case <-srv.IncomingFailed():
		return fmt.Errorf("the domain did not arrive: %w", srv.IncomingErr())
	case <-d.Exited():
		return fmt.Errorf("libvirtd exited before the domain was started; see its log under %s", d.Dir)
	case <-ctx.Done():
		slog.Info("stopped before the domain was started")
		return nil
	}
	sc := srv.Config()
	slog.Info("domain started", "vmi", sc.VMI, "domain", sc.DomainName)
	select {
	case <-l.Done():
	case <-ctx.Done():
		graceful, err := l.Shutdown(context.Background(), sc.Grace)
		slog.Info("domain shut down", "graceful", graceful, "err", err)
	}
	if s, reason := l.State(); s == v1.DomainCrashed {
		return fmt.Errorf("domain crashed: %s", reason)
	}
	return nil
}

// LoadVMI reads a VMI from a JSON file.
func LoadVMI(path string) (*v1.VirtualMachineInstance, error) {
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
func startDomain(uri string, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, cfg Config, boot cmdserver.Startup) (*Launcher, error) {
	opts, nics, warnings, err := domainOptions(vmi, networks, cfg)
	if err != nil {
		return nil, err
	}
	xml, err := converter.ConvertXML(vmi, opts)
	if err != nil {
		return nil, err
	}
	l, err := New(uri, converter.DomainName(vmi))
	if err != nil {
		return nil, err
	}
	l.health.Startup = boot
	for _, w := range warnings {
		l.warn(w)
	}
	l.podNIC = podNIC(vmi, opts.PasstSocket != "")
	if err := l.ServeDHCP(nics); err != nil {
		_ = l.Close()
		return nil, err
	}
	memory, memoryDir := resumeState(opts)
	resumed, err := l.StartResumed(xml, memory)
	if err != nil {
		_ = l.Close()
		return nil, err
	}
	if memory != "" {
		// Used once: the next start boots.
		if err := clearResume(memoryDir); err != nil {
			l.warn(fmt.Sprintf("the restored memory state stays marked for the next start: %v", err))
		}
		slog.Info("started from a snapshot's memory", "resumed", resumed)
	}
	l.startProbes(vmi, opts.PasstSocket != "")
	return l, nil
}

// prepareIncoming readies a launcher for vmi's domain to arrive by
// migration: the domain rendered for this pod (what the source sends as
// the destination XML), DHCP on its taps, and the proxy on listen.
func prepareIncoming(d *libvirtd.Daemon, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, cfg Config, socks MigrationSockets, listen string) (
	*Launcher, *launchercmd.PrepareMigrationResponse, *Incoming, error) {
	opts, nics, warnings, err := domainOptions(vmi, networks, cfg)
	if err != nil {
		return nil, nil, nil, err
	}
	xml, err := converter.ConvertXML(vmi, opts)
	if err != nil {
		return nil, nil, nil, err
	}
	token, err := migrationproxy.NewToken()
	if err != nil {
		return nil, nil, nil, err
	}
	l, err := New(d.URI, converter.DomainName(vmi))
	if err != nil {
		return nil, nil, nil, err
	}
	l.sockets = socks
	for _, w := range warnings {
		l.warn(w)
	}
	l.podNIC = podNIC(vmi, opts.PasstSocket != "")
	if err := l.ServeDHCP(nics); err != nil {
		_ = l.Close()
		return nil, nil, nil, err
	}
	in, err := l.AwaitIncoming(listen, token, d.Socket, socks)
	if err != nil {
		_ = l.Close()
		return nil, nil, nil, err
	}
	// The probes start once the arrived guest runs here.
	l.startProbes(vmi, opts.PasstSocket != "")
	return l, &launchercmd.PrepareMigrationResponse{Address: in.Addr(), Token: token, DomainXml: xml, CertificateSha256: in.CertificateSHA256()}, in, nil
}

// domainOptions resolves what the converter needs beyond the VMI from the
// pod: the disks with their declared formats, the cloud-init disk (built
// here), and the taps with the guest MACs podvirt-l2 chose; warnings say
// what of the VMI the pod cannot give.
func domainOptions(vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, cfg Config) (
	opts converter.Options, nics []network.GuestNIC, warnings []string, err error) {
	opts = converter.Options{
		DomainType: cfg.DomainType,
		ConsoleLog: filepath.Join(cfg.RunDir, "console.log"),
		NVRAMDir:   cfg.RunDir,
		Disks:      map[string]converter.DiskSource{},
		// Used only when the VMI asks for VNC; `podvirt-launcher vnc`
		// connects here.
		VNCSocket: filepath.Join(cfg.RunDir, VNCSocketName),
	}
	for i := range vmi.Spec.Volumes {
		vol := &vmi.Spec.Volumes[i]
		if vol.CloudInitNoCloud != nil {
			opts.CloudInitDisk = filepath.Join(cfg.RunDir, "cloud-init.iso")
			sec, err := readNoCloudSecrets(vmi, vol.CloudInitNoCloud, cfg.SecretDir)
			if err != nil {
				return opts, nil, nil, err
			}
			files, err := converter.NoCloudFiles(vmi, vol.CloudInitNoCloud, sec)
			if err != nil {
				return opts, nil, nil, fmt.Errorf("volume %s: %w", vol.Name, err)
			}
			if err := converter.WriteNoCloudISO(opts.CloudInitDisk, files); err != nil {
				return opts, nil, nil, err
			}
			continue
		}
		src, err := converter.DefaultDiskSource(vol, opts)
		if err != nil {
			return opts, nil, nil, err
		}
		if rel, ok := strings.CutPrefix(src.Path, v1.DiskDir+"/"); ok {
			src.Path = filepath.Join(cfg.DiskDir, rel)
		}
		// A disk.podvirt.io volume declares its format (raw for Block).
		if declared, ok, err := poddisk.Source(cfg.DiskDir, vol.Name); err != nil {
			return opts, nil, nil, err
		} else if ok {
			src = declared
		}
		opts.Disks[vol.Name] = src
	}
	socket, warning, err := startPasst(vmi, cfg.RunDir)
	if err != nil {
		return opts, nil, nil, err
	}
	opts.PasstSocket = socket
	if warning != "" {
		warnings = append(warnings, warning)
	}
	if networks == nil {
		return opts, nil, warnings, nil
	}
	if nics, err = network.GuestNICs(networks); err != nil {
		return opts, nil, nil, err
	}
	opts.Taps = map[string]converter.Tap{}
	for i := range nics {
		// The launcher runs in the pod: the taps are in its own netns,
		// whatever path the plugin knew the netns by.
		nics[i].NetNS = ""
		opts.Taps[nics[i].Network] = converter.Tap{Dev: nics[i].Tap, MAC: nics[i].MAC.String()}
	}
	return opts, nics, warnings, nil
}
