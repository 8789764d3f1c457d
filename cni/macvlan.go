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

// macvlanParent returns the node link the pod's macvlan hangs off: the
// master itself, or its VLAN link <master>.<vlan>, created when missing.
// The VLAN link is shared by every attachment on that VLAN and is left in
// place by DEL, like a bridge.
func macvlanParent(conf *NetConf) (netlink.Link, error) {
	master, err := netlinksafe.LinkByName(conf.Master)
	if err != nil {
		return nil, configError("master", "link %q not found on the node: %v", conf.Master, err)
	}
	if conf.VLAN == 0 {
		return master, nil
	}
	return ensureVlanLink(master, conf.VLAN)
}

func ensureVlanLink(master netlink.Link, vlan int) (netlink.Link, error) {
	name := vlanLinkName(master.Attrs().Name, vlan)
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.ParentIndex = master.Attrs().Index
	err := netlink.LinkAdd(&netlink.Vlan{LinkAttrs: attrs, VlanId: vlan})
	if errors.Is(err, unix.EOPNOTSUPP) {
		return nil, configError("vlan", "the node kernel cannot make VLAN links (no 8021q) for VLAN %d on %q: %v", vlan, master.Attrs().Name, err)
	}
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, fmt.Errorf("creating VLAN link %q on master %q: %w", name, master.Attrs().Name, err)
	}
	l, err := netlinksafe.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("looking up VLAN link %q: %w", name, err)
	}
	v, ok := l.(*netlink.Vlan)
	if !ok || v.VlanId != vlan || v.ParentIndex != master.Attrs().Index {
		return nil, configError("vlan", "node link %q exists but is not VLAN %d of %q", name, vlan, master.Attrs().Name)
	}
	if err := netlink.LinkSetUp(v); err != nil {
		return nil, fmt.Errorf("setting VLAN link %q up: %w", name, err)
	}
	return v, nil
}

// addMacvlan creates the pod's macvlan link named ifName inside netns as a
// child of parent. It is created under a temporary name directly in the
// netns (a name taken on the node must not make it fail) and renamed there.
// The link is left down.
func addMacvlan(conf *NetConf, parent netlink.Link, ifName string, mac net.HardwareAddr, netns ns.NetNS) (*current.Interface, error) {
	if conf.MTU > parent.Attrs().MTU {
		return nil, configError("mtu", "%d is larger than the MTU %d of %q", conf.MTU, parent.Attrs().MTU, parent.Attrs().Name)
	}
	tmpName, err := ip.RandomVethName()
	if err != nil {
		return nil, err
	}
	attrs := netlink.NewLinkAttrs()
	attrs.Name = tmpName
	attrs.MTU = conf.MTU
	attrs.ParentIndex = parent.Attrs().Index
	attrs.Namespace = netlink.NsFd(int(netns.Fd()))
	attrs.HardwareAddr = mac
	mv := &netlink.Macvlan{LinkAttrs: attrs, Mode: conf.macvlanMode}
	if err := netlink.LinkAdd(mv); err != nil {
		return nil, fmt.Errorf("creating macvlan on %q: %w", parent.Attrs().Name, err)
	}

	iface := &current.Interface{Name: ifName, Sandbox: netns.Path()}
	err = netns.Do(func(_ ns.NetNS) error {
		if err := ip.RenameLink(tmpName, ifName); err != nil {
			_ = ip.DelLinkByName(tmpName)
			return fmt.Errorf("renaming macvlan %q to %q: %w", tmpName, ifName, err)
		}
		l, err := netlinksafe.LinkByName(ifName)
		if err != nil {
			_ = ip.DelLinkByName(ifName)
			return fmt.Errorf("looking up macvlan %q: %w", ifName, err)
		}
		iface.Mac = l.Attrs().HardwareAddr.String()
		iface.Mtu = l.Attrs().MTU
		return nil
	})
	if err != nil {
		return nil, err
	}
	return iface, nil
}
