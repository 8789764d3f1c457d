package cni

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// segBridge is the plain bridge, in a netns of its own, that plays the L2
// segment (the switch) the nodes' uplinks are plugged into.
const segBridge = "seg0"

// uplinkFields is a bridge-mode config whose bridge has the node's NIC,
// testMaster, as uplink.
func uplinkFields(vlan int) map[string]any {
	f := modeFields(ModeBridge, vlan)
	f["uplink"] = testMaster
	return f
}

type segment struct{ ns.NetNS }

func newSegment(t *testing.T) *segment {
	t.Helper()
	s := &segment{newNS(t)}
	err := s.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = segBridge
		br := &netlink.Bridge{LinkAttrs: attrs}
		if err := netlink.LinkAdd(br); err != nil {
			return err
		}
		return netlink.LinkSetUp(br)
	})
	if err != nil {
		t.Fatalf("creating segment bridge: %v", err)
	}
	return s
}

// plug returns a node whose NIC, testMaster, is cabled to the segment: the
// far end of the node's veth, testPeer, moves into the segment's netns and
// becomes port of its bridge. Both ends go with the netns at cleanup.
func (s *segment) plug(t *testing.T, port string) *node {
	t.Helper()
	n := newNode(t)
	err := n.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(testPeer)
		if err != nil {
			return err
		}
		return netlink.LinkSetNsFd(l, int(s.Fd()))
	})
	if err == nil {
		err = s.Do(func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName(testPeer)
			if err != nil {
				return err
			}
			br, err := netlinksafe.LinkByName(segBridge)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetName(l, port); err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(l, br); err != nil {
				return err
			}
			return netlink.LinkSetUp(l)
		})
	}
	if err != nil {
		t.Fatalf("plugging a node into the segment as %q: %v", port, err)
	}
	return n
}

// TestUplinkAcrossNodes: two nodes, each with its own bridge whose uplink is
// cabled to a shared segment, get a pod each through ADD, and the pods talk
// TCP across the segment. With a VLAN the uplinks carry it tagged (the
// segment passes tagged frames through), and a pod on another VLAN must not
// get through.
func TestUplinkAcrossNodes(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, vlan := range []int{0, 100} {
		t.Run(fmt.Sprintf("vlan=%d", vlan), func(t *testing.T) {
			if vlan != 0 && !vlanSupported(t, ModeBridge) {
				t.Skip(vlanKernelGap(ModeBridge))
			}
			seg := newSegment(t)
			nodeA, nodeB := seg.plug(t, "sega"), seg.plug(t, "segb")
			// One host-local store for both nodes, as the controller's
			// reservations are cluster-wide: no address is handed out twice.
			dataDir := t.TempDir()
			attach := func(n *node, id string, vlan int) (ns.NetNS, net.IP) {
				pod := newNS(t)
				fields := uplinkFields(vlan)
				fields["ipam"] = hostLocal(dataDir, "10.4.0.0/24")
				a := newAttachment(n, pod, id, "net1", conf("1.1.0", fields))
				ip, _ := guestIP(t, a.addOK(t))
				t.Cleanup(func() { _ = a.del() })
				return pod, ip
			}
			podA, ipA := attach(nodeA, "ctr-a", vlan)
			podB, _ := attach(nodeB, "ctr-b", vlan)
			for name, n := range map[string]*node{"A": nodeA, "B": nodeB} {
				if got := bridgePorts(t, n, testBridge); !slices.Contains(got, testMaster) {
					t.Errorf("node %s: bridge ports %v, want the uplink %s among them", name, got, testMaster)
				}
			}
			if err := tcpExchange(podB, podA, ipA, 10*time.Second); err != nil {
				t.Fatalf("pod on node B to pod on node A (%s): %v", ipA, err)
			}
			if vlan != 0 {
				podC, _ := attach(nodeB, "ctr-c", vlan+1)
				if err := tcpExchange(podC, podA, ipA, time.Second); err == nil {
					t.Fatalf("pod C on VLAN %d reached pod A on VLAN %d across the segment", vlan+1, vlan)
				}
			}
		})
	}
}

// TestUplinkConcurrentAdds runs many ADDs of the built binary at once on a
// node whose bridge does not exist yet, as kubelet does when pods land
// together: every one must succeed, racing to create the bridge and to
// make the uplink its port, and every attachment must pass CHECK. The
// binary, not the in-process commands, so that each ADD has its own
// CNI_* environment.
func TestUplinkConcurrentAdds(t *testing.T) {
	requireRoot(t)
	plugins := upstreamPluginDir(t)
	bin := buildPlugin(t)
	useCNIPath(t, plugins)

	for _, vlan := range []int{0, 42} {
		t.Run(fmt.Sprintf("vlan=%d", vlan), func(t *testing.T) {
			if vlan != 0 && !vlanSupported(t, ModeBridge) {
				t.Skip(vlanKernelGap(ModeBridge))
			}
			n := newNode(t)
			fields := uplinkFields(vlan)
			fields["ipam"] = hostLocal(t.TempDir(), "10.5.0.0/24")
			stdin := conf("1.1.0", fields)

			const pods = 8
			atts := make([]*attachment, pods)
			results := make([]*current.Result, pods)
			errs := make([]error, pods)
			for i := range atts {
				atts[i] = newAttachment(n, newNS(t), fmt.Sprintf("ctr-%d", i), "net1", stdin)
				t.Cleanup(func() { _ = atts[i].del() })
			}
			var wg sync.WaitGroup
			for i, a := range atts {
				wg.Add(1)
				go func() {
					defer wg.Done()
					results[i], errs[i] = execAdd(n, filepath.Join(bin, "podvirt-l2"), joinPath(bin, plugins), a)
				}()
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Errorf("ADD %d: %v", i, err)
				}
			}
			if t.Failed() {
				t.FailNow()
			}
			ports := bridgePorts(t, n, testBridge)
			if len(ports) != pods+1 || !slices.Contains(ports, testMaster) {
				t.Errorf("bridge ports %v, want the uplink %s and %d veths", ports, testMaster, pods)
			}
			for i, a := range atts {
				if err := a.check(results[i]); err != nil {
					t.Errorf("CHECK %d: %v", i, err)
				}
			}
		})
	}
}

// execAdd runs the plugin binary bin for a's ADD in node n, with CNI_PATH
// cniPath, and returns the result it prints.
func execAdd(n *node, bin, cniPath string, a *attachment) (*current.Result, error) {
	var out, stderr bytes.Buffer
	err := n.Do(func(ns.NetNS) error {
		cmd := exec.Command(bin)
		cmd.Env = append(os.Environ(),
			"CNI_COMMAND=ADD",
			"CNI_CONTAINERID="+a.args.ContainerID,
			"CNI_NETNS="+a.args.Netns,
			"CNI_IFNAME="+a.args.IfName,
			"CNI_PATH="+cniPath,
		)
		cmd.Stdin = bytes.NewReader(a.args.StdinData)
		cmd.Stdout, cmd.Stderr = &out, &stderr
		return cmd.Run()
	})
	if err != nil {
		return nil, fmt.Errorf("%w\nstdout: %s\nstderr: %s", err, out.String(), stderr.String())
	}
	r := &current.Result{}
	if err := json.Unmarshal(out.Bytes(), r); err != nil {
		return nil, fmt.Errorf("result %q: %w", out.String(), err)
	}
	return r, nil
}

// TestUplinkRefused: an uplink the node lacks, or one that cannot or must
// not become a port of the bridge, fails ADD with a config error naming
// uplink and the link, leaves nothing behind, and leaves the link as it was.
func TestUplinkRefused(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	cases := []struct {
		name   string
		uplink string
		setup  func(t *testing.T, n *node) // makes the uplink unusable
		msg    string                      // prefix of the error message
		after  func(t *testing.T, n *node) // checks the link was left alone
	}{
		{name: "missing", uplink: "nosuch0", msg: `uplink: node link "nosuch0" not found: `,
			after: func(t *testing.T, n *node) {
				if slices.Contains(linkNames(t, n), testBridge) {
					t.Errorf("bridge %s created for an uplink that does not exist", testBridge)
				}
			}},
		{name: "port of another bridge", uplink: testMaster,
			setup: func(t *testing.T, n *node) {
				if err := n.Do(func(ns.NetNS) error { return addBridgeWithPort("other0", testMaster) }); err != nil {
					t.Fatal(err)
				}
			},
			msg: `uplink: node link "pvm0" already belongs to bridge "other0", not to bridge "pvbr0": `,
			after: func(t *testing.T, n *node) {
				if got := bridgePorts(t, n, "other0"); !slices.Equal(got, []string{testMaster}) {
					t.Errorf("ports of other0 after the failed ADD: %v, want the uplink %s still there", got, testMaster)
				}
			}},
		{name: "master of a macvlan network", uplink: testMaster,
			setup: func(t *testing.T, n *node) {
				// A pod of a macvlan-mode network on the same NIC.
				a := newAttachment(n, newNS(t), "ctr-macvlan", "net1", conf("1.1.0", modeFields(ModeMacvlan, 0)))
				a.addOK(t)
				t.Cleanup(func() { _ = a.del() })
			},
			msg: `uplink: node link "pvm0" cannot join bridge "pvbr0": `},
		{name: "a bridge", uplink: "other0",
			setup: func(t *testing.T, n *node) {
				if err := n.Do(func(ns.NetNS) error { return addBridgeWithPort("other0", "") }); err != nil {
					t.Fatal(err)
				}
			},
			msg: `uplink: node link "other0" is a bridge`},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n := newNode(t)
			if c.setup != nil {
				c.setup(t, n)
			}
			dataDir := t.TempDir()
			fields := modeFields(ModeBridge, 0)
			fields["uplink"] = c.uplink
			fields["ipam"] = hostLocal(dataDir, "10.6.0.0/24")
			a := newAttachment(n, newNS(t), "ctr-refused", "net1", conf("1.1.0", fields))
			expectCleanFailure(t, a, dataDir, types.ErrInvalidNetworkConfig, c.msg)
			if c.after != nil {
				c.after(t, n)
			}
		})
	}
}

// addBridgeWithPort creates bridge name and, unless port is empty, makes
// port a port of it.
func addBridgeWithPort(name, port string) error {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	br := &netlink.Bridge{LinkAttrs: attrs}
	if err := netlink.LinkAdd(br); err != nil {
		return err
	}
	if port == "" {
		return nil
	}
	l, err := netlinksafe.LinkByName(port)
	if err != nil {
		return err
	}
	return netlink.LinkSetMaster(l, br)
}

// TestCheckUplink: CHECK fails once the uplink no longer joins the bridge to
// the segment, and the next ADD on the node puts it back.
func TestCheckUplink(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	breakers := []struct {
		name    string
		vlan    int
		breakIt func(uplink netlink.Link) error // runs in the node's netns
		want    string
	}{
		{"left-bridge", 0, netlink.LinkSetNoMaster, `uplink "pvm0" is not a port of bridge "pvbr0"`},
		{"down", 0, netlink.LinkSetDown, `uplink "pvm0" is down`},
		{"vlan-removed", 42, func(l netlink.Link) error {
			return netlink.BridgeVlanDel(l, 42, false, false, false, true)
		}, `uplink "pvm0" is not a tagged member of VLAN 42`},
	}
	for _, b := range breakers {
		t.Run(b.name, func(t *testing.T) {
			if b.vlan != 0 && !vlanSupported(t, ModeBridge) {
				t.Skip(vlanKernelGap(ModeBridge))
			}
			n := newNode(t)
			dataDir := t.TempDir()
			attach := func(id string) (*attachment, types.Result) {
				fields := uplinkFields(b.vlan)
				fields["ipam"] = hostLocal(dataDir, "10.7.0.0/24")
				a := newAttachment(n, newNS(t), id, "net1", conf("1.1.0", fields))
				r, err := a.add()
				if err != nil {
					t.Fatalf("ADD %s: %v", id, err)
				}
				t.Cleanup(func() { _ = a.del() })
				return a, r
			}
			a, r := attach("ctr-first")
			if err := a.check(r); err != nil {
				t.Fatalf("CHECK before breaking: %v", err)
			}
			err := n.Do(func(ns.NetNS) error {
				l, err := netlinksafe.LinkByName(testMaster)
				if err != nil {
					return err
				}
				return b.breakIt(l)
			})
			if err != nil {
				t.Fatalf("breaking: %v", err)
			}
			if err := a.check(r); err == nil || !strings.Contains(err.Error(), b.want) {
				t.Fatalf("CHECK on a broken uplink: %v, want an error containing %q", err, b.want)
			}
			attach("ctr-second")
			if err := a.check(r); err != nil {
				t.Errorf("CHECK after the next ADD repaired the uplink: %v", err)
			}
		})
	}
}
