package netnstest

import (
	"net"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
)

func TestNewNode(t *testing.T) {
	n := NewNode(t, "ntm0", "ntp0")
	err := n.Do(func(ns.NetNS) error {
		for _, name := range []string{"ntm0", "ntp0"} {
			l, err := netlinksafe.LinkByName(name)
			if err != nil {
				return err
			}
			if l.Attrs().Flags&net.FlagUp == 0 {
				t.Errorf("%s is not up", name)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	// The host has no such links: they live in the node's namespace only.
	if _, err := netlinksafe.LinkByName("ntm0"); err == nil {
		t.Error("ntm0 exists in the host namespace")
	}
}
