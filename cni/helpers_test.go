package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/harness/netnstest"
)

// Spec versions every mode is tested with.
var specVersions = []string{"0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"}

// Names inside a test node's netns: the veth pair standing in for the
// node's NIC (macvlan master and its far end) and the bridge.
const (
	testMaster = "pvm0"
	testPeer   = "pvp0"
	testBridge = "pvbr0"
	testNet    = "l2test"
)

var buildDir string // where buildPlugin puts podvirt-l2; removed by TestMain

func TestMain(m *testing.M) {
	code := m.Run()
	if buildDir != "" {
		_ = os.RemoveAll(buildDir)
	}
	os.Exit(code)
}

func requireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces and links; run the tests as root")
	}
}

// upstreamPluginDir is the directory of the upstream reference plugins
// (host-local, static, macvlan, bridge, ...) that `make deps` builds.
func upstreamPluginDir(t testing.TB) string {
	t.Helper()
	var dir string
	for _, p := range []string{"host-local", "static", "macvlan", "bridge"} {
		path, err := deps.Binary("cni-plugins", p)
		if err != nil {
			t.Fatal(err)
		}
		dir = filepath.Dir(path)
	}
	return dir
}

func cnitoolPath(t testing.TB) string {
	t.Helper()
	p, err := deps.Binary("cnitool", "cnitool")
	if err != nil {
		t.Fatal(err)
	}
	return p
}

var (
	buildOnce sync.Once
	buildErr  error
)

// buildPlugin builds cmd/podvirt-l2 once per test binary and returns the
// directory holding it.
func buildPlugin(t testing.TB) string {
	t.Helper()
	buildOnce.Do(func() {
		buildDir, buildErr = os.MkdirTemp("", "podvirt-l2-bin-")
		if buildErr != nil {
			return
		}
		// Built like the upstream binaries we compare with (deps.sh).
		cmd := exec.Command("go", "build", "-trimpath", "-ldflags", "-s -w", "-o", filepath.Join(buildDir, "podvirt-l2"), "github.com/podvirt/podvirt/cmd/podvirt-l2")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build podvirt-l2: %w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return buildDir
}

// useCNIPath makes dirs the plugin search path of in-process commands
// (testutils passes $PATH as CNI_PATH).
func useCNIPath(t *testing.T, dirs ...string) {
	t.Helper()
	t.Setenv("PATH", joinPath(append(dirs, os.Getenv("PATH"))...))
}

func joinPath(dirs ...string) string {
	return strings.Join(dirs, string(os.PathListSeparator))
}

func newNS(t testing.TB) ns.NetNS { return netnstest.New(t) }

// node is a netns standing in for a Kubernetes node: plugins run in it, so
// masters, bridges and VLAN links never touch the real host, and a veth
// pair testMaster/testPeer plays the node's NIC.
type node struct {
	ns.NetNS
}

func newNode(t testing.TB) *node {
	return &node{netnstest.NewNode(t, testMaster, testPeer)}
}

// conf builds a podvirt-l2 network config of the given spec version.
func conf(cniVersion string, fields map[string]any) []byte {
	m := map[string]any{"cniVersion": cniVersion, "name": testNet, "type": "podvirt-l2"}
	for k, v := range fields {
		m[k] = v
	}
	b, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return b
}

func hostLocal(dataDir, subnet string) map[string]any {
	return map[string]any{
		"type":    "host-local",
		"dataDir": dataDir,
		"ranges":  [][]map[string]any{{{"subnet": subnet}}},
	}
}

// leases lists the addresses host-local holds in dataDir for testNet.
func leases(t testing.TB, dataDir string) []string {
	t.Helper()
	return networkLeases(t, dataDir, testNet)
}

// networkLeases lists the addresses host-local holds in dataDir for network.
func networkLeases(t testing.TB, dataDir, network string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(dataDir, network))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		if net.ParseIP(e.Name()) != nil {
			out = append(out, e.Name())
		}
	}
	return out
}

// attachment is one pod interface driven through the in-process commands.
type attachment struct {
	node *node
	pod  ns.NetNS
	args *skel.CmdArgs
}

func newAttachment(n *node, pod ns.NetNS, containerID, ifName string, stdin []byte) *attachment {
	return &attachment{node: n, pod: pod, args: &skel.CmdArgs{
		ContainerID: containerID,
		Netns:       pod.Path(),
		IfName:      ifName,
		StdinData:   stdin,
	}}
}

func (a *attachment) add() (types.Result, error) {
	var r types.Result
	err := a.node.Do(func(ns.NetNS) error {
		var err error
		r, _, err = testutils.CmdAddWithArgs(a.args, func() error { return cmdAdd(a.args) })
		return err
	})
	return r, err
}

// addOK is add that fails the test on error and returns the result in the
// current version.
func (a *attachment) addOK(t testing.TB) *current.Result {
	t.Helper()
	r, err := a.add()
	if err != nil {
		t.Fatalf("ADD %s: %v", a.args.IfName, err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func (a *attachment) check(prev types.Result) error {
	args := *a.args
	args.StdinData = withPrevResult(a.args.StdinData, prev)
	return a.node.Do(func(ns.NetNS) error {
		return testutils.CmdCheckWithArgs(&args, func() error { return cmdCheck(&args) })
	})
}

func (a *attachment) del() error {
	return a.node.Do(func(ns.NetNS) error {
		return testutils.CmdDelWithArgs(a.args, func() error { return cmdDel(a.args) })
	})
}

func (a *attachment) status() error {
	return a.node.Do(func(ns.NetNS) error {
		return testutils.CmdStatus(func() error { return cmdStatus(a.args) })
	})
}

// withPrevResult returns stdin with prevResult set to r (in stdin's version).
func withPrevResult(stdin []byte, r types.Result) []byte {
	var m map[string]any
	if err := json.Unmarshal(stdin, &m); err != nil {
		panic(err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		panic(err)
	}
	var prev map[string]any
	if err := json.Unmarshal(b, &prev); err != nil {
		panic(err)
	}
	m["prevResult"] = prev
	out, err := json.Marshal(m)
	if err != nil {
		panic(err)
	}
	return out
}

// linkNames lists the links of netns n.
func linkNames(t testing.TB, n ns.NetNS) []string {
	t.Helper()
	var names []string
	err := n.Do(func(ns.NetNS) error {
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			names = append(names, l.Attrs().Name)
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}

// bridgePorts lists the ports of bridge br in netns n.
func bridgePorts(t testing.TB, n ns.NetNS, br string) []string {
	t.Helper()
	var ports []string
	err := n.Do(func(ns.NetNS) error {
		b, err := netlinksafe.LinkByName(br)
		if err != nil {
			return err
		}
		links, err := netlinksafe.LinkList()
		for _, l := range links {
			if l.Attrs().MasterIndex == b.Attrs().Index {
				ports = append(ports, l.Attrs().Name)
			}
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return ports
}

// guestIP returns the first IP of r and the interface it is assigned to.
func guestIP(t testing.TB, r *current.Result) (net.IP, *current.Interface) {
	t.Helper()
	if len(r.IPs) == 0 {
		t.Fatalf("result has no IP: %+v", r)
	}
	ipc := r.IPs[0]
	if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(r.Interfaces) {
		t.Fatalf("result IP %s has no valid interface index", ipc.Address.String())
	}
	return ipc.Address.IP, r.Interfaces[*ipc.Interface]
}

var (
	vlanOnce             sync.Once
	vlanLinks, vlanBrFlt bool
)

// kernelVLAN reports whether the kernel can make 802.1Q VLAN links (macvlan
// mode's VLAN) and VLAN-filtering bridges (bridge mode's VLAN), probed once
// in a scratch netns.
func kernelVLAN(t testing.TB) (links, bridgeFiltering bool) {
	t.Helper()
	vlanOnce.Do(func() {
		scratch := newNode(t)
		_ = scratch.Do(func(ns.NetNS) error {
			m, err := netlinksafe.LinkByName(testMaster)
			if err != nil {
				return err
			}
			attrs := netlink.NewLinkAttrs()
			attrs.Name = "probe.1"
			attrs.ParentIndex = m.Attrs().Index
			vlanLinks = netlink.LinkAdd(&netlink.Vlan{LinkAttrs: attrs, VlanId: 1}) == nil
			on := true
			attrs = netlink.NewLinkAttrs()
			attrs.Name = "probebr"
			vlanBrFlt = netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs, VlanFiltering: &on}) == nil
			return nil
		})
	})
	return vlanLinks, vlanBrFlt
}

// vlanSupported reports whether mode can tag VLANs on this kernel.
func vlanSupported(t testing.TB, mode string) bool {
	links, filtering := kernelVLAN(t)
	if mode == ModeMacvlan {
		return links
	}
	return filtering
}

// vlanKernelGap names what this kernel lacks for VLANs in mode.
func vlanKernelGap(mode string) string {
	if mode == ModeMacvlan {
		return "kernel has no 802.1Q VLAN links (CONFIG_VLAN_8021Q)"
	}
	return "kernel has no bridge VLAN filtering (CONFIG_BRIDGE_VLAN_FILTERING)"
}
