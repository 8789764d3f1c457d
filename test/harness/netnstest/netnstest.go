// Package netnstest gives network tests throwaway network namespaces, so
// nothing they create touches the host's links.
package netnstest

import (
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"
)

// New makes a network namespace that is closed and unmounted when the test
// ends, whether it passed or not.
func New(t testing.TB) ns.NetNS {
	t.Helper()
	n, err := testutils.NewNS()
	if err != nil {
		t.Fatalf("creating netns: %v", err)
	}
	t.Cleanup(func() {
		_ = n.Close()
		_ = testutils.UnmountNS(n)
	})
	return n
}

// NewNode makes a namespace standing in for a Kubernetes node, with a veth
// pair master–peer up: master plays the node's NIC (the parent of macvlans,
// or a bridge port), peer the rest of the L2 segment.
func NewNode(t testing.TB, master, peer string) ns.NetNS {
	t.Helper()
	n := New(t)
	err := n.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = master
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: peer}); err != nil {
			return err
		}
		for _, name := range []string{master, peer} {
			l, err := netlinksafe.LinkByName(name)
			if err != nil {
				return err
			}
			if err := netlink.LinkSetUp(l); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("setting up node netns with veth %s–%s: %v", master, peer, err)
	}
	return n
}
