package dhcp

import (
	"bytes"
	"errors"
	"net"
	"net/netip"
	"reflect"
	"testing"
)

func testFrame() *Frame {
	return &Frame{
		DstMAC: net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, SrcMAC: guestMAC,
		SrcIP: netip.MustParseAddr("0.0.0.0"), DstIP: netip.MustParseAddr("255.255.255.255"),
		SrcPort: ClientPort, DstPort: ServerPort,
		Payload: request(guestMAC, Discover, nil).Marshal(),
	}
}

func TestFrameRoundTrip(t *testing.T) {
	f := testFrame()
	b := f.Marshal()
	if checksum(b[14:34], 0) != 0 {
		t.Error("IPv4 header checksum does not verify")
	}
	// The UDP checksum over the pseudo-header verifies to zero as well.
	udp := b[34:]
	pseudo := uint32(protoUDP) + uint32(len(udp))
	for i := 26; i < 34; i += 2 {
		pseudo += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if checksum(udp, pseudo) != 0 {
		t.Error("UDP checksum does not verify")
	}
	got, err := ParseFrame(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, f) {
		t.Errorf("round trip:\n got %+v\nwant %+v", got, f)
	}
}

// TestChecksumKnown is the IPv4 header example from RFC 1071's usual
// illustration (Wikipedia's "IPv4 header checksum" worked example).
func TestChecksumKnown(t *testing.T) {
	h := []byte{0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8, 0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7}
	if got := checksum(h, 0); got != 0xb861 {
		t.Errorf("checksum %#04x, want 0xb861", got)
	}
}

func TestParseFrameRejects(t *testing.T) {
	good := testFrame().Marshal()
	mod := func(f func(b []byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, b := range map[string][]byte{
		"short":         good[:40],
		"ARP":           mod(func(b []byte) []byte { b[12], b[13] = 0x08, 0x06; return b }),
		"IPv6 version":  mod(func(b []byte) []byte { b[14] = 0x65; return b }),
		"TCP":           mod(func(b []byte) []byte { b[23] = 6; return b }),
		"bad checksum":  mod(func(b []byte) []byte { b[24] ^= 1; return b }),
		"fragment":      mod(func(b []byte) []byte { b[20] |= 0x20; return b }),
		"total > frame": mod(func(b []byte) []byte { return b[:len(b)-10] }),
		"UDP length":    mod(func(b []byte) []byte { b[38], b[39] = 0xff, 0xff; return b }),
	} {
		if _, err := ParseFrame(b); !errors.Is(err, ErrNotUDP) {
			t.Errorf("%s: got %v, want ErrNotUDP", name, err)
		}
	}
}
