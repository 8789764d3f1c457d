package cni

import (
	"errors"
	"fmt"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// ensureBridge returns the node bridge, creating it when missing, turning
// on VLAN filtering when a VLAN is asked for and, with an uplink, making
// that link a port of it. All of this is node state that every attachment
// shares, so each step accepts what a concurrent ADD already did.
func ensureBridge(conf *NetConf) (*netlink.Bridge, error) {
	name, vlanFiltering := conf.Bridge, conf.VLAN != 0
	// Looked up first, so that a config naming a link the node lacks
	// leaves no empty bridge behind.
	var uplink netlink.Link
	if conf.Uplink != "" {
		var err error
		if uplink, err = lookupUplink(conf.Uplink); err != nil {
			return nil, err
		}
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = conf.MTU
	br := &netlink.Bridge{LinkAttrs: attrs}
	if vlanFiltering {
		br.VlanFiltering = &vlanFiltering
	}
	err := netlink.LinkAdd(br)
	if vlanFiltering && errors.Is(err, unix.EOPNOTSUPP) {
		return nil, noVlanFiltering(name, err)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating bridge %q: %w", name, err)
	}
	br, err = bridgeByName(name)
	if err != nil {
		return nil, err
	}
	if vlanFiltering && (br.VlanFiltering == nil || !*br.VlanFiltering) {
		if err := netlink.BridgeSetVlanFiltering(br, true); errors.Is(err, unix.EOPNOTSUPP) {
			return nil, noVlanFiltering(name, err)
		} else if err != nil {
			return nil, fmt.Errorf("turning on VLAN filtering on bridge %q: %w", name, err)
		}
	}
	if uplink != nil {
		if err := joinUplink(br, uplink, conf.VLAN); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("setting bridge %q up: %w", name, err)
	}
	return br, nil
}

func lookupUplink(name string) (netlink.Link, error) {
	l, err := netlinksafe.LinkByName(name)
	var notFound netlink.LinkNotFoundError
	if errors.As(err, &notFound) {
		return nil, configError("uplink", "node link %q not found: %v", name, err)
	}
	if err != nil {
		return nil, fmt.Errorf("looking up uplink %q: %w", name, err)
	}
	if _, ok := l.(*netlink.Bridge); ok {
		return nil, configError("uplink", "node link %q is a bridge, which cannot be a port of another: set bridge to %q instead, or uplink to the NIC, bond or VLAN link it reaches the other nodes through", name, name)
	}
	return l, nil
}

// joinUplink makes uplink an up port of br and, with a VLAN, a tagged member
// of it, so that the VLAN's frames cross to the other nodes (untagged ones
// keep to the default VLAN, as on the pods' ports without a VLAN).
func joinUplink(br *netlink.Bridge, uplink netlink.Link, vlan int) error {
	name := uplink.Attrs().Name
	switch master := uplink.Attrs().MasterIndex; master {
	case br.Index:
	case 0:
		// The kernel moves a link that has a master to the new one without
		// a word, hence the check above; setting the master it already has
		// (a concurrent ADD's) is a no-op. The check and the set are not
		// atomic: the read-back catches most of a race with a network that
		// puts the same uplink on another bridge, CHECK the rest.
		if err := netlink.LinkSetMaster(uplink, br); err != nil {
			return uplinkRefused(br, name, err)
		}
		l, err := netlink.LinkByIndex(uplink.Attrs().Index)
		if err != nil {
			return fmt.Errorf("looking up uplink %q: %w", name, err)
		}
		if l.Attrs().MasterIndex != br.Index {
			return uplinkTaken(br, name, l.Attrs().MasterIndex)
		}
	default:
		return uplinkTaken(br, name, master)
	}
	if err := netlink.LinkSetUp(uplink); err != nil {
		return fmt.Errorf("setting uplink %q up: %w", name, err)
	}
	if vlan != 0 {
		if err := netlink.BridgeVlanAdd(uplink, uint16(vlan), false, false, false, true); err != nil {
			return fmt.Errorf("adding uplink %q to VLAN %d as a tagged member: %w", name, vlan, err)
		}
	}
	return nil
}

// uplinkTaken is the error for an uplink that already has another master.
func uplinkTaken(br *netlink.Bridge, name string, masterIndex int) error {
	master := fmt.Sprintf("the link with index %d", masterIndex)
	if m, err := netlink.LinkByIndex(masterIndex); err == nil {
		master = fmt.Sprintf("%s %q", m.Type(), m.Attrs().Name)
	}
	return configError("uplink", "node link %q already belongs to %s, not to bridge %q: networks sharing an uplink must use the same bridge; otherwise set uplink to a free link (for a bond's port, the bond)", name, master, br.Name)
}

// uplinkRefused explains why the kernel would not make uplink a port.
func uplinkRefused(br *netlink.Bridge, name string, err error) error {
	switch {
	case errors.Is(err, unix.EBUSY):
		// A link has one receive handler: a macvlan, ipvlan or similar
		// parent already gives it to its children.
		return configError("uplink", "node link %q cannot join bridge %q: %v; it is most likely the parent of macvlan or ipvlan links (a macvlan-mode network's master, say): give the bridge a NIC of its own", name, br.Name, err)
	case errors.Is(err, unix.EINVAL), errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.ELOOP):
		return configError("uplink", "node link %q cannot be a port of bridge %q: %v; set uplink to an Ethernet link: a NIC, bond or VLAN link", name, br.Name, err)
	}
	return fmt.Errorf("adding uplink %q to bridge %q: %w", name, br.Name, err)
}

func noVlanFiltering(bridge string, err error) error {
	return configError("vlan", "the node kernel has no bridge VLAN filtering for bridge %q: %v", bridge, err)
}

func bridgeByName(name string) (*netlink.Bridge, error) {
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up bridge %q: %w", name, err)
	}
	br, ok := l.(*netlink.Bridge)
	if !ok {
		return nil, configError("bridge", "node link %q exists and is a %s, not a bridge", name, l.Type())
	}
	return br, nil
}

// addBridgePort creates a veth pair whose pod end is ifName in netns and
// whose node end is a port of the node bridge, untagged member of the
// attachment's VLAN when one is set. It returns the bridge, node veth and
// pod veth as result interfaces; the pod end is left down.
func addBridgePort(conf *NetConf, ifName string, mac net.HardwareAddr, netns ns.NetNS) (brIf, hostIf, podIf *current.Interface, err error) {
	br, err := ensureBridge(conf)
	if err != nil {
		return nil, nil, nil, err
	}

	hostIf = &current.Interface{}
	podIf = &current.Interface{Name: ifName, Sandbox: netns.Path()}
	macStr := ""
	if mac != nil {
		macStr = mac.String()
	}
	err = netns.Do(func(hostNS ns.NetNS) error {
		hostVeth, podVeth, err := ip.SetupVeth(ifName, conf.MTU, macStr, hostNS)
		if err != nil {
			return fmt.Errorf("creating veth pair for %q: %w", ifName, err)
		}
		hostIf.Name = hostVeth.Name
		podIf.Mac = podVeth.HardwareAddr.String()
		podIf.Mtu = podVeth.MTU
		return nil
	})
	if err != nil {
		return nil, nil, nil, err
	}
	defer func() {
		if err != nil {
			_ = netns.Do(func(ns.NetNS) error { return ip.DelLinkByName(ifName) })
		}
	}()

	hostVeth, err := netlinksafe.LinkByName(hostIf.Name)
	if err != nil {
		return nil, nil, nil, fmt.Errorf("looking up node veth %q: %w", hostIf.Name, err)
	}
	hostIf.Mac = hostVeth.Attrs().HardwareAddr.String()
	if err = netlink.LinkSetMaster(hostVeth, br); err != nil {
		return nil, nil, nil, fmt.Errorf("adding %q to bridge %q: %w", hostIf.Name, br.Name, err)
	}
	if conf.VLAN != 0 {
		// Leave the default VLAN 1 and join conf.VLAN untagged, as PVID.
		if err = netlink.BridgeVlanDel(hostVeth, 1, true, true, false, true); err != nil && !errors.Is(err, unix.ENOENT) {
			return nil, nil, nil, fmt.Errorf("removing default VLAN from %q: %w", hostIf.Name, err)
		}
		if err = netlink.BridgeVlanAdd(hostVeth, uint16(conf.VLAN), true, true, false, true); err != nil {
			return nil, nil, nil, fmt.Errorf("adding %q to VLAN %d: %w", hostIf.Name, conf.VLAN, err)
		}
	}

	// The bridge's MAC may change when a port joins: read it now.
	if br, err = bridgeByName(conf.Bridge); err != nil {
		return nil, nil, nil, err
	}
	brIf = &current.Interface{Name: br.Name, Mac: br.HardwareAddr.String()}
	return brIf, hostIf, podIf, nil
}
