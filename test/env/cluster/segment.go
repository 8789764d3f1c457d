package cluster

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Segment names the NICs every node has on the cluster's one shared L2
// segment (a bridge on the host, <Name>-seg), like a second physical
// network: the same names on every node, so one NetworkAttachmentDefinition
// fits all. There are two because a link cannot be both a macvlan parent
// and a bridge port.
type Segment struct {
	// MacvlanMaster is the NIC macvlan children hang off.
	MacvlanMaster string
	// BridgeUplink is the NIC a node bridge takes as its uplink port.
	BridgeUplink string
}

// Segment is the cluster's shared L2 segment.
func (c *Cluster) Segment() Segment {
	return Segment{MacvlanMaster: c.link("mv"), BridgeUplink: c.link("up")}
}

// segmentPeer is the host end of node n's segment NIC nic ("mv", "up").
func (c *Cluster) segmentPeer(n Node, nic string) string {
	return c.link(nic + strconv.Itoa(n.index))
}

// setupSegment creates the segment bridge and the first node's NICs on it
// (both ends on the host).
func (c *Cluster) setupSegment() error {
	seg, err := c.ensureBridge(c.link("seg"))
	if err != nil {
		return err
	}
	n := c.first()
	for nic, name := range map[string]string{"mv": c.Segment().MacvlanMaster, "up": c.Segment().BridgeUplink} {
		peer := c.segmentPeer(n, nic)
		if _, err := netlink.LinkByName(peer); err != nil {
			if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: name}, PeerName: peer}); err != nil {
				return fmt.Errorf("segment NIC %s: create veth %s/%s: %w", name, name, peer, err)
			}
		}
		for _, l := range []string{name, peer} {
			link, err := netlink.LinkByName(l)
			if err == nil && l == peer {
				err = netlink.LinkSetMaster(link, seg)
			}
			if err == nil {
				err = netlink.LinkSetUp(link)
			}
			if err != nil {
				return fmt.Errorf("segment NIC %s: %w", l, err)
			}
		}
	}
	return nil
}

// segmentNICs gives node n (a namespace handle) its segment NICs.
func (c *Cluster) segmentNICs(n Node, handle netns.NsHandle) error {
	seg, err := netlink.LinkByName(c.link("seg"))
	if err != nil {
		return fmt.Errorf("node %s: the L2 segment bridge: %w", n.Name, err)
	}
	for nic, name := range map[string]string{"mv": c.Segment().MacvlanMaster, "up": c.Segment().BridgeUplink} {
		if err := c.vethInto(handle, c.segmentPeer(n, nic), name, seg); err != nil {
			return fmt.Errorf("node %s: segment NIC %s: %w", n.Name, name, err)
		}
	}
	return nil
}

// ensureBridge returns the host bridge name, creating it when missing, up.
func (c *Cluster) ensureBridge(name string) (netlink.Link, error) {
	link, err := netlink.LinkByName(name)
	if err != nil {
		if !errors.As(err, &netlink.LinkNotFoundError{}) {
			return nil, fmt.Errorf("look up link %s: %w", name, err)
		}
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}); err != nil {
			return nil, fmt.Errorf("create bridge %s: %w", name, err)
		}
		if link, err = netlink.LinkByName(name); err != nil {
			return nil, err
		}
	}
	if err := netlink.LinkSetUp(link); err != nil {
		return nil, fmt.Errorf("set bridge %s up: %w", name, err)
	}
	return link, nil
}
