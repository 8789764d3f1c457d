package cni

import (
	"fmt"
	"net"

	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/contracts/podlink"
)

// cmdCheck verifies the attachment against prevResult: the links exist
// with the right kind, parent, bridge, VLAN, MAC and MTU; the uplink, if
// any, is still an up port of the bridge, tagged in the VLAN; the pod link
// has the addresses and routes (guest "none") or the pod has no address on
// the guest path (guest "tap"); and the IPAM plugin still holds the lease.
func cmdCheck(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if conf.RawPrevResult == nil {
		return types.NewError(types.ErrInvalidNetworkConfig, "prevResult: required for CHECK", "")
	}
	if err := version.ParsePrevResult(&conf.NetConf); err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}
	prev, err := current.NewResultFromResult(conf.PrevResult)
	if err != nil {
		return types.NewError(types.ErrDecodingFailure, fmt.Sprintf("prevResult: %v", err), "")
	}

	// A same-node migration hands the lease and the pod link's MAC from
	// one attachment to another (cni/handoff): either may have moved.
	rec, err := attachmentRecord(conf, args)
	if err != nil {
		return err
	}
	if conf.IPAM.Type != "" && rec.HoldsLease() {
		if err := asLeaseholder(rec, args); err != nil {
			return err
		}
		if err := ipam.ExecCheck(conf.IPAM.Type, args.StdinData); err != nil {
			return err
		}
	}

	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()

	podIf := findInterface(prev, args.IfName, args.Netns)
	if podIf == nil {
		return fmt.Errorf("prevResult has no interface %q in sandbox %q", args.IfName, args.Netns)
	}
	if rec.HandoffFrom != "" || rec.LeaseMoved {
		handed := *podIf
		handed.Mac = "" // a stand-in until the switch, or given away at it
		podIf = &handed
	}
	var tapIf *current.Interface
	if conf.Guest == GuestTap {
		if tapIf = findInterface(prev, podlink.TapName(args.IfName), args.Netns); tapIf == nil {
			return fmt.Errorf("prevResult has no tap %q in sandbox %q", podlink.TapName(args.IfName), args.Netns)
		}
	}

	// Node side: what the pod link must hang off.
	var parentIndex, bridgeIndex int
	switch conf.Mode {
	case ModeMacvlan:
		parent, err := lookupMacvlanParent(conf)
		if err != nil {
			return err
		}
		parentIndex = parent.Attrs().Index
	case ModeBridge:
		br, err := bridgeByName(conf.Bridge)
		if err != nil {
			return err
		}
		bridgeIndex = br.Index
		if conf.Uplink != "" {
			if err := checkUplink(conf, br); err != nil {
				return err
			}
		}
	}

	var peerIndex int
	err = netns.Do(func(ns.NetNS) error {
		pod, err := checkLink(podIf)
		if err != nil {
			return err
		}
		switch conf.Mode {
		case ModeMacvlan:
			mv, ok := pod.(*netlink.Macvlan)
			if !ok {
				return fmt.Errorf("%q is a %s, not a macvlan", args.IfName, pod.Type())
			}
			if mv.Mode != conf.macvlanMode {
				return fmt.Errorf("%q has macvlan mode %s, want %s", args.IfName, macvlanModeString(mv.Mode), macvlanModeString(conf.macvlanMode))
			}
			if mv.ParentIndex != parentIndex {
				return fmt.Errorf("%q is not a macvlan of the node link with index %d", args.IfName, parentIndex)
			}
		case ModeBridge:
			if _, ok := pod.(*netlink.Veth); !ok {
				return fmt.Errorf("%q is a %s, not a veth", args.IfName, pod.Type())
			}
			peerIndex = pod.Attrs().ParentIndex
		}
		if conf.Guest == GuestTap {
			return checkGuestPath(conf, pod, tapIf, prev)
		}
		if err := ip.ValidateExpectedInterfaceIPs(args.IfName, prev.IPs); err != nil {
			return err
		}
		return ip.ValidateExpectedRoute(prev.Routes)
	})
	if err != nil {
		return err
	}

	if conf.Mode == ModeBridge {
		return checkBridgePort(conf, prev, peerIndex, bridgeIndex)
	}
	return nil
}

// lookupMacvlanParent is macvlanParent without creating anything.
func lookupMacvlanParent(conf *NetConf) (netlink.Link, error) {
	master, err := netlinksafe.LinkByName(conf.Master)
	if err != nil {
		return nil, fmt.Errorf("master %q: %w", conf.Master, err)
	}
	if conf.VLAN == 0 {
		return master, nil
	}
	name := vlanLinkName(conf.Master, conf.VLAN)
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("VLAN link %q: %w", name, err)
	}
	if v, ok := l.(*netlink.Vlan); !ok || v.VlanId != conf.VLAN || v.ParentIndex != master.Attrs().Index {
		return nil, fmt.Errorf("node link %q is not VLAN %d of %q", name, conf.VLAN, conf.Master)
	}
	return l, nil
}

func findInterface(r *current.Result, name, sandbox string) *current.Interface {
	for _, i := range r.Interfaces {
		if i.Name == name && i.Sandbox == sandbox {
			return i
		}
	}
	return nil
}

// checkLink looks up the link of a result interface in the calling thread's
// netns and compares its MAC and MTU with the result's.
func checkLink(want *current.Interface) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(want.Name)
	if err != nil {
		return nil, fmt.Errorf("link %q: %w", want.Name, err)
	}
	if want.Mac != "" && want.Mac != l.Attrs().HardwareAddr.String() {
		return nil, fmt.Errorf("link %q has MAC %s, prevResult says %s", want.Name, l.Attrs().HardwareAddr, want.Mac)
	}
	if want.Mtu != 0 && want.Mtu != l.Attrs().MTU {
		return nil, fmt.Errorf("link %q has MTU %d, prevResult says %d", want.Name, l.Attrs().MTU, want.Mtu)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return nil, fmt.Errorf("link %q is down", want.Name)
	}
	return l, nil
}

// checkGuestPath checks, in the pod's netns, the tap and what ties it to the
// pod link, that the result's IPs are the tap's (the guest's), and that the
// pod holds no address on the way.
func checkGuestPath(conf *NetConf, pod netlink.Link, tapIf *current.Interface, prev *current.Result) error {
	tap, err := netlinksafe.LinkByName(tapIf.Name)
	if err != nil {
		return fmt.Errorf("tap %q: %w", tapIf.Name, err)
	}
	if tt, ok := tap.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
		return fmt.Errorf("%q is a %s, not a tap", tapIf.Name, tap.Type())
	}
	if tap.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("tap %q is down", tapIf.Name)
	}
	for _, ipc := range prev.IPs {
		if ipc.Interface == nil || *ipc.Interface < 0 || *ipc.Interface >= len(prev.Interfaces) || prev.Interfaces[*ipc.Interface] != tapIf {
			return fmt.Errorf("prevResult IP %s is not the guest's (tap %q)", ipc.Address.String(), tapIf.Name)
		}
	}

	if ok, err := dropsGuestDHCP(tap); err != nil {
		return err
	} else if !ok {
		return fmt.Errorf("tap %q does not drop the guest's DHCP requests (UDP to port %d) on ingress", tapIf.Name, dhcpServerPort)
	}

	onPath := []netlink.Link{pod, tap}
	switch conf.Mode {
	case ModeBridge:
		br, err := netlinksafe.LinkByName(podlink.BridgeName(pod.Attrs().Name))
		if err != nil {
			return fmt.Errorf("in-pod bridge %q: %w", podlink.BridgeName(pod.Attrs().Name), err)
		}
		for _, port := range []netlink.Link{pod, tap} {
			if port.Attrs().MasterIndex != br.Attrs().Index {
				return fmt.Errorf("%q is not a port of the in-pod bridge %q", port.Attrs().Name, br.Attrs().Name)
			}
		}
		onPath = append(onPath, br)
	case ModeMacvlan:
		if tapIf.Mac != pod.Attrs().HardwareAddr.String() {
			return fmt.Errorf("guest MAC %s in prevResult is not the macvlan's %s", tapIf.Mac, pod.Attrs().HardwareAddr)
		}
		for _, p := range [][2]netlink.Link{{pod, tap}, {tap, pod}} {
			to, err := mirredTarget(p[0])
			if err != nil {
				return err
			}
			if to != p[1].Attrs().Index {
				return fmt.Errorf("ingress of %q is not redirected to %q", p[0].Attrs().Name, p[1].Attrs().Name)
			}
		}
	}
	for _, l := range onPath {
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_ALL)
		if err != nil {
			return fmt.Errorf("listing addresses of %q: %w", l.Attrs().Name, err)
		}
		for _, a := range addrs {
			if a.IP.IsGlobalUnicast() {
				return fmt.Errorf("pod has address %s on %q, which belongs to the guest", a.IPNet, l.Attrs().Name)
			}
		}
	}
	return nil
}

// checkBridgePort checks, on the node, that the peer of the pod's veth is a
// port of the bridge (and the one prevResult names), untagged in the VLAN.
func checkBridgePort(conf *NetConf, prev *current.Result, peerIndex, bridgeIndex int) error {
	host, err := netlink.LinkByIndex(peerIndex)
	if err != nil {
		return fmt.Errorf("node end (index %d) of the pod's veth: %w", peerIndex, err)
	}
	name := host.Attrs().Name
	if findInterface(prev, name, "") == nil {
		return fmt.Errorf("node end %q of the pod's veth is not in prevResult", name)
	}
	if host.Attrs().MasterIndex != bridgeIndex {
		return fmt.Errorf("node veth %q is not a port of bridge %q", name, conf.Bridge)
	}
	if conf.VLAN == 0 {
		return nil
	}
	vlans, err := netlinksafe.BridgeVlanList()
	if err != nil {
		return fmt.Errorf("listing bridge VLANs: %w", err)
	}
	for _, v := range vlans[int32(peerIndex)] {
		if int(v.Vid) == conf.VLAN && v.PortVID() && v.EngressUntag() {
			return nil
		}
	}
	return fmt.Errorf("node veth %q is not an untagged member (PVID) of VLAN %d", name, conf.VLAN)
}

// checkUplink checks that the uplink still joins the bridge to the other
// nodes: an up port of it and, with a VLAN, a tagged member of that VLAN.
func checkUplink(conf *NetConf, br *netlink.Bridge) error {
	l, err := netlinksafe.LinkByName(conf.Uplink)
	if err != nil {
		return fmt.Errorf("uplink %q: %w", conf.Uplink, err)
	}
	if l.Attrs().MasterIndex != br.Index {
		return fmt.Errorf("uplink %q is not a port of bridge %q", conf.Uplink, conf.Bridge)
	}
	if l.Attrs().Flags&net.FlagUp == 0 {
		return fmt.Errorf("uplink %q is down", conf.Uplink)
	}
	if conf.VLAN == 0 {
		return nil
	}
	vlans, err := netlinksafe.BridgeVlanList()
	if err != nil {
		return fmt.Errorf("listing bridge VLANs: %w", err)
	}
	for _, v := range vlans[int32(l.Attrs().Index)] {
		if int(v.Vid) == conf.VLAN && !v.EngressUntag() {
			return nil
		}
	}
	return fmt.Errorf("uplink %q is not a tagged member of VLAN %d", conf.Uplink, conf.VLAN)
}
