package cni

import (
	"errors"
	"fmt"
	"net"
	"slices"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/podvirt/podvirt/contracts/podlink"
)

// With guest "tap" the pod gets, besides its link ifName:
//
//   - bridge mode: an in-pod bridge podlink.BridgeName(ifName) with ifName and the
//     tap podlink.TapName(ifName) as its ports; the guest has its own MAC.
//   - macvlan mode: the tap, tied to ifName by tc mirred redirects both ways
//     (ingress of one is sent out of the other); the guest uses the
//     macvlan's MAC, the only unicast MAC a macvlan receives.
//
// In both modes a tc filter on the tap's ingress takes the guest's DHCP
// requests (UDP to port 67) away before they reach the pod link: the
// launcher answers them on the tap (its AF_PACKET socket sees frames
// before tc does), and they must not reach other DHCP servers on the
// shared L2.
//
// None of these links has an IP (IPv6 is turned off on them, so the pod
// does not even autoconfigure a link-local address that would clash with
// the guest's); the IP in the result is the guest's.

// ingressHandle is the handle of the ingress qdisc, ffff:.
var ingressHandle = netlink.MakeHandle(0xffff, 0)

// Priorities of the tap's ingress filters: the DHCP drop is tried before
// the mirred redirect (macvlan mode) that sends everything else on.
const (
	dhcpDropPriority = 1
	mirredPriority   = 2
)

// dhcpServerPort is the UDP port DHCP requests go to.
const dhcpServerPort = 67

// addGuestTap builds the guest path in netns for the pod link ifName (which
// must exist, down) and returns the result interfaces it adds: the in-pod
// bridge (bridge mode) and the tap, whose Mac is the guest's MAC. It brings
// every link of the path, ifName included, up. On error it removes what it
// created.
func addGuestTap(conf *NetConf, ifName string, guestMAC net.HardwareAddr, netns ns.NetNS) (ifs []*current.Interface, err error) {
	err = netns.Do(func(_ ns.NetNS) (err error) {
		defer func() {
			if err != nil {
				_ = delGuestLinks(ifName)
			}
		}()
		pod, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			return fmt.Errorf("looking up %q: %w", ifName, err)
		}
		mtu := pod.Attrs().MTU

		tap, err := addTap(conf, podlink.TapName(ifName), mtu)
		if err != nil {
			return err
		}

		switch conf.Mode {
		case ModeBridge:
			br, err := addPodBridge(podlink.BridgeName(ifName), mtu)
			if err != nil {
				return err
			}
			for _, port := range []netlink.Link{pod, tap} {
				if err := netlink.LinkSetMaster(port, br); err != nil {
					return fmt.Errorf("adding %q to in-pod bridge %q: %w", port.Attrs().Name, br.Name, err)
				}
			}
			ifs = append(ifs, &current.Interface{Name: br.Name, Mac: br.HardwareAddr.String(), Mtu: mtu, Sandbox: netns.Path()})
		case ModeMacvlan:
			if guestMAC == nil {
				guestMAC = pod.Attrs().HardwareAddr
			}
			// The tap's own MAC is never seen on the wire; give it the
			// guest's so that the result's MAC is literally the tap's.
			if err := netlink.LinkSetHardwareAddr(tap, guestMAC); err != nil {
				return fmt.Errorf("setting MAC of %q: %w", tap.Attrs().Name, err)
			}
			if err := mirredBothWays(pod, tap); err != nil {
				return err
			}
		}
		if err := dropGuestDHCP(tap); err != nil {
			return err
		}

		disableIPv6(ifName)
		for _, l := range []netlink.Link{tap, pod} {
			if err := netlink.LinkSetUp(l); err != nil {
				return fmt.Errorf("setting %q up: %w", l.Attrs().Name, err)
			}
		}
		ifs = append(ifs, &current.Interface{Name: tap.Attrs().Name, Mac: guestMAC.String(), Mtu: mtu, Sandbox: netns.Path()})
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ifs, nil
}

// addTap creates a persistent, single-queue tap in the calling thread's
// netns (a tap is bound to the netns it is made in).
func addTap(conf *NetConf, name string, mtu int) (netlink.Link, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	tap := &netlink.Tuntap{
		LinkAttrs: attrs,
		Mode:      netlink.TUNTAP_MODE_TAP,
		Flags:     netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE,
	}
	if conf.TapOwner != nil {
		tap.Owner = *conf.TapOwner
	}
	if conf.TapGroup != nil {
		tap.Group = *conf.TapGroup
	}
	if err := netlink.LinkAdd(tap); err != nil {
		return nil, fmt.Errorf("creating tap %q: %w", name, err)
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up tap %q: %w", name, err)
	}
	disableIPv6(name)
	if err := netlink.LinkSetMTU(l, mtu); err != nil {
		return nil, fmt.Errorf("setting MTU %d on tap %q: %w", mtu, name, err)
	}
	return l, nil
}

func addPodBridge(name string, mtu int) (*netlink.Bridge, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
	if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: attrs}); err != nil {
		return nil, fmt.Errorf("creating in-pod bridge %q: %w", name, err)
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up in-pod bridge %q: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, fmt.Errorf("in-pod bridge %q is a %s", name, l.Type())
	}
	disableIPv6(name)
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("setting in-pod bridge %q up: %w", name, err)
	}
	return br, nil
}

// mirredBothWays redirects every frame received on a out of b and every
// frame received on b out of a.
func mirredBothWays(a, b netlink.Link) error {
	for _, p := range [][2]netlink.Link{{a, b}, {b, a}} {
		from, to := p[0], p[1]
		if err := ensureIngressQdisc(from); err != nil {
			return err
		}
		// u32 with no selector matches everything; unlike matchall it is
		// in every kernel that has tc.
		filter := &netlink.U32{
			FilterAttrs: netlink.FilterAttrs{
				LinkIndex: from.Attrs().Index,
				Parent:    ingressHandle,
				Priority:  mirredPriority,
				Protocol:  unix.ETH_P_ALL,
			},
			Actions: []netlink.Action{netlink.NewMirredAction(to.Attrs().Index)},
		}
		if err := netlink.FilterAdd(filter); err != nil {
			return fmt.Errorf("redirecting %q to %q: %w", from.Attrs().Name, to.Attrs().Name, err)
		}
	}
	return nil
}

// ensureIngressQdisc gives l an ingress qdisc unless it has one.
func ensureIngressQdisc(l netlink.Link) error {
	qdisc := &netlink.Ingress{QdiscAttrs: netlink.QdiscAttrs{
		LinkIndex: l.Attrs().Index,
		Handle:    ingressHandle,
		Parent:    netlink.HANDLE_INGRESS,
	}}
	if err := netlink.QdiscAdd(qdisc); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("adding ingress qdisc to %q: %w", l.Attrs().Name, err)
	}
	return nil
}

// dhcpDropKeys are the u32 keys of an IPv4 packet to UDP port 67, at
// offsets from the IP header. They assume a 20-byte header (IHL 5, which
// they check) and a first fragment: DHCP clients send no IP options.
var dhcpDropKeys = []netlink.TcU32Key{
	{Off: 0, Mask: 0x0f000000, Val: 0x05000000},             // IHL 5
	{Off: 4, Mask: 0x00001fff, Val: 0},                      // fragment offset 0
	{Off: 8, Mask: 0x00ff0000, Val: unix.IPPROTO_UDP << 16}, // protocol
	{Off: 20, Mask: 0x0000ffff, Val: dhcpServerPort},        // UDP destination port
}

// dropGuestDHCP takes IPv4 UDP to port 67 off tap's ingress (frames from
// the guest). The action is a mirred redirect to the pod's lo, where the
// pod's stack discards the frame (the launcher's DHCP server reads the tap
// with AF_PACKET, not a UDP socket): kernels with tc always have mirred,
// which the macvlan path needs anyway, but not always gact's drop.
func dropGuestDHCP(tap netlink.Link) error {
	if err := ensureIngressQdisc(tap); err != nil {
		return err
	}
	lo, err := netlinksafe.LinkByName("lo")
	if err != nil {
		return fmt.Errorf("looking up the pod's lo: %w", err)
	}
	filter := &netlink.U32{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: tap.Attrs().Index,
			Parent:    ingressHandle,
			Priority:  dhcpDropPriority,
			Protocol:  unix.ETH_P_IP,
		},
		Sel:     &netlink.TcU32Sel{Flags: netlink.TC_U32_TERMINAL, Keys: dhcpDropKeys},
		Actions: []netlink.Action{netlink.NewMirredAction(lo.Attrs().Index)},
	}
	if err := netlink.FilterAdd(filter); err != nil {
		return fmt.Errorf("adding the filter that keeps the guest's DHCP requests off the L2 to %q: %w", tap.Attrs().Name, err)
	}
	return nil
}

// dropsGuestDHCP reports whether tap has dropGuestDHCP's filter.
func dropsGuestDHCP(tap netlink.Link) (bool, error) {
	filters, err := netlinksafe.FilterList(tap, ingressHandle)
	if err != nil {
		return false, fmt.Errorf("listing ingress filters of %q: %w", tap.Attrs().Name, err)
	}
	lo, err := netlinksafe.LinkByName("lo")
	if err != nil {
		return false, fmt.Errorf("looking up the pod's lo: %w", err)
	}
	for _, f := range filters {
		u, ok := f.(*netlink.U32)
		if !ok || u.Protocol != unix.ETH_P_IP || u.Sel == nil || !slices.Equal(u.Sel.Keys, dhcpDropKeys) {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR && m.Ifindex == lo.Attrs().Index {
				return true, nil
			}
		}
	}
	return false, nil
}

// mirredTarget returns the ifindex that l's ingress frames are redirected
// to, or 0 when there is no such redirect.
func mirredTarget(l netlink.Link) (int, error) {
	filters, err := netlinksafe.FilterList(l, ingressHandle)
	if err != nil {
		return 0, fmt.Errorf("listing ingress filters of %q: %w", l.Attrs().Name, err)
	}
	for _, f := range filters {
		// The match-all redirect, not the guest's DHCP one (ETH_P_IP).
		u, ok := f.(*netlink.U32)
		if !ok || u.Protocol != unix.ETH_P_ALL {
			continue
		}
		for _, a := range u.Actions {
			if m, ok := a.(*netlink.MirredAction); ok && m.MirredAction == netlink.TCA_EGRESS_REDIR {
				return m.Ifindex, nil
			}
		}
	}
	return 0, nil
}

// delGuestLinks removes the tap and in-pod bridge of pod link ifName from
// the calling thread's netns; missing links are fine.
func delGuestLinks(ifName string) error {
	var errs []error
	for _, name := range []string{podlink.TapName(ifName), podlink.BridgeName(ifName)} {
		if err := ip.DelLinkByName(name); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// disableIPv6 keeps the pod's stack off a link that belongs to the guest.
// Best effort: a kernel without IPv6 has nothing to turn off.
func disableIPv6(name string) {
	_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv6/conf/%s/disable_ipv6", name), "1")
}
