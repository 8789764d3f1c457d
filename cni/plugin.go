// Package cni is podvirt-l2, the CNI plugin that puts pod and VM NICs on a
// shared L2 segment: a macvlan child of a node link ("macvlan" mode) or a
// veth whose node end joins a Linux bridge ("bridge" mode; an "uplink" node
// link joins the bridge to the other nodes'), optionally on a VLAN, with
// delegated IPAM. With "guest": "tap" it also prepares the
// pod for a VM (see tap.go) so that the launcher needs no NET_ADMIN.
package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/cni/pkg/skel"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/version"
	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ipam"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/utils/sysctl"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/cni/results"
	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// SupportedVersions are the CNI spec versions podvirt-l2 speaks.
var SupportedVersions = version.PluginSupports("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")

// Funcs returns the plugin's commands for skel.PluginMainFuncs.
func Funcs() skel.CNIFuncs {
	return skel.CNIFuncs{
		Add:    cmdAdd,
		Check:  cmdCheck,
		Del:    cmdDel,
		Status: cmdStatus,
		GC:     cmdGC,
	}
}

// undoStack runs, in reverse order, the undo steps of a failed ADD.
type undoStack []func() error

func (u *undoStack) push(f func() error) { *u = append(*u, f) }

func (u undoStack) run() {
	for i := len(u) - 1; i >= 0; i-- {
		if err := u[i](); err != nil {
			fmt.Fprintf(os.Stderr, "podvirt-l2: undoing failed ADD: %v\n", err)
		}
	}
}

func openNetNS(path string) (ns.NetNS, error) {
	netns, err := ns.GetNS(path)
	if err != nil {
		return nil, types.NewError(types.ErrInvalidNetNS, fmt.Sprintf("opening netns %q: %v", path, err), "")
	}
	return netns, nil
}

func cmdAdd(args *skel.CmdArgs) (err error) {
	conf, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	netns, err := openNetNS(args.Netns)
	if err != nil {
		return err
	}
	defer netns.Close()

	var undo undoStack
	defer func() {
		if err != nil {
			undo.run()
		}
	}()

	// The MAC asked for is the pod link's, except for a bridge-mode guest,
	// which gets it (or a fresh one) while the pod's veth keeps a random
	// MAC: a bridge port must not carry the MAC of a host behind it.
	linkMAC, guestMAC := conf.mac, conf.mac
	if conf.Guest == GuestTap && conf.Mode == ModeBridge {
		linkMAC = nil
		if guestMAC == nil {
			if guestMAC, err = podlink.RandomMAC(); err != nil {
				return err
			}
		}
	}
	var source *current.Result // the attachment this one takes over
	if conf.Args.CNI.HandoffFrom != "" {
		if source, err = handoffSource(conf, args.IfName); err != nil {
			return err
		}
		// The source's macvlan holds the guest's MAC until the switch.
		linkMAC = nil
	}

	result := &current.Result{CNIVersion: current.ImplementedSpecVersion}
	switch conf.Mode {
	case ModeMacvlan:
		parent, err := macvlanParent(conf)
		if err != nil {
			return err
		}
		podIf, err := addMacvlan(conf, parent, args.IfName, linkMAC, netns)
		if err != nil {
			return err
		}
		result.Interfaces = append(result.Interfaces, podIf)
	case ModeBridge:
		brIf, hostIf, podIf, err := addBridgePort(conf, args.IfName, linkMAC, netns)
		if err != nil {
			return err
		}
		result.Interfaces = append(result.Interfaces, brIf, hostIf, podIf)
	}
	undo.push(func() error {
		return netns.Do(func(ns.NetNS) error { return ip.DelLinkByName(args.IfName) })
	})

	// The interface the IPs belong to: the pod link, or the guest's tap.
	ipIdx := len(result.Interfaces) - 1
	if conf.Guest == GuestTap {
		guestIfs, err := addGuestTap(conf, args.IfName, guestMAC, netns)
		if err != nil {
			return err
		}
		undo.push(func() error {
			return netns.Do(func(ns.NetNS) error { return delGuestLinks(args.IfName) })
		})
		result.Interfaces = append(result.Interfaces, guestIfs...)
		ipIdx = len(result.Interfaces) - 1
	}

	if source != nil {
		// The source's lease and addresses, handed over at the switch.
		for _, ipc := range source.IPs {
			c := *ipc
			c.Interface = current.Int(ipIdx)
			result.IPs = append(result.IPs, &c)
		}
		result.Routes, result.DNS = source.Routes, source.DNS
	} else if conf.IPAM.Type != "" {
		r, err := ipam.ExecAdd(conf.IPAM.Type, args.StdinData)
		if err != nil {
			return err
		}
		undo.push(func() error { return ipam.ExecDel(conf.IPAM.Type, args.StdinData) })
		ipamResult, err := current.NewResultFromResult(r)
		if err != nil {
			return fmt.Errorf("converting the result of IPAM %q: %w", conf.IPAM.Type, err)
		}
		if len(ipamResult.IPs) == 0 {
			return types.NewError(types.ErrInternal, fmt.Sprintf("IPAM %q returned no IP", conf.IPAM.Type), "")
		}
		for _, ipc := range ipamResult.IPs {
			ipc.Interface = current.Int(ipIdx)
		}
		result.IPs = ipamResult.IPs
		result.Routes = ipamResult.Routes
		result.DNS = ipamResult.DNS
	}

	if conf.Guest == GuestNone {
		err = netns.Do(func(ns.NetNS) error {
			if len(result.IPs) == 0 {
				l, err := netlinksafe.LinkByName(args.IfName)
				if err != nil {
					return fmt.Errorf("looking up %q: %w", args.IfName, err)
				}
				return netlink.LinkSetUp(l)
			}
			_, _ = sysctl.Sysctl(fmt.Sprintf("net/ipv4/conf/%s/arp_notify", args.IfName), "1")
			if err := ipam.ConfigureIface(args.IfName, result); err != nil {
				return fmt.Errorf("configuring %q with the IPAM result: %w", args.IfName, err)
			}
			return nil
		})
		if err != nil {
			return err
		}
	}

	if conf.DNS.Nameservers != nil || conf.DNS.Search != nil || conf.DNS.Options != nil || conf.DNS.Domain != "" {
		result.DNS = conf.DNS
	}

	if conf.Guest == GuestTap && conf.podUID != "" {
		if err := saveResult(conf, args, result); err != nil {
			return err
		}
		undo.push(func() error { return results.Remove(conf.ResultsDir, conf.podUID, args.IfName) })
	}
	return types.PrintResult(result, conf.CNIVersion)
}

// saveResult keeps the result, as the plugin prints it, for the node
// daemon: the launcher needs the guest's prefix, routes and DNS, which the
// Multus network-status annotation does not carry. Without K8S_POD_UID
// (cnitool, say) there is no one to give it to, and nothing is saved.
func saveResult(conf *NetConf, args *skel.CmdArgs, result *current.Result) error {
	r, err := result.GetAsVersion(conf.CNIVersion)
	if err != nil {
		return fmt.Errorf("converting the result to version %s: %w", conf.CNIVersion, err)
	}
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	err = results.Save(conf.ResultsDir, cniresults.Record{
		PodUID: conf.podUID, IfName: args.IfName, ContainerID: args.ContainerID, Network: conf.Name, Namespace: conf.podNamespace,
		Result: b, HandoffFrom: conf.Args.CNI.HandoffFrom,
	})
	if err != nil {
		return types.NewError(types.ErrIOFailure, fmt.Sprintf("%v (check resultsDir in the network config and that the node path is writable)", err), "")
	}
	return nil
}

// handoffSource is the result of the attachment of ifName that a
// same-node migration target takes over: the source pod's, of the same
// network, in the same namespace, still holding its lease.
func handoffSource(conf *NetConf, ifName string) (*current.Result, error) {
	from := conf.Args.CNI.HandoffFrom
	fail := func(format string, a ...any) (*current.Result, error) {
		return nil, types.NewError(types.ErrInvalidNetworkConfig,
			fmt.Sprintf("args.cni.podvirtHandoffFrom: cannot take over interface %s of pod %s: ", ifName, from)+fmt.Sprintf(format, a...), "")
	}
	if conf.podUID == "" {
		return fail("CNI_ARGS has no K8S_POD_UID to record the handoff under")
	}
	rec, err := cniresults.Read(conf.ResultsDir, from, ifName)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return fail("that pod has no such attachment on this node")
	case err != nil:
		return fail("%v", err)
	case rec.Network != conf.Name:
		return fail("it is on network %q, not %q", rec.Network, conf.Name)
	case rec.Namespace != conf.podNamespace:
		return fail("that pod is in another namespace")
	case !rec.HoldsLease():
		return fail("its lease was handed over already")
	}
	res, err := cniresults.Decode(rec.Result)
	if err != nil {
		return fail("%v", err)
	}
	return res, nil
}

// cmdDel removes the attachment's links and releases its IPAM lease. It is
// idempotent: a missing netns or link is not an error.
func cmdDel(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData, args.Args)
	if err != nil {
		return err
	}
	if args.Netns != "" {
		err := ns.WithNetNSPath(args.Netns, func(ns.NetNS) error {
			var errs []error
			if conf.Guest == GuestTap {
				errs = append(errs, delGuestLinks(args.IfName))
			}
			// The node end of a bridge-mode veth goes with the pod end.
			if err := ip.DelLinkByName(args.IfName); err != nil && !errors.Is(err, ip.ErrLinkNotFound) {
				errs = append(errs, err)
			}
			return errors.Join(errs...)
		})
		var notExist ns.NSPathNotExistErr
		var notNS ns.NSPathNotNSErr
		if err != nil && !errors.As(err, &notExist) && !errors.As(err, &notNS) {
			return err
		}
	}
	// The lease goes first, by whoever holds it now, then the record
	// that says so: a DEL retried after a failure still finds it.
	rec, err := attachmentRecord(conf, args)
	if err != nil {
		return err
	}
	if conf.IPAM.Type != "" && rec.HoldsLease() {
		if err := asLeaseholder(rec, args); err != nil {
			return err
		}
		if err := ipam.ExecDel(conf.IPAM.Type, args.StdinData); err != nil {
			return err
		}
	}
	if conf.podUID != "" {
		if err := results.Remove(conf.ResultsDir, conf.podUID, args.IfName); err != nil {
			return types.NewError(types.ErrIOFailure, err.Error(), "")
		}
	}
	return nil
}

// attachmentRecord is the saved record of a guest "tap" attachment, which
// says who holds its lease (a same-node migration hands it over:
// contracts/cniresults); without one, the attachment holds its own.
func attachmentRecord(conf *NetConf, args *skel.CmdArgs) (cniresults.Record, error) {
	own := cniresults.Record{ContainerID: args.ContainerID}
	if conf.podUID == "" || conf.Guest != GuestTap {
		return own, nil
	}
	rec, err := cniresults.Read(conf.ResultsDir, conf.podUID, args.IfName)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return own, nil
	case err != nil:
		return own, types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return rec, nil
}

// asLeaseholder makes the IPAM plugin, which reads the container ID from
// the environment, see the lease under the ID it is held by.
func asLeaseholder(rec cniresults.Record, args *skel.CmdArgs) error {
	if holder := rec.Leaseholder(); holder != args.ContainerID {
		return os.Setenv("CNI_CONTAINERID", holder)
	}
	return nil
}

// cmdStatus reports whether an ADD could succeed now: the master (macvlan
// mode) exists and is up, the bridge (bridge mode) is a bridge or can be
// created and its uplink, if any, exists, and the IPAM plugin answers
// STATUS.
func cmdStatus(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData, "")
	if err != nil {
		return err
	}
	switch conf.Mode {
	case ModeMacvlan:
		m, err := netlinksafe.LinkByName(conf.Master)
		if err != nil {
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("master %q: %v", conf.Master, err), "")
		}
		if m.Attrs().Flags&net.FlagUp == 0 {
			return types.NewError(types.ErrLimitedConnectivity, fmt.Sprintf("master %q is down", conf.Master), "")
		}
	case ModeBridge:
		l, err := netlinksafe.LinkByName(conf.Bridge)
		var notFound netlink.LinkNotFoundError
		switch {
		case errors.As(err, &notFound):
			// ADD creates it.
		case err != nil:
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("bridge %q: %v", conf.Bridge, err), "")
		case l.Type() != "bridge":
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("bridge %q: node link is a %s, not a bridge", conf.Bridge, l.Type()), "")
		}
		if conf.Uplink != "" {
			if _, err := netlinksafe.LinkByName(conf.Uplink); err != nil {
				return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("uplink %q: %v", conf.Uplink, err), "")
			}
		}
	}
	if conf.IPAM.Type != "" {
		if err := ipam.ExecStatus(conf.IPAM.Type, args.StdinData); err != nil {
			var e *types.Error
			if errors.As(err, &e) {
				return e
			}
			return types.NewError(types.ErrPluginNotAvailable, fmt.Sprintf("ipam %q: %v", conf.IPAM.Type, err), "")
		}
	}
	return nil
}

// cmdGC removes the saved results and releases the IPAM leases of this
// network's attachments not in cni.dev/valid-attachments. Links need no
// collecting: they live in pod netns and go away with them (a bridge-mode
// node veth with its peer).
func cmdGC(args *skel.CmdArgs) error {
	conf, err := loadConf(args.StdinData, "")
	if err != nil {
		return err
	}
	if err := gcResults(conf); err != nil {
		return err
	}
	if conf.IPAM.Type == "" {
		return nil
	}
	return invoke.DelegateGC(context.TODO(), conf.IPAM.Type, args.StdinData, nil)
}

func gcResults(conf *NetConf) error {
	recs, err := cniresults.List(conf.ResultsDir)
	if err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	valid := map[types.GCAttachment]bool{}
	for _, a := range conf.ValidAttachments {
		valid[a] = true
	}
	var errs []error
	for _, r := range recs {
		if r.Network != conf.Name || valid[types.GCAttachment{ContainerID: r.ContainerID, IfName: r.IfName}] {
			continue
		}
		errs = append(errs, results.Remove(conf.ResultsDir, r.PodUID, r.IfName))
	}
	if err := errors.Join(errs...); err != nil {
		return types.NewError(types.ErrIOFailure, err.Error(), "")
	}
	return nil
}
