// Package handoff completes, at a same-node live migration's switch, what
// podvirt-l2 could not do when it made the target pod's attachments: one
// node's IPAM lease and one macvlan MAC can each belong to one attachment
// only, and until the switch they are the source's (contracts/cniresults).
// The node daemon calls Complete once the VM runs in the target pod.
package handoff

import (
	"errors"
	"fmt"
	"io/fs"
	"net"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/cni/results"
	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// Pending reports whether pod podUID has attachments still waiting for
// their handoff.
func Pending(dir, podUID string) (bool, error) {
	recs, err := cniresults.Records(dir, podUID)
	if err != nil {
		return false, err
	}
	for _, rec := range recs {
		if rec.HandoffFrom != "" && rec.LeaseID == "" {
			return true, nil
		}
	}
	return false, nil
}

// Complete gives each attachment of pod podUID that takes over another
// pod's attachment the lease (the records say who releases it) and, in
// macvlan mode, the guest's MAC (the source's pod link gets a random one
// first). It is idempotent, and it works when the source is already gone.
func Complete(dir, podUID string) error {
	recs, err := cniresults.Records(dir, podUID)
	if err != nil {
		return err
	}
	var errs []error
	for ifname, rec := range recs {
		if rec.HandoffFrom == "" {
			continue
		}
		if err := complete(dir, rec); err != nil {
			errs = append(errs, fmt.Errorf("interface %s of pod %s, from pod %s: %w", ifname, podUID, rec.HandoffFrom, err))
		}
	}
	return errors.Join(errs...)
}

func complete(dir string, rec cniresults.Record) error {
	src, err := cniresults.Read(dir, rec.HandoffFrom, rec.IfName)
	srcGone := errors.Is(err, fs.ErrNotExist)
	if err != nil && !srcGone {
		return err
	}
	// The lease: the target takes it before the source lets it go, so a
	// crash in between releases it twice (harmless) rather than never.
	if rec.LeaseID == "" && !srcGone && src.HoldsLease() {
		rec.LeaseID = src.Leaseholder()
		if err := results.Save(dir, rec); err != nil {
			return err
		}
		src.LeaseMoved = true
		if err := results.Save(dir, src); err != nil {
			return err
		}
	}

	target, err := cniresults.Decode(rec.Result)
	if err != nil {
		return err
	}
	guestMAC, targetNS, err := guestPath(target, rec.IfName)
	if err != nil {
		return err
	}
	if !srcGone {
		source, err := cniresults.Decode(src.Result)
		if err != nil {
			return err
		}
		if _, sourceNS, err := guestPath(source, src.IfName); err == nil {
			if err := release(sourceNS, src.IfName, guestMAC); err != nil {
				return err
			}
		}
	}
	return claim(targetNS, rec.IfName, guestMAC)
}

// guestPath is the guest's MAC (its tap's, in the result) and the netns of
// the pod link ifname.
func guestPath(r *current.Result, ifname string) (net.HardwareAddr, string, error) {
	var mac, sandbox string
	for _, i := range r.Interfaces {
		switch i.Name {
		case podlink.TapName(ifname):
			mac = i.Mac
		case ifname:
			sandbox = i.Sandbox
		}
	}
	if mac == "" || sandbox == "" {
		return nil, "", fmt.Errorf("the CNI result names no tap or no netns for %s", ifname)
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return nil, "", fmt.Errorf("the CNI result's guest MAC: %w", err)
	}
	return hw, sandbox, nil
}

// release gives the source's macvlan a random MAC when it holds mac. A
// netns or link that is gone holds nothing.
func release(netnsPath, ifname string, mac net.HardwareAddr) error {
	return inMacvlan(netnsPath, ifname, false, func(l netlink.Link) error {
		if l.Attrs().HardwareAddr.String() != mac.String() {
			return nil
		}
		other, err := podlink.RandomMAC()
		if err != nil {
			return err
		}
		if err := netlink.LinkSetHardwareAddr(l, other); err != nil {
			return fmt.Errorf("giving up MAC %s on %s: %w", mac, ifname, err)
		}
		return nil
	})
}

// claim gives the target's macvlan the guest's MAC: the only unicast MAC
// a macvlan receives, so the guest is reached through it from now on.
func claim(netnsPath, ifname string, mac net.HardwareAddr) error {
	return inMacvlan(netnsPath, ifname, true, func(l netlink.Link) error {
		if l.Attrs().HardwareAddr.String() == mac.String() {
			return nil
		}
		if err := netlink.LinkSetHardwareAddr(l, mac); err != nil {
			return fmt.Errorf("taking MAC %s on %s: %w", mac, ifname, err)
		}
		return nil
	})
}

// inMacvlan runs f on the link ifname in the netns at netnsPath when it is
// a macvlan (in bridge mode the pod link is a veth with a MAC of its own,
// and nothing is handed over). A netns that is gone is an error only when
// it must exist (the pod runs); so is a missing link.
func inMacvlan(netnsPath, ifname string, mustExist bool, f func(netlink.Link) error) error {
	err := ns.WithNetNSPath(netnsPath, func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName(ifname)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) && !mustExist {
			return nil
		}
		if err != nil {
			return fmt.Errorf("link %s in netns %s: %w", ifname, netnsPath, err)
		}
		if _, ok := l.(*netlink.Macvlan); !ok {
			return nil
		}
		return f(l)
	})
	var notExist ns.NSPathNotExistErr
	if errors.As(err, &notExist) {
		if mustExist {
			return fmt.Errorf("the pod's netns %s is not visible here (does the node daemon mount the node's netns directory?): %w", netnsPath, err)
		}
		return nil
	}
	return err
}
