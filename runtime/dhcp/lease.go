package dhcp

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"time"
)

// Lease is the one lease a server hands out.
type Lease struct {
	// MAC is the only client served.
	MAC net.HardwareAddr
	// Addr is the guest's address and prefix length.
	Addr netip.Prefix
	// Router, when valid, is the default gateway (option 3, and the
	// default route in option 121 when Routes are given too).
	Router netip.Addr
	// Routes are further routes (option 121).
	Routes []Route
	// DNS servers (option 6), domain name (option 15), search list
	// (option 119), hostname (option 12); each sent only when set.
	DNS      []netip.Addr
	Domain   string
	Search   []string
	Hostname string
	// MTU of the link (option 26); 0 sends none.
	MTU int
	// Time is the lease time; 0 is infinite, the right thing for an
	// address that is the guest's for the pod's whole life.
	Time time.Duration
}

// DefaultServerID is the server identifier when none is given: a
// link-local address, since the pod has no address on the guest's network.
// With an infinite lease the guest never unicasts to it; a client that
// renews anyway cannot reach it and falls back to broadcasting, which the
// server answers.
var DefaultServerID = netip.MustParseAddr("169.254.75.10")

// Validate checks that l can be served.
func (l *Lease) Validate() error {
	if len(l.MAC) != 6 {
		return fmt.Errorf("dhcp: lease MAC %q is not an Ethernet address", l.MAC)
	}
	if !l.Addr.IsValid() || !l.Addr.Addr().Is4() || l.Addr.Bits() < 1 || l.Addr.Bits() > 32 {
		return fmt.Errorf("dhcp: lease address %s is not an IPv4 address with a prefix length", l.Addr)
	}
	if l.Router.IsValid() && !l.Router.Is4() {
		return fmt.Errorf("dhcp: router %s is not IPv4", l.Router)
	}
	for _, d := range l.DNS {
		if !d.Is4() {
			return fmt.Errorf("dhcp: DNS server %s is not IPv4", d)
		}
	}
	if _, err := EncodeClasslessRoutes(l.Routes); err != nil {
		return err
	}
	if _, err := EncodeDomainSearch(l.Search); err != nil {
		return err
	}
	if l.MTU != 0 && (l.MTU < 68 || l.MTU > 65535) {
		return fmt.Errorf("dhcp: MTU %d out of range", l.MTU)
	}
	if l.Time < 0 || l.Time > 0xfffffffe*time.Second {
		return fmt.Errorf("dhcp: lease time %s out of range", l.Time)
	}
	return nil
}

// Reply is the server's answer to req for lease l, or nil when req gets
// none: it is not a request from l.MAC, is for another server, or is a
// RELEASE or DECLINE (the address stays the guest's whatever it says).
// l must be valid.
func Reply(l *Lease, serverID netip.Addr, req *Message) *Message {
	if req.Op != OpRequest || !bytes.Equal(req.ClientMAC(), l.MAC) {
		return nil
	}
	ip := l.Addr.Addr()
	var typ MessageType
	var want netip.Addr
	switch req.Type() {
	case Discover:
		typ = Offer
	case Request:
		if sid, ok := req.Addr(OptServerID); ok && sid != serverID {
			return nil // the client took another server's offer
		}
		var ok bool
		if want, ok = req.Addr(OptRequestedIP); !ok {
			want = req.CIAddr // RENEWING or REBINDING
		}
		typ = Ack
		if want != ip {
			typ = Nak
		}
	case Inform:
		typ = Ack
	default:
		return nil
	}
	resp := &Message{
		Op:      OpReply,
		HType:   req.HType,
		HLen:    req.HLen,
		XID:     req.XID,
		Flags:   req.Flags,
		GIAddr:  req.GIAddr,
		CHAddr:  req.CHAddr,
		Options: Options{OptMessageType: {byte(typ)}},
	}
	resp.Options.SetAddrs(OptServerID, serverID)
	if typ == Nak {
		resp.Options[OptMessage] = []byte(fmt.Sprintf("address %s is not this client's", want))
		return resp
	}
	if req.Type() == Inform {
		resp.CIAddr = req.CIAddr // no address and no lease time (RFC 2131 4.3.5)
	} else {
		resp.YIAddr = ip
		lt := uint32(0xffffffff)
		if l.Time > 0 {
			lt = uint32(l.Time / time.Second)
		}
		resp.Options.SetUint32(OptLeaseTime, lt)
		if lt != 0xffffffff {
			resp.Options.SetUint32(OptRenewalTime, lt/2)
			resp.Options.SetUint32(OptRebindingTime, lt/8*7)
		}
	}
	l.addConfig(resp.Options)
	return resp
}

// addConfig adds the network configuration options of l to o.
func (l *Lease) addConfig(o Options) {
	mask := net.CIDRMask(l.Addr.Bits(), 32)
	o[OptSubnetMask] = []byte(mask)
	bcast := l.Addr.Masked().Addr().As4()
	for i := range bcast {
		bcast[i] |= ^mask[i]
	}
	o.SetAddrs(OptBroadcast, netip.AddrFrom4(bcast))
	if l.Router.IsValid() {
		o.SetAddrs(OptRouter, l.Router)
	}
	if len(l.Routes) > 0 {
		// A client that takes option 121 ignores option 3 (RFC 3442), so
		// the default route goes in as well.
		routes := l.Routes
		if l.Router.IsValid() {
			routes = append([]Route{{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: l.Router}}, routes...)
		}
		b, _ := EncodeClasslessRoutes(routes) // checked by Validate
		o[OptClasslessRoutes] = b
	}
	if len(l.DNS) > 0 {
		o.SetAddrs(OptDNS, l.DNS...)
	}
	if l.Domain != "" {
		o[OptDomainName] = []byte(l.Domain)
	}
	if len(l.Search) > 0 {
		b, _ := EncodeDomainSearch(l.Search)
		if len(b) > 0 {
			o[OptDomainSearch] = b
		}
	}
	if l.Hostname != "" {
		o[OptHostname] = []byte(l.Hostname)
	}
	if l.MTU != 0 {
		o.SetUint16(OptInterfaceMTU, uint16(l.MTU))
	}
}

// Addressing is where a reply goes on the wire (RFC 2131 4.1, for a
// client on the server's own link).
func replyAddressing(req, resp *Message) (dstMAC net.HardwareAddr, dstIP netip.Addr) {
	broadcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	all := netip.AddrFrom4([4]byte{255, 255, 255, 255})
	switch {
	case resp.Type() == Nak:
		return broadcast, all
	case req.CIAddr.IsValid() && !req.CIAddr.IsUnspecified():
		return req.ClientMAC(), req.CIAddr
	case req.Flags&bootpBroadcastFlag != 0:
		return broadcast, all
	}
	return req.ClientMAC(), resp.YIAddr
}
