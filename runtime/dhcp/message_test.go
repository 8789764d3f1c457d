package dhcp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"testing"
)

var guestMAC = net.HardwareAddr{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}

// request is a client message of type typ from mac with extra options.
func request(mac net.HardwareAddr, typ MessageType, opts Options) *Message {
	m := &Message{Op: OpRequest, HType: HTypeEthernet, HLen: 6, XID: 0xdeadbeef, Options: Options{OptMessageType: {byte(typ)}}}
	copy(m.CHAddr[:], mac)
	for k, v := range opts {
		m.Options[k] = v
	}
	return m
}

func TestMessageRoundTrip(t *testing.T) {
	m := request(guestMAC, Discover, Options{OptParamRequest: {1, 3, 6, 121}, OptHostname: []byte("vm")})
	m.Secs, m.Flags, m.Hops = 3, bootpBroadcastFlag, 1
	m.CIAddr = netip.MustParseAddr("10.0.0.9")
	m.GIAddr = netip.MustParseAddr("10.0.0.254")
	m.YIAddr, m.SIAddr = netip.IPv4Unspecified(), netip.IPv4Unspecified() // the zero Addr decodes as 0.0.0.0
	copy(m.SName[:], "server")
	copy(m.File[:], "boot")
	b := m.Marshal()
	if len(b) != minMessageLen {
		t.Errorf("encoded %d bytes, want padding to %d", len(b), minMessageLen)
	}
	// Message type comes first, the rest ascending.
	if !bytes.Equal(b[240:243], []byte{OptMessageType, 1, byte(Discover)}) {
		t.Errorf("options start % x, want the message type", b[240:243])
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, m) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, m)
	}
	if got.Type() != Discover || got.ClientMAC().String() != guestMAC.String() {
		t.Errorf("type %s, MAC %s", got.Type(), got.ClientMAC())
	}
}

// TestParseKnownBytes decodes a message laid out by hand, as a client on
// the wire would send it: unset addresses are 0.0.0.0, options are split
// (RFC 3396) and padded, and there is data after End.
func TestParseKnownBytes(t *testing.T) {
	b := make([]byte, 240)
	b[0], b[1], b[2] = 1, 1, 6
	copy(b[4:8], []byte{1, 2, 3, 4})
	copy(b[28:34], guestMAC)
	copy(b[236:240], []byte{0x63, 0x82, 0x53, 0x63})
	b = append(b, 53, 1, 3, 0, 0, 50, 4, 10, 0, 0, 7, 55, 2, 1, 3, 55, 1, 6, 255, 99, 99)
	m, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if m.XID != 0x01020304 || m.Type() != Request {
		t.Errorf("xid %#x type %s", m.XID, m.Type())
	}
	if ip, ok := m.Addr(OptRequestedIP); !ok || ip != netip.MustParseAddr("10.0.0.7") {
		t.Errorf("requested IP %s %v", ip, ok)
	}
	if !bytes.Equal(m.Options[OptParamRequest], []byte{1, 3, 6}) {
		t.Errorf("split option 55 decoded as % x", m.Options[OptParamRequest])
	}
	if m.CIAddr != netip.MustParseAddr("0.0.0.0") {
		t.Errorf("ciaddr %s", m.CIAddr)
	}
	if _, ok := m.Options[99]; ok {
		t.Error("read options after End")
	}
}

func TestParseErrors(t *testing.T) {
	good := request(guestMAC, Discover, nil).Marshal()
	for name, tc := range map[string]struct {
		b    []byte
		want error
	}{
		"empty":          {nil, ErrShort},
		"header only":    {good[:236], ErrShort},
		"bad cookie":     {append(append([]byte{}, good[:236]...), 1, 2, 3, 4), ErrNoCookie},
		"no length":      {append(append([]byte{}, good[:240]...), 53), ErrTruncated},
		"value too long": {append(append([]byte{}, good[:240]...), 53, 5, 1), ErrTruncated},
	} {
		if _, err := Parse(tc.b); !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", name, err, tc.want)
		}
	}
}

// TestLongOptionSplit: values over 255 bytes go out as several instances
// and come back whole.
func TestLongOptionSplit(t *testing.T) {
	long := bytes.Repeat([]byte{7}, 600)
	m := request(guestMAC, Offer, Options{OptDomainSearch: long})
	b := m.Marshal()
	if n := bytes.Count(b, []byte{OptDomainSearch, 255}); n != 2 {
		t.Errorf("%d full instances of option 119, want 2", n)
	}
	got, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Options[OptDomainSearch], long) {
		t.Errorf("long option came back as %d bytes", len(got.Options[OptDomainSearch]))
	}
}

func TestClasslessRoutes(t *testing.T) {
	routes := []Route{
		{Dst: netip.MustParsePrefix("0.0.0.0/0"), Via: netip.MustParseAddr("10.0.0.1")},
		{Dst: netip.MustParsePrefix("192.168.0.0/16"), Via: netip.MustParseAddr("10.0.0.2")},
		{Dst: netip.MustParsePrefix("10.9.8.0/23"), Via: netip.MustParseAddr("10.0.0.3")},
		{Dst: netip.MustParsePrefix("172.16.5.4/32")},
	}
	b, err := EncodeClasslessRoutes(routes)
	if err != nil {
		t.Fatal(err)
	}
	// RFC 3442's examples: 0/0 is 1+0+4 bytes, /16 is 1+2+4, /23 is 1+3+4, /32 is 1+4+4.
	want := []byte{0, 10, 0, 0, 1, 16, 192, 168, 10, 0, 0, 2, 23, 10, 9, 8, 10, 0, 0, 3, 32, 172, 16, 5, 4, 0, 0, 0, 0}
	if !bytes.Equal(b, want) {
		t.Fatalf("encoded\n % x\nwant\n % x", b, want)
	}
	got, err := DecodeClasslessRoutes(b)
	if err != nil {
		t.Fatal(err)
	}
	routes[3].Via = netip.MustParseAddr("0.0.0.0")
	if !reflect.DeepEqual(got, routes) {
		t.Errorf("decoded %v, want %v", got, routes)
	}
	if _, err := DecodeClasslessRoutes([]byte{33, 1, 2, 3, 4, 5, 6, 7, 8}); err == nil {
		t.Error("prefix length 33 accepted")
	}
	if _, err := DecodeClasslessRoutes([]byte{24, 10, 0}); err == nil {
		t.Error("truncated route accepted")
	}
	if _, err := EncodeClasslessRoutes([]Route{{Dst: netip.MustParsePrefix("fd00::/64")}}); err == nil {
		t.Error("IPv6 route accepted")
	}
}

func TestDomainSearch(t *testing.T) {
	b, err := EncodeDomainSearch([]string{"eng.example.com.", "example.com"})
	if err != nil {
		t.Fatal(err)
	}
	want := []byte("\x03eng\x07example\x03com\x00\x07example\x03com\x00")
	if !bytes.Equal(b, want) {
		t.Errorf("got %q, want %q", b, want)
	}
	if _, err := EncodeDomainSearch([]string{"a..b"}); err == nil {
		t.Error("empty label accepted")
	}
}
