package dhcp

import (
	"bytes"
	"net"
	"net/netip"
	"testing"
	"time"
)

func testLease() *Lease {
	return &Lease{
		MAC:    guestMAC,
		Addr:   netip.MustParsePrefix("10.4.0.7/24"),
		Router: netip.MustParseAddr("10.4.0.1"),
		Routes: []Route{{Dst: netip.MustParsePrefix("192.168.0.0/16"), Via: netip.MustParseAddr("10.4.0.254")}},
		DNS:    []netip.Addr{netip.MustParseAddr("10.4.0.53"), netip.MustParseAddr("10.4.0.54")},
		Domain: "example.com",
		Search: []string{"example.com"},
		MTU:    1400,
	}
}

var sid = DefaultServerID

func TestReplyDiscoverOffer(t *testing.T) {
	l := testLease()
	if err := l.Validate(); err != nil {
		t.Fatal(err)
	}
	req := request(guestMAC, Discover, nil)
	resp := Reply(l, sid, req)
	if resp == nil || resp.Type() != Offer {
		t.Fatalf("DISCOVER got %v, want OFFER", resp)
	}
	if resp.Op != OpReply || resp.XID != req.XID || resp.YIAddr != l.Addr.Addr() || resp.CHAddr != req.CHAddr {
		t.Errorf("OFFER header %+v", resp)
	}
	// Through the wire and back, the options say what the lease says.
	got, err := Parse(resp.Marshal())
	if err != nil {
		t.Fatal(err)
	}
	want := map[uint8][]byte{
		OptServerID:     {169, 254, 75, 10},
		OptLeaseTime:    {0xff, 0xff, 0xff, 0xff},
		OptSubnetMask:   {255, 255, 255, 0},
		OptBroadcast:    {10, 4, 0, 255},
		OptRouter:       {10, 4, 0, 1},
		OptDNS:          {10, 4, 0, 53, 10, 4, 0, 54},
		OptDomainName:   []byte("example.com"),
		OptDomainSearch: []byte("\x07example\x03com\x00"),
		OptInterfaceMTU: {0x05, 0x78},
		// The default route leads: option 3 is ignored when 121 is there.
		OptClasslessRoutes: {0, 10, 4, 0, 1, 16, 192, 168, 10, 4, 0, 254},
	}
	for code, v := range want {
		if !bytes.Equal(got.Options[code], v) {
			t.Errorf("option %d = % x, want % x", code, got.Options[code], v)
		}
	}
	for _, code := range []uint8{OptRenewalTime, OptRebindingTime, OptHostname} {
		if _, ok := got.Options[code]; ok {
			t.Errorf("option %d sent", code)
		}
	}
}

func TestReplyRequest(t *testing.T) {
	l := testLease()
	l.Time = time.Hour
	ip := l.Addr.Addr()
	other := netip.MustParseAddr("10.4.0.8")
	a4 := func(a netip.Addr) []byte { b := a.As4(); return b[:] }
	for _, tc := range []struct {
		name string
		req  *Message
		want MessageType // 0: no reply
	}{
		{"selecting", request(guestMAC, Request, Options{OptRequestedIP: a4(ip), OptServerID: a4(sid)}), Ack},
		{"init-reboot", request(guestMAC, Request, Options{OptRequestedIP: a4(ip)}), Ack},
		{"init-reboot other address", request(guestMAC, Request, Options{OptRequestedIP: a4(other)}), Nak},
		{"selecting another server", request(guestMAC, Request, Options{OptRequestedIP: a4(ip), OptServerID: a4(other)}), 0},
		{"renewing", func() *Message { m := request(guestMAC, Request, nil); m.CIAddr = ip; return m }(), Ack},
		{"renewing other address", func() *Message { m := request(guestMAC, Request, nil); m.CIAddr = other; return m }(), Nak},
		{"no address at all", request(guestMAC, Request, nil), Nak},
		{"inform", func() *Message { m := request(guestMAC, Inform, nil); m.CIAddr = ip; return m }(), Ack},
		{"other MAC discover", request(net.HardwareAddr{2, 0, 0, 0, 0, 1}, Discover, nil), 0},
		{"other MAC request", request(net.HardwareAddr{2, 0, 0, 0, 0, 1}, Request, Options{OptRequestedIP: a4(ip)}), 0},
		{"release", request(guestMAC, Release, nil), 0},
		{"decline", request(guestMAC, Decline, Options{OptRequestedIP: a4(ip)}), 0},
		{"no type", func() *Message { m := request(guestMAC, Discover, nil); delete(m.Options, OptMessageType); return m }(), 0},
		{"a reply", func() *Message { m := request(guestMAC, Discover, nil); m.Op = OpReply; return m }(), 0},
		{"not ethernet", func() *Message { m := request(guestMAC, Discover, nil); m.HType = 6; return m }(), 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			resp := Reply(l, sid, tc.req)
			if tc.want == 0 {
				if resp != nil {
					t.Fatalf("replied %s, want no reply", resp.Type())
				}
				return
			}
			if resp == nil {
				t.Fatalf("no reply, want %s", tc.want)
			}
			if resp.Type() != tc.want {
				t.Fatalf("replied %s, want %s", resp.Type(), tc.want)
			}
			switch {
			case tc.want == Nak:
				if resp.YIAddr.IsValid() || resp.Options[OptLeaseTime] != nil || resp.Options[OptSubnetMask] != nil {
					t.Errorf("NAK carries a lease: %+v", resp)
				}
				if mac, ip := replyAddressing(tc.req, resp); mac.String() != "ff:ff:ff:ff:ff:ff" || ip != netip.MustParseAddr("255.255.255.255") {
					t.Errorf("NAK goes to %s %s, want broadcast", mac, ip)
				}
			case tc.req.Type() == Inform:
				if resp.YIAddr.IsValid() || resp.Options[OptLeaseTime] != nil {
					t.Errorf("INFORM's ACK carries a lease")
				}
			default:
				if resp.YIAddr != ip {
					t.Errorf("yiaddr %s", resp.YIAddr)
				}
				if v := resp.Options[OptLeaseTime]; !bytes.Equal(v, []byte{0, 0, 0x0e, 0x10}) {
					t.Errorf("lease time % x, want 3600 s", resp.Options[OptLeaseTime])
				}
				if len(resp.Options[OptRenewalTime]) != 4 || len(resp.Options[OptRebindingTime]) != 4 {
					t.Error("finite lease without T1/T2")
				}
			}
		})
	}
}

func TestReplyAddressing(t *testing.T) {
	l := testLease()
	bcast := "ff:ff:ff:ff:ff:ff"
	unicast := request(guestMAC, Discover, nil)
	if mac, ip := replyAddressing(unicast, Reply(l, sid, unicast)); mac.String() != guestMAC.String() || ip != l.Addr.Addr() {
		t.Errorf("unicast-capable client: reply to %s %s", mac, ip)
	}
	b := request(guestMAC, Discover, nil)
	b.Flags = bootpBroadcastFlag
	if mac, ip := replyAddressing(b, Reply(l, sid, b)); mac.String() != bcast || !ip.IsValid() || ip.As4() != [4]byte{255, 255, 255, 255} {
		t.Errorf("broadcast flag: reply to %s %s", mac, ip)
	}
	r := request(guestMAC, Request, nil)
	r.CIAddr = l.Addr.Addr()
	if mac, ip := replyAddressing(r, Reply(l, sid, r)); mac.String() != guestMAC.String() || ip != r.CIAddr {
		t.Errorf("renewing: reply to %s %s", mac, ip)
	}
}

func TestLeaseValidate(t *testing.T) {
	for name, mod := range map[string]func(*Lease){
		"no MAC":      func(l *Lease) { l.MAC = nil },
		"IPv6":        func(l *Lease) { l.Addr = netip.MustParsePrefix("fd00::2/64") },
		"no prefix":   func(l *Lease) { l.Addr = netip.Prefix{} },
		"IPv6 DNS":    func(l *Lease) { l.DNS = []netip.Addr{netip.MustParseAddr("fd00::53")} },
		"IPv6 router": func(l *Lease) { l.Router = netip.MustParseAddr("fd00::1") },
		"tiny MTU":    func(l *Lease) { l.MTU = 10 },
		"bad search":  func(l *Lease) { l.Search = []string{"a..b"} },
	} {
		l := testLease()
		mod(l)
		if err := l.Validate(); err == nil {
			t.Errorf("%s: valid", name)
		}
	}
}
