package cni

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// failingIPAM writes an IPAM plugin "failipam" that fails every ADD with
// CNI error 11 and succeeds at everything else, and returns its directory.
func failingIPAM(t *testing.T) string {
	dir := t.TempDir()
	script := "#!/bin/sh\n" +
		"if [ \"$CNI_COMMAND\" = ADD ]; then\n" +
		"  echo '{\"cniVersion\":\"1.1.0\",\"code\":11,\"msg\":\"simulated IPAM failure\"}'\n" +
		"  exit 1\n" +
		"fi\n"
	if err := os.WriteFile(filepath.Join(dir, "failipam"), []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestAddFailureLeavesNothing makes ADD fail at IPAM, and after IPAM, and
// checks that it undoes everything (links, bridge ports, leases) and that
// DEL afterwards succeeds, twice.
func TestAddFailureLeavesNothing(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t), failingIPAM(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		for _, guest := range []string{GuestNone, GuestTap} {
			t.Run(fmt.Sprintf("ipam-fails/%s/guest=%s", mode, guest), func(t *testing.T) {
				n := newNode(t)
				fields := modeFields(mode, 0)
				fields["guest"] = guest
				fields["ipam"] = map[string]any{"type": "failipam"}
				a := newAttachment(n, newNS(t), "ctr-fail", "net1", conf("1.1.0", fields))
				expectCleanFailure(t, a, t.TempDir(), types.ErrTryAgainLater, "simulated IPAM failure")
			})
		}
		// A route via an unreachable gateway fails after host-local has
		// leased an address: the lease must be given back.
		t.Run(fmt.Sprintf("fails-after-ipam/%s", mode), func(t *testing.T) {
			n := newNode(t)
			dataDir := t.TempDir()
			fields := modeFields(mode, 0)
			ipamConf := hostLocal(dataDir, "10.5.0.0/24")
			ipamConf["routes"] = []map[string]any{{"dst": "10.99.0.0/16", "gw": "192.168.250.1"}}
			fields["ipam"] = ipamConf
			a := newAttachment(n, newNS(t), "ctr-fail", "net1", conf("1.1.0", fields))
			expectCleanFailure(t, a, dataDir, types.ErrInternal, `configuring "net1" with the IPAM result: failed to add route`)
		})
		// The guest's result cannot be saved (resultsDir is under a
		// file): ADD fails last, and still undoes everything.
		t.Run(fmt.Sprintf("results-not-saved/%s", mode), func(t *testing.T) {
			n := newNode(t)
			dataDir := t.TempDir()
			file := filepath.Join(t.TempDir(), "file")
			if err := os.WriteFile(file, nil, 0o644); err != nil {
				t.Fatal(err)
			}
			fields := modeFields(mode, 0)
			fields["guest"] = GuestTap
			fields["ipam"] = hostLocal(dataDir, "10.5.1.0/24")
			fields["resultsDir"] = filepath.Join(file, "results")
			a := newAttachment(n, newNS(t), "ctr-fail", "net1", conf("1.1.0", fields))
			a.args.Args = "K8S_POD_UID=uid-1"
			expectCleanFailure(t, a, dataDir, types.ErrIOFailure, "saving CNI result")
		})
	}
}

// TestGCResults keeps the saved results of valid attachments of the
// network being collected and removes its others; other networks' results
// stay.
func TestGCResults(t *testing.T) {
	requireRoot(t)
	plugins := upstreamPluginDir(t)
	useCNIPath(t, plugins)

	n := newNode(t)
	resultsDir := t.TempDir()
	attach := func(network, containerID, podUID string) *attachment {
		fields := modeFields(ModeBridge, 0)
		fields["guest"] = GuestTap
		fields["resultsDir"] = resultsDir
		fields["name"] = network
		a := newAttachment(n, newNS(t), containerID, "net1", conf("1.1.0", fields))
		a.args.Args = "K8S_POD_UID=" + podUID
		a.addOK(t)
		t.Cleanup(func() { _ = a.del() })
		return a
	}
	attach("l2a", "ctr-keep", "uid-keep")
	attach("l2a", "ctr-gone", "uid-gone")
	attach("l2b", "ctr-other", "uid-other")

	fields := modeFields(ModeBridge, 0)
	fields["guest"] = GuestTap
	fields["resultsDir"] = resultsDir
	fields["name"] = "l2a"
	fields["cni.dev/valid-attachments"] = []types.GCAttachment{{ContainerID: "ctr-keep", IfName: "net1"}}
	t.Setenv("CNI_COMMAND", "GC")
	t.Setenv("CNI_PATH", plugins)
	if err := cmdGC(&skel.CmdArgs{StdinData: conf("1.1.0", fields)}); err != nil {
		t.Fatalf("GC: %v", err)
	}
	for uid, want := range map[string]int{"uid-keep": 1, "uid-gone": 0, "uid-other": 1} {
		got, err := cniresults.Load(resultsDir, uid)
		if err != nil {
			t.Fatal(err)
		}
		if len(got) != want {
			t.Errorf("after GC, pod %s has %d results, want %d", uid, len(got), want)
		}
	}
}

// TestDelWithoutNetns deletes attachments whose netns is gone, or was
// never given: DEL succeeds and releases the lease.
func TestDelWithoutNetns(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			dataDir := t.TempDir()
			fields := modeFields(mode, 0)
			fields["guest"] = GuestTap
			fields["ipam"] = hostLocal(dataDir, "10.6.0.0/24")
			pod, err := testutils.NewNS()
			if err != nil {
				t.Fatal(err)
			}
			a := newAttachment(n, pod, "ctr-gone", "net1", conf("1.1.0", fields))
			a.addOK(t)
			_ = pod.Close()
			if err := testutils.UnmountNS(pod); err != nil {
				t.Fatal(err)
			}
			if err := a.del(); err != nil {
				t.Fatalf("DEL with the netns gone: %v", err)
			}
			if got := leases(t, dataDir); len(got) != 0 {
				t.Errorf("leases left: %v", got)
			}
			a.args.Netns = ""
			if err := a.del(); err != nil {
				t.Errorf("DEL without netns: %v", err)
			}
		})
	}
}

// TestGC keeps the leases of valid attachments and releases the others.
func TestGC(t *testing.T) {
	requireRoot(t)
	plugins := upstreamPluginDir(t)
	useCNIPath(t, plugins)

	n := newNode(t)
	dataDir := t.TempDir()
	fields := modeFields(ModeMacvlan, 0)
	fields["ipam"] = hostLocal(dataDir, "10.7.0.0/24")
	stdin := conf("1.1.0", fields)
	keep := newAttachment(n, newNS(t), "ctr-keep", "net1", stdin)
	gone := newAttachment(n, newNS(t), "ctr-gone", "net1", stdin)
	keepIP, _ := guestIP(t, keep.addOK(t))
	guestIP(t, gone.addOK(t))
	t.Cleanup(func() { _ = keep.del(); _ = gone.del() })

	fields["cni.dev/valid-attachments"] = []types.GCAttachment{{ContainerID: "ctr-keep", IfName: "net1"}}
	gcArgs := &skel.CmdArgs{StdinData: conf("1.1.0", fields)}
	t.Setenv("CNI_COMMAND", "GC")
	t.Setenv("CNI_PATH", plugins)
	if err := cmdGC(gcArgs); err != nil {
		t.Fatalf("GC: %v", err)
	}
	if got := leases(t, dataDir); !slices.Equal(got, []string{keepIP.String()}) {
		t.Errorf("leases after GC: %v, want [%s]", got, keepIP)
	}
}

// TestCheckDetectsDrift breaks an attachment in ways CHECK must notice.
func TestCheckDetectsDrift(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	breakers := []struct {
		name, mode, guest string
		breakIt           func() error // runs in the pod's netns
	}{
		{"address-removed", ModeMacvlan, GuestNone, func() error {
			l, err := netlinksafe.LinkByName("net1")
			if err != nil {
				return err
			}
			addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
			if err != nil || len(addrs) == 0 {
				return fmt.Errorf("no address to remove: %w", err)
			}
			return netlink.AddrDel(l, &addrs[0])
		}},
		{"mac-changed", ModeBridge, GuestNone, func() error {
			l, err := netlinksafe.LinkByName("net1")
			if err != nil {
				return err
			}
			return netlink.LinkSetHardwareAddr(l, []byte{2, 0, 0, 0, 0, 0x99})
		}},
		{"tap-deleted", ModeMacvlan, GuestTap, func() error { return ip.DelLinkByName(podlink.TapName("net1")) }},
		{"redirect-removed", ModeMacvlan, GuestTap, func() error {
			l, err := netlinksafe.LinkByName("net1")
			if err != nil {
				return err
			}
			return netlink.QdiscDel(&netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{LinkIndex: l.Attrs().Index, Handle: ingressHandle, Parent: netlink.HANDLE_INGRESS}})
		}},
		{"dhcp-filter-removed", ModeBridge, GuestTap, func() error {
			l, err := netlinksafe.LinkByName(podlink.TapName("net1"))
			if err != nil {
				return err
			}
			return netlink.FilterDel(&netlink.U32{FilterAttrs: netlink.FilterAttrs{
				LinkIndex: l.Attrs().Index, Parent: ingressHandle, Priority: dhcpDropPriority, Protocol: unix.ETH_P_IP,
			}})
		}},
		{"pod-got-address", ModeBridge, GuestTap, func() error {
			l, err := netlinksafe.LinkByName(podlink.BridgeName("net1"))
			if err != nil {
				return err
			}
			addr, err := netlink.ParseAddr("10.8.0.200/24")
			if err != nil {
				return err
			}
			return netlink.AddrAdd(l, addr)
		}},
		{"tap-left-bridge", ModeBridge, GuestTap, func() error {
			l, err := netlinksafe.LinkByName(podlink.TapName("net1"))
			if err != nil {
				return err
			}
			return netlink.LinkSetNoMaster(l)
		}},
	}
	for _, b := range breakers {
		t.Run(b.name, func(t *testing.T) {
			n := newNode(t)
			pod := newNS(t)
			fields := modeFields(b.mode, 0)
			fields["guest"] = b.guest
			fields["ipam"] = hostLocal(t.TempDir(), "10.8.0.0/24")
			a := newAttachment(n, pod, "ctr-drift", "net1", conf("1.1.0", fields))
			r, err := a.add()
			if err != nil {
				t.Fatalf("ADD: %v", err)
			}
			t.Cleanup(func() { _ = a.del() })
			if err := a.check(r); err != nil {
				t.Fatalf("CHECK before breaking: %v", err)
			}
			if err := pod.Do(func(ns.NetNS) error { return b.breakIt() }); err != nil {
				t.Fatalf("breaking: %v", err)
			}
			if err := a.check(r); err == nil {
				t.Fatal("CHECK passed on a broken attachment")
			} else {
				t.Logf("CHECK: %v", err)
			}
		})
	}
}

// TestStatus reports an unusable master, bridge or IPAM with the STATUS
// error codes.
func TestStatus(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))
	n := newNode(t)
	cases := []struct {
		name   string
		fields map[string]any
		code   uint // 0: usable
		msg    string
	}{
		{"macvlan ok", map[string]any{"mode": "macvlan", "master": testMaster}, 0, ""},
		{"bridge missing is fine", map[string]any{"mode": "bridge", "bridge": "nosuchbr"}, 0, ""},
		{"master missing", map[string]any{"mode": "macvlan", "master": "nosuch0"}, types.ErrPluginNotAvailable, `master "nosuch0"`},
		{"master down", map[string]any{"mode": "macvlan", "master": "down0"}, types.ErrLimitedConnectivity, `master "down0" is down`},
		{"bridge not a bridge", map[string]any{"mode": "bridge", "bridge": testMaster}, types.ErrPluginNotAvailable, `bridge "pvm0": node link is a veth`},
		{"bridge with uplink ok", map[string]any{"mode": "bridge", "bridge": "nosuchbr", "uplink": testMaster}, 0, ""},
		{"uplink missing", map[string]any{"mode": "bridge", "bridge": "nosuchbr", "uplink": "nosuch0"}, types.ErrPluginNotAvailable, `uplink "nosuch0"`},
		{"ipam missing", map[string]any{"mode": "macvlan", "master": testMaster, "ipam": map[string]any{"type": "nosuchipam"}}, types.ErrPluginNotAvailable, `ipam "nosuchipam"`},
	}
	if err := n.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "down0"
		return netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "down1"})
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			a := newAttachment(n, n, "", "", conf("1.1.0", c.fields))
			err := a.status()
			if c.code == 0 {
				if err != nil {
					t.Fatalf("STATUS: %v", err)
				}
				return
			}
			var e *types.Error
			if !errors.As(err, &e) || e.Code != c.code || !strings.HasPrefix(e.Msg, c.msg) {
				t.Fatalf("STATUS: got %v, want code %d and a message starting with %q", err, c.code, c.msg)
			}
		})
	}
}
