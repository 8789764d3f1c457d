package cni

import (
	"encoding/binary"
	"errors"
	"net"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podvirt/podvirt/contracts/podlink"
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
			if tapIf.Name != podlink.TapName("net1") || tapIf.Sandbox != vmPod.Path() {
				t.Fatalf("guest IP is on %q in %q, want tap %q in %q", tapIf.Name, tapIf.Sandbox, podlink.TapName("net1"), vmPod.Path())
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

// TestGuestDHCPStaysInPod has the guest broadcast a DHCP DISCOVER and then
// an ordinary UDP broadcast: the launcher's view of the tap (an AF_PACKET
// socket, like runtime/dhcp's) sees both, the node's side of the L2 sees
// only the second. Frames on one path arrive in order, so once the second
// is on the L2 the first would have been too. The pair is sent again until
// the second gets through: an in-pod bridge forwards from the tap only
// once the kernel has processed the tap's carrier (a second or so after
// QEMU's end opens it).
func TestGuestDHCPStaysInPod(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			vmPod := newNS(t)
			fields := modeFields(mode, 0)
			fields["guest"] = GuestTap
			fields["ipam"] = hostLocal(t.TempDir(), "10.4.1.0/24")
			vm := newAttachment(n, vmPod, "ctr-vm", "net1", conf("1.1.0", fields))
			_, tapIf := guestIP(t, vm.addOK(t))
			t.Cleanup(func() { _ = vm.del() })
			guestMAC, err := parseUnicastMAC(tapIf.Mac)
			if err != nil {
				t.Fatal(err)
			}

			// The node's side: what a macvlan sends out of its master
			// reaches the master's peer; the node bridge gets every
			// broadcast of its ports.
			uplink := testPeer
			if mode == ModeBridge {
				uplink = testBridge
			}
			onL2 := openSniffer(t, n, uplink)
			onTap := openSniffer(t, vmPod, tapIf.Name)
			tap, err := openTap(vmPod, tapIf.Name)
			if err != nil {
				t.Fatal(err)
			}
			defer tap.Close()

			const xidBase = 0x5eed0000 // DISCOVER 2i, control 2i+1
			seenOnL2 := map[uint32]bool{}
			var discover, control uint32
			deadline := time.Now().Add(15 * time.Second)
			for i := uint32(0); !seenOnL2[control]; i++ {
				if time.Now().After(deadline) {
					t.Fatalf("no UDP broadcast from the guest reached the L2 within 15s (saw %v)", seenOnL2)
				}
				discover, control = xidBase+2*i, xidBase+2*i+1
				for _, f := range [][]byte{
					udpBroadcast(guestMAC, 68, dhcpServerPort, bootRequest(guestMAC, discover)),
					udpBroadcast(guestMAC, 68, 9, bootRequest(guestMAC, control)),
				} {
					if _, err := tap.Write(f); err != nil {
						t.Fatalf("writing to the tap as the guest: %v", err)
					}
				}
				onL2.read(t, control, 300*time.Millisecond, seenOnL2)
			}
			for xid := range seenOnL2 {
				if xid%2 == 0 {
					t.Errorf("the guest's DHCP DISCOVER (xid %#x) reached the L2", xid)
				}
			}
			seenOnTap := map[uint32]bool{}
			if !onTap.read(t, control, 10*time.Second, seenOnTap) || !seenOnTap[discover] {
				t.Errorf("the guest's DHCP DISCOVER (xid %#x) is not seen on the tap, where the launcher answers it (saw %v)", discover, seenOnTap)
			}
		})
	}
}

// sniffer is an AF_PACKET socket on one link, like runtime/dhcp's.
type sniffer struct{ fd int }

func openSniffer(t *testing.T, n ns.NetNS, link string) *sniffer {
	t.Helper()
	s := &sniffer{fd: -1}
	err := n.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(link)
		if err != nil {
			return err
		}
		proto := int(htons(unix.ETH_P_ALL))
		fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, proto)
		if err != nil {
			return err
		}
		s.fd = fd
		return unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: l.Attrs().Index})
	})
	if s.fd >= 0 {
		t.Cleanup(func() { unix.Close(s.fd) })
	}
	if err != nil {
		t.Fatalf("packet socket on %s: %v", link, err)
	}
	return s
}

// read records in seen the transaction IDs of the BOOTP requests (UDP from
// port 68) it reads, until last or the timeout; it reports whether last
// came.
func (s *sniffer) read(t *testing.T, last uint32, timeout time.Duration, seen map[uint32]bool) bool {
	t.Helper()
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		tv := unix.NsecToTimeval(min(100*time.Millisecond, time.Until(deadline)+time.Millisecond).Nanoseconds())
		if err := unix.SetsockoptTimeval(s.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			t.Fatal(err)
		}
		n, _, err := unix.Recvfrom(s.fd, buf, 0)
		if errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		// Ethernet(14) + IPv4(20) + UDP(8) + BOOTP up to xid (8).
		f := buf[:n]
		if n < 50 || binary.BigEndian.Uint16(f[12:]) != 0x0800 || f[23] != unix.IPPROTO_UDP || binary.BigEndian.Uint16(f[34:]) != 68 {
			continue
		}
		xid := binary.BigEndian.Uint32(f[46:])
		seen[xid] = true
		if xid == last {
			return true
		}
	}
	return false
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// bootRequest is a minimal BOOTP/DHCP DISCOVER payload.
func bootRequest(mac net.HardwareAddr, xid uint32) []byte {
	b := make([]byte, 240, 300)
	b[0], b[1], b[2] = 1, 1, 6 // BOOTREQUEST, Ethernet, hlen
	binary.BigEndian.PutUint32(b[4:], xid)
	copy(b[28:], mac)
	copy(b[236:], []byte{99, 130, 83, 99}) // magic cookie
	b = append(b, 53, 1, 1, 255)           // DHCP DISCOVER, end
	return append(b, make([]byte, 300-len(b))...)
}

// udpBroadcast is an Ethernet/IPv4/UDP broadcast from 0.0.0.0, as a DHCP
// client sends before it has an address.
func udpBroadcast(src net.HardwareAddr, sport, dport uint16, payload []byte) []byte {
	ipLen := 20 + 8 + len(payload)
	f := make([]byte, 14+ipLen)
	copy(f[0:6], []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff})
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], 0x0800)
	ip := f[14:34]
	ip[0], ip[8], ip[9] = 0x45, 64, unix.IPPROTO_UDP
	binary.BigEndian.PutUint16(ip[2:], uint16(ipLen))
	copy(ip[16:], []byte{255, 255, 255, 255})
	var sum uint32
	for i := 0; i < 20; i += 2 {
		sum += uint32(binary.BigEndian.Uint16(ip[i:]))
	}
	for sum > 0xffff {
		sum = sum&0xffff + sum>>16
	}
	binary.BigEndian.PutUint16(ip[10:], ^uint16(sum))
	udp := f[34:42]
	binary.BigEndian.PutUint16(udp[0:], sport)
	binary.BigEndian.PutUint16(udp[2:], dport)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+len(payload))) // checksum 0: none
	copy(f[42:], payload)
	return f
}
