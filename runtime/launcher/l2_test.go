package launcher

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cni"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/contracts/podlink"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/dhcp"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/network"
	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/harness/netnstest"
	"github.com/podvirt/podvirt/test/images/guest"
)

// The L2 network the guests share, and the names in the throwaway node
// netns: a veth pair standing in for the node's NIC (macvlan master) and
// the node bridge (bridge mode).
const (
	l2Net     = "l2"
	l2Subnet  = "10.77.0.0/24"
	l2Master  = "pvm0"
	l2Peer    = "pvp0"
	l2Bridge  = "pvbr0"
	bootLimit = 5 * time.Minute // two TCG guests boot side by side on a loaded host
)

// newNodeNS is a netns standing in for the node, with the veth pair
// l2Master–l2Peer up, so nothing touches the host's links.
func newNodeNS(t *testing.T) ns.NetNS { return netnstest.NewNode(t, l2Master, l2Peer) }

// l2Conf is the podvirt-l2 network config of mode with guest "tap" and
// host-local IPAM in dataDir.
func l2Conf(mode, dataDir string) []byte {
	m := map[string]any{
		"cniVersion": "1.1.0", "name": l2Net, "type": "podvirt-l2", "mode": mode, "guest": cni.GuestTap,
		"ipam": map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": [][]map[string]any{{{"subnet": l2Subnet}}}},
	}
	switch mode {
	case cni.ModeMacvlan:
		m["master"] = l2Master
	case cni.ModeBridge:
		m["bridge"] = l2Bridge
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

// cniAdd runs the plugin's ADD (in process, in the node netns, as kubelet
// would exec it there) for pod, deleting it at cleanup, and returns the
// result as printed and decoded.
func cniAdd(t *testing.T, node, pod ns.NetNS, id, ifName string, conf []byte) ([]byte, *current.Result) {
	t.Helper()
	args := &skel.CmdArgs{ContainerID: id, Netns: pod.Path(), IfName: ifName, StdinData: conf}
	var raw []byte
	err := node.Do(func(ns.NetNS) error {
		r, out, err := testutils.CmdAddWithArgs(args, func() error { return cni.Funcs().Add(args) })
		if err == nil && r == nil {
			err = fmt.Errorf("no result")
		}
		raw = out
		return err
	})
	if err != nil {
		t.Fatalf("CNI ADD %s: %v", id, err)
	}
	t.Cleanup(func() {
		err := node.Do(func(ns.NetNS) error {
			return testutils.CmdDelWithArgs(args, func() error { return cni.Funcs().Del(args) })
		})
		if err != nil {
			t.Errorf("CNI DEL %s: %v", id, err)
		}
	})
	res := &current.Result{}
	if err := json.Unmarshal(raw, res); err != nil {
		t.Fatalf("decoding CNI result: %v\n%s", err, raw)
	}
	return raw, res
}

// l2VM is one launcher pod: its netns, CNI result, libvirtd and domain.
type l2VM struct {
	name    string
	pod     ns.NetNS
	ip      string // the CNI-assigned address, CIDR
	l       *Launcher
	console string
}

func startL2VM(t *testing.T, art guest.Artifacts, node ns.NetNS, conf []byte, name string) *l2VM {
	t.Helper()
	pod := netnstest.New(t)
	raw, res := cniAdd(t, node, pod, "ctr-"+name, podlink.InterfaceName(l2Net), conf)
	if len(res.IPs) == 0 {
		t.Fatalf("CNI result has no IP: %s", raw)
	}
	st := launchercmd.Networks{Attachments: []launchercmd.Attachment{{Name: l2Net, Result: raw}}}
	nics, err := network.GuestNICs(&st)
	if err != nil {
		t.Fatal(err)
	}
	if len(nics) != 1 || nics[0].Lease == nil || nics[0].NetNS != pod.Path() {
		t.Fatalf("guest NICs from the CNI result: %+v", nics)
	}
	d := startDaemonIn(t, pod)

	dir := t.TempDir()
	overlay := filepath.Join(dir, "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", art.Disk, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("overlay: %v: %s", err, out)
	}
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "test", UID: types.UID(newUID(t))},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory: v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{
					Disks:      []v1.Disk{{Name: "root"}},
					Interfaces: []v1.Interface{{Name: l2Net}},
				},
			},
			Volumes:  []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}}},
			Networks: []v1.Network{{Name: l2Net, NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: l2Net}}}},
		},
	}
	console := filepath.Join(dir, "console.log")
	xml, err := converter.ConvertXML(vmi, converter.Options{
		DomainType: converter.DomainQEMU,
		Disks:      map[string]converter.DiskSource{"root": {Path: overlay, Format: diskmeta.FormatQCOW2}},
		ConsoleLog: console,
		Taps:       map[string]converter.Tap{l2Net: {Dev: nics[0].Tap, MAC: nics[0].MAC.String()}},
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := New(d.URI, converter.DomainName(vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing launcher: %v", err)
		}
	})
	if err := l.ServeDHCP(nics); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(xml); err != nil {
		t.Fatal(err)
	}
	return &l2VM{name: name, pod: pod, ip: res.IPs[0].Address.String(), l: l, console: console}
}

var ipLine = regexp.MustCompile(regexp.QuoteMeta(guest.IPMarker) + ` (\S+) (\S+)`)

// waitGuestIP waits for the guest's DHCP-bound line and returns the
// interface and address it names.
func waitGuestIP(t *testing.T, vm *l2VM) (ifName, cidr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(vm.console)
		if m := ipLine.FindSubmatch(b); m != nil {
			return string(m[1]), string(m[2])
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: no %s line within %s (DHCP replies %v); console:\n%s", vm.name, guest.IPMarker, bootLimit, vm.l.DHCPReplies(), guest.Tail(b, 2000))
		case <-tick.C:
		}
	}
}

// consoleRun types cmd on vm's serial console (again every few seconds,
// the shell may not be up yet) until a line of output contains want.
func consoleRun(t *testing.T, vm *l2VM, cmd, want string, timeout time.Duration) string {
	t.Helper()
	c, err := vm.l.Console()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	lines := make(chan string, 100)
	go func() {
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
	}()
	deadline := time.After(timeout)
	resend := time.NewTicker(5 * time.Second)
	defer resend.Stop()
	if _, err := c.Write([]byte("\n" + cmd + "\n")); err != nil {
		t.Fatal(err)
	}
	for {
		select {
		case line, ok := <-lines:
			if !ok {
				t.Fatalf("%s: console closed", vm.name)
			}
			if strings.Contains(line, want) && !strings.Contains(line, cmd) {
				return line
			}
		case <-resend.C:
			_, _ = c.Write([]byte(cmd + "\n"))
		case <-deadline:
			b, _ := os.ReadFile(vm.console)
			t.Fatalf("%s: %q printed no %q within %s; console:\n%s", vm.name, cmd, want, timeout, guest.Tail(b, 2000))
		}
	}
}

// TestL2GuestTap boots two guests on one L2 network through podvirt-l2's
// guest "tap" path, each in its own pod netns under its own libvirtd as
// in a launcher pod: each must get its CNI-assigned address from the
// launcher's DHCP server and ping the other over the network. Then one
// domain is stopped and its DHCP server must stop with it.
// l2Guest checks what a test of guests on L2 needs (root, libvirt, the
// host-local IPAM plugin on PATH) and builds the test guest.
func l2Guest(t *testing.T) guest.Artifacts {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces and links and runs a private libvirtd")
	}
	if err := libvirtd.CheckInstalled(); err != nil {
		t.Fatal(err)
	}
	hostLocal, err := deps.Binary("cni-plugins", "host-local")
	if err != nil {
		t.Fatal(err)
	}
	// The plugin finds its IPAM on CNI_PATH, which testutils takes from PATH.
	t.Setenv("PATH", filepath.Dir(hostLocal)+string(os.PathListSeparator)+os.Getenv("PATH"))
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	art, err := guest.Build(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	return art
}

func TestL2GuestTap(t *testing.T) {
	art := l2Guest(t)

	for _, mode := range []string{cni.ModeBridge, cni.ModeMacvlan} {
		t.Run(mode, func(t *testing.T) {
			node := newNodeNS(t)
			conf := l2Conf(mode, t.TempDir())
			start := time.Now()
			a := startL2VM(t, art, node, conf, "l2-a-"+mode)
			b := startL2VM(t, art, node, conf, "l2-b-"+mode)
			vms := []*l2VM{a, b}
			for _, vm := range vms {
				ifName, cidr := waitGuestIP(t, vm)
				t.Logf("%s: %s %s by DHCP after %s", vm.name, ifName, cidr, time.Since(start).Round(time.Millisecond))
				if cidr != vm.ip {
					t.Errorf("%s: guest got %s on %s, the CNI result says %s", vm.name, cidr, ifName, vm.ip)
				}
				if r := vm.l.DHCPReplies(); r[dhcp.Ack] < 1 {
					t.Errorf("%s: DHCP replies %v, want an ACK", vm.name, r)
				}
				if ifs := vm.l.Interfaces(); len(ifs) != 1 || ifs[0].Network != l2Net || ifs[0].Addr.String() != vm.ip || !ifs[0].Acked || ifs[0].MAC == nil {
					t.Errorf("%s: interfaces %+v, want %s %s acked", vm.name, ifs, l2Net, vm.ip)
				}
			}
			if t.Failed() {
				return
			}
			for _, p := range [][2]*l2VM{{a, b}, {b, a}} {
				from, to := p[0], p[1]
				toIP := strings.Split(to.ip, "/")[0]
				line := consoleRun(t, from, "ping -c 1 -W 2 "+toIP, "bytes from "+toIP, 2*time.Minute)
				t.Logf("%s → %s: %s", from.name, toIP, strings.TrimSpace(line))
			}

			// The DHCP server goes when the domain does.
			if !a.l.DHCPRunning() {
				t.Fatal("DHCP server not running while the domain runs")
			}
			sctx, scancel := context.WithTimeout(context.Background(), time.Minute)
			defer scancel()
			if _, err := a.l.Shutdown(sctx, time.Second); err != nil {
				t.Fatal(err)
			}
			for a.l.DHCPRunning() {
				select {
				case <-sctx.Done():
					t.Fatal("DHCP server still running after the domain ended")
				case <-time.After(20 * time.Millisecond):
				}
			}
		})
	}
}
