package dhcp

import (
	"bytes"
	"testing"
)

// seeds are real-looking messages: a client's DISCOVER and REQUEST and
// the server's OFFER, whole and cut short.
func seeds() [][]byte {
	l := testLease()
	d := request(guestMAC, Discover, Options{OptParamRequest: {1, 3, 6, 12, 15, 28, 121}, OptClientID: append([]byte{1}, guestMAC...)})
	ip := l.Addr.Addr().As4()
	r := request(guestMAC, Request, Options{OptRequestedIP: ip[:], OptServerID: []byte{169, 254, 75, 10}})
	o := Reply(l, DefaultServerID, d)
	out := [][]byte{d.Marshal(), r.Marshal(), o.Marshal()}
	out = append(out, o.Marshal()[:250], d.Marshal()[:239])
	return out
}

// FuzzParse: Parse never panics, and what it accepts re-encodes to a
// message that decodes to the same thing.
func FuzzParse(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := Parse(b)
		if err != nil {
			return
		}
		_ = m.Type()
		_ = m.ClientMAC()
		_, _ = DecodeClasslessRoutes(m.Options[OptClasslessRoutes])
		m2, err := Parse(m.Marshal())
		if err != nil {
			t.Fatalf("re-encoded message does not parse: %v", err)
		}
		for code, v := range m.Options {
			if !bytes.Equal(m2.Options[code], v) {
				t.Fatalf("option %d changed in a round trip", code)
			}
		}
		if m2.XID != m.XID || m2.CHAddr != m.CHAddr || m2.CIAddr != m.CIAddr {
			t.Fatal("header changed in a round trip")
		}
		// Whatever it is, answering it must not panic.
		_ = Reply(testLease(), DefaultServerID, m)
	})
}

// FuzzParseFrame: ParseFrame never panics and what it accepts round-trips.
func FuzzParseFrame(f *testing.F) {
	for _, s := range seeds() {
		fr := testFrame()
		fr.Payload = s
		f.Add(fr.Marshal())
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		fr, err := ParseFrame(b)
		if err != nil {
			return
		}
		if !fr.SrcIP.Is4() || !fr.DstIP.Is4() {
			t.Fatal("non-IPv4 addresses")
		}
		fr2, err := ParseFrame(fr.Marshal())
		if err != nil {
			t.Fatalf("re-encoded frame does not parse: %v", err)
		}
		if !bytes.Equal(fr2.Payload, fr.Payload) || fr2.SrcIP != fr.SrcIP || fr2.DstPort != fr.DstPort {
			t.Fatal("frame changed in a round trip")
		}
	})
}
