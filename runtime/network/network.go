// Package network is what the launcher makes of its network input
// (launchercmd.Networks: the CNI results of the launcher pod's L2
// attachments): for each tap-bound VMI interface, the tap QEMU opens, the
// MAC the guest uses, and the lease the launcher serves the guest over
// DHCP. The input comes with the node daemon's Start, or from a file
// (podvirt-launcher --networks FILE, see Load).
package network

import (
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"os"

	current "github.com/containernetworking/cni/pkg/types/100"

	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/contracts/podlink"
	"github.com/podvirt/podvirt/runtime/dhcp"
)

// GuestNIC is one tap-bound guest NIC.
type GuestNIC struct {
	// Network is the VMI network (and interface) name.
	Network string
	// NetNS is the netns the tap is in, as the CNI plugin named it (the
	// pod's). A launcher running in the pod uses its own netns instead.
	NetNS string
	// Tap is the tap's name, MAC the guest's MAC.
	Tap string
	MAC net.HardwareAddr
	// Lease is what the guest gets by DHCP; nil when the result has no
	// IPv4 address (an L2-only network: the guest brings its own).
	Lease *dhcp.Lease
}

// Load reads the network input from path.
func Load(path string) (*launchercmd.Networks, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := &launchercmd.Networks{}
	if err := json.Unmarshal(b, s); err != nil {
		return nil, fmt.Errorf("decoding network status %s: %w", path, err)
	}
	return s, nil
}

// GuestNICs returns the guest NIC of every attachment of s.
func GuestNICs(s *launchercmd.Networks) ([]GuestNIC, error) {
	var nics []GuestNIC
	for _, a := range s.Attachments {
		nic, err := FromAttachment(a)
		if err != nil {
			return nil, err
		}
		nics = append(nics, nic)
	}
	return nics, nil
}

// FromAttachment reads the tap, guest MAC and lease out of a's CNI result.
func FromAttachment(a launchercmd.Attachment) (GuestNIC, error) {
	fail := func(format string, args ...any) (GuestNIC, error) {
		return GuestNIC{}, fmt.Errorf("network %q: "+format, append([]any{a.Name}, args...)...)
	}
	podIf := a.Interface
	if podIf == "" {
		podIf = podlink.InterfaceName(a.Name)
	}
	if len(a.Result) == 0 {
		return fail("no CNI result")
	}
	res, err := cniresults.Decode(a.Result)
	if err != nil {
		return fail("%v", err)
	}
	tapName := podlink.TapName(podIf)
	tapIdx := -1
	for i, ifc := range res.Interfaces {
		if ifc.Name == tapName && ifc.Sandbox != "" {
			tapIdx = i
		}
	}
	if tapIdx < 0 {
		return fail("the CNI result has no tap %q in the pod (is the network's guest \"tap\"?)", tapName)
	}
	tap := res.Interfaces[tapIdx]
	mac, err := net.ParseMAC(tap.Mac)
	if err != nil || len(mac) != 6 {
		return fail("tap %q has no Ethernet MAC in the CNI result (%q)", tapName, tap.Mac)
	}
	nic := GuestNIC{Network: a.Name, NetNS: tap.Sandbox, Tap: tapName, MAC: mac}

	var ipc *current.IPConfig
	for _, c := range res.IPs {
		if c.Address.IP.To4() == nil {
			continue
		}
		if c.Interface != nil && *c.Interface != tapIdx {
			continue
		}
		ipc = c
		break
	}
	if ipc == nil {
		return nic, nil
	}
	addr, ok := netip.AddrFromSlice(ipc.Address.IP.To4())
	ones, bits := ipc.Address.Mask.Size()
	if !ok || bits != 32 {
		return fail("bad IPv4 address %s in the CNI result", ipc.Address.String())
	}
	gw := addr4(ipc.Gateway)
	lease := &dhcp.Lease{MAC: mac, Addr: netip.PrefixFrom(addr, ones), MTU: mtu(tap.Mtu)}
	// CNI routes, with a missing gateway meaning the interface's gateway
	// (or on-link when it has none) — as ipam.ConfigureIface does for a pod.
	for _, rt := range res.Routes {
		if rt.Dst.IP.To4() == nil {
			continue
		}
		dst, _ := netip.AddrFromSlice(rt.Dst.IP.To4())
		dbits, _ := rt.Dst.Mask.Size()
		via := gw
		if rt.GW != nil {
			via = addr4(rt.GW)
		}
		if dbits == 0 {
			if !lease.Router.IsValid() && via.IsValid() {
				lease.Router = via
			}
			continue
		}
		lease.Routes = append(lease.Routes, dhcp.Route{Dst: netip.PrefixFrom(dst, dbits).Masked(), Via: via})
	}
	for _, s := range res.DNS.Nameservers {
		if a, err := netip.ParseAddr(s); err == nil && a.Is4() {
			lease.DNS = append(lease.DNS, a)
		}
	}
	lease.Domain = res.DNS.Domain
	lease.Search = res.DNS.Search
	if err := lease.Validate(); err != nil {
		return fail("%v", err)
	}
	nic.Lease = lease
	return nic, nil
}

func addr4(ip net.IP) netip.Addr {
	if ip4 := ip.To4(); ip4 != nil {
		return netip.AddrFrom4([4]byte(ip4))
	}
	return netip.Addr{}
}

// mtu is the MTU worth telling the guest: none for Ethernet's default.
func mtu(m int) int {
	if m == 1500 {
		return 0
	}
	return m
}
