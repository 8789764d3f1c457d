package cni

import (
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
)

// TestGuestTap checks the guest path of each mode: the tap is in the pod,
// the pod holds no IP, the result carries the guest's IP and MAC on the
// tap, and a frame written to the tap as the guest reaches another pod on
// the network and its answer comes back to the tap.
func TestGuestTap(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			dataDir := t.TempDir()

			vmPod := newNS(t)
			fields := modeFields(mode, 0)
			fields["guest"] = GuestTap
			fields["ipam"] = hostLocal(dataDir, "10.4.0.0/24")
			vm := newAttachment(n, vmPod, "ctr-vm", "net1", conf("1.1.0", fields))
			vmRes := vm.addOK(t)
			t.Cleanup(func() { _ = vm.del() })

			guestIPAddr, tapIf := guestIP(t, vmRes)
			if tapIf.Name != TapName("net1") || tapIf.Sandbox != vmPod.Path() {
				t.Fatalf("guest IP is on %q in %q, want tap %q in %q", tapIf.Name, tapIf.Sandbox, TapName("net1"), vmPod.Path())
			}
			guestMAC, err := parseUnicastMAC(tapIf.Mac)
			if err != nil {
				t.Fatalf("guest MAC in result: %v", err)
			}
			assertNoPodAddresses(t, vmPod)

			peerPod := newNS(t)
			fields = modeFields(mode, 0)
			fields["ipam"] = hostLocal(dataDir, "10.4.0.0/24")
			peer := newAttachment(n, peerPod, "ctr-peer", "eth1", conf("1.1.0", fields))
			peerRes := peer.addOK(t)
			t.Cleanup(func() { _ = peer.del() })
			peerIP, peerIf := guestIP(t, peerRes)

			tap, err := openTap(vmPod, tapIf.Name)
			if err != nil {
				t.Fatal(err)
			}
			defer tap.Close()
			got, err := guestARP(tap, guestMAC, guestIPAddr, peerIP, 10*time.Second)
			if err != nil {
				t.Fatalf("guest %s (%s) asking for %s: %v", guestIPAddr, guestMAC, peerIP, err)
			}
			if got.String() != peerIf.Mac {
				t.Errorf("ARP reply says %s is at %s, want %s", peerIP, got, peerIf.Mac)
			}

			// With QEMU's end open the path still checks out.
			if err := vm.check(vmRes); err != nil {
				t.Errorf("CHECK with the tap open: %v", err)
			}
		})
	}
}

// assertNoPodAddresses fails if any link of the pod has a global address
// or the pod has a route other than through lo.
func assertNoPodAddresses(t *testing.T, pod ns.NetNS) {
	t.Helper()
	err := pod.Do(func(ns.NetNS) error {
		addrs, err := netlinksafe.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if !a.IP.IsLoopback() {
				t.Errorf("pod has address %s (link index %d)", a.IPNet, a.LinkIndex)
			}
		}
		routes, err := netlinksafe.RouteList(nil, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		for _, r := range routes {
			t.Errorf("pod has route %s", r)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
