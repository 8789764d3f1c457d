package launcher

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
)

// passtStartTimeout bounds how long passt may take to bind its socket.
const passtStartTimeout = 10 * time.Second

// passtUser is the uid and gid passt runs as: nobody.
const passtUser = 65534

// allPortsFiles is how many files passt needs open to forward every TCP
// and UDP port: a socket each, and some to spare.
const allPortsFiles = 2*65536 + 1024

// raiseOpenFiles raises this process's open-file limit to at least n, so
// passt inherits it (Go hands a child the limit it started with unless the
// program set one itself).
func raiseOpenFiles(n uint64) error {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return err
	}
	if lim.Cur >= n {
		return syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim)
	}
	want := syscall.Rlimit{Cur: n, Max: max(lim.Max, n)}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("forwarding every port needs %d open files, the pod allows %d: %w", n, lim.Max, err)
	}
	return nil
}

// startPasst runs passt for the VMI's pod network interface, if it has one,
// forwarding the interface's ports from the pod's address into the guest,
// and returns its socket once it listens ("" without a pod network, or
// without passt, when QEMU's slirp carries the NIC and no port is
// forwarded). passt serves one QEMU and exits when it leaves (-1), and dies
// with the launcher. warning says how the pod network does less than the
// VMI asked.
func startPasst(vmi *v1.VirtualMachineInstance, runDir string) (socket, warning string, err error) {
	ifc := vmi.Spec.PodInterface()
	if ifc == nil {
		return "", "", nil
	}
	bin, err := exec.LookPath(converter.UserNetPasst)
	if err != nil {
		return "", "the launcher image has no passt: the pod network NIC falls back to QEMU's slirp, which forwards no port (Services, port-forward, ssh and probes cannot reach the guest); use a launcher image with passt", nil
	}
	// passt binds the forwarded ports as root, then runs as nobody, which
	// must be able to create its socket: runDir must let others through
	// (the pod's emptyDir does).
	dir := filepath.Join(runDir, "passt")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return "", "", err
	}
	if err := os.Chown(dir, passtUser, passtUser); err != nil {
		return "", "", err
	}
	socket = filepath.Join(dir, "passt.sock")
	_ = os.Remove(socket) // a previous launcher's in this pod
	logFile, err := os.Create(filepath.Join(runDir, "passt.log"))
	if err != nil {
		return "", "", err
	}
	defer logFile.Close()
	tcp, udp := converter.PasstPorts(ifc.Ports)
	if len(ifc.Ports) == 0 {
		if err := raiseOpenFiles(allPortsFiles); err != nil {
			// passt would fail to bind them all: forward none, and say
			// how to forward what the guest serves.
			warning = fmt.Sprintf("the pod network forwards no port into the guest (%v): list the guest's ports in interface %s's ports to forward them", err, ifc.Name)
			tcp, udp = "none", "none"
		}
	}
	cmd := exec.Command(bin, "--foreground", "--one-off", "--runas", fmt.Sprintf("%d:%d", passtUser, passtUser),
		"--socket", socket, "--tcp-ports", tcp, "--udp-ports", udp)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return "", "", fmt.Errorf("pod network: start passt: %w", err)
	}
	exited := make(chan struct{})
	go func() {
		_ = cmd.Wait() // its ProcessState says how it ended
		close(exited)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), passtStartTimeout)
	defer cancel()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		// Listening, not only bound: QEMU connects once, at start. Asking
		// the kernel rather than connecting, which would use up passt's
		// one client.
		if listening(socket) {
			return socket, warning, nil
		}
		select {
		case <-exited:
			b, _ := os.ReadFile(logFile.Name())
			return "", "", fmt.Errorf("pod network: passt (-t %s -u %s) %s before it listened: %s", tcp, udp, cmd.ProcessState, b)
		case <-ctx.Done():
			_ = cmd.Process.Kill()
			return "", "", errors.New("pod network: passt did not create its socket within " + passtStartTimeout.String())
		case <-tick.C:
		}
	}
}

// listening reports whether a unix socket bound at path listens in this
// thread's network namespace (/proc/.../net/unix, flag __SO_ACCEPTCON).
func listening(path string) bool {
	b, err := os.ReadFile("/proc/thread-self/net/unix")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		// Num RefCount Protocol Flags Type St Inode Path
		f := strings.Fields(line)
		if len(f) < 8 || f[7] != path {
			continue
		}
		flags, err := strconv.ParseUint(f[3], 16, 32)
		if err == nil && flags&soAcceptCon != 0 {
			return true
		}
	}
	return false
}

// soAcceptCon is the kernel's flag of a listening socket in /proc/net/unix.
const soAcceptCon = 0x10000

// podInterfaceName is the pod's own NIC, by the CNI convention.
const podInterfaceName = "eth0"

// podNIC is the pod network NIC as the guest has it: passt gives the guest
// the pod's address (and the MAC the VMI asks for). nil without a pod
// network interface or without passt.
func podNIC(vmi *v1.VirtualMachineInstance, passt bool) *cmdserver.Interface {
	ifc := vmi.Spec.PodInterface()
	if ifc == nil || !passt {
		return nil
	}
	nic := &cmdserver.Interface{Network: ifc.Name}
	nic.MAC, _ = net.ParseMAC(ifc.MACAddress)
	eth, err := net.InterfaceByName(podInterfaceName)
	if err != nil {
		return nic
	}
	addrs, err := eth.Addrs()
	if err != nil {
		return nic
	}
	for _, a := range addrs {
		if p, err := netip.ParsePrefix(a.String()); err == nil && p.Addr().Is4() {
			nic.Addr = p
			break
		}
	}
	return nic
}
