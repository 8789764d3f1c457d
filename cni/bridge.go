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

// ensureBridge returns the node bridge name, creating it when missing and
// turning on VLAN filtering when a VLAN is asked for.
func ensureBridge(name string, mtu int, vlanFiltering bool) (*netlink.Bridge, error) {
	attrs := netlink.NewLinkAttrs()
	attrs.Name = name
	attrs.MTU = mtu
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
	if err := netlink.LinkSetUp(br); err != nil {
		return nil, fmt.Errorf("setting bridge %q up: %w", name, err)
	}
	return br, nil
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
	br, err := ensureBridge(conf.Bridge, conf.MTU, conf.VLAN != 0)
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
