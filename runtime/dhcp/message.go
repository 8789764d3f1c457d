// Package dhcp is the launcher's DHCPv4 server: it serves exactly one
// lease (the address the CNI plugin gave the guest) to exactly one MAC
// (the guest's), on the tap the guest's NIC is plugged into.
//
// It answers DISCOVER with OFFER, REQUEST for the leased address with ACK
// and REQUEST for any other address with NAK, INFORM with ACK, and
// ignores everything from other MACs, RELEASE and DECLINE. It talks
// through an AF_PACKET socket bound to the tap (CAP_NET_RAW only: the pod
// has no address on that network, and needs none), building the
// Ethernet/IPv4/UDP frames itself.
//
// The wire format (RFC 2131, options from RFC 2132, RFC 3397, RFC 3442,
// long options split per RFC 3396) is encoded and decoded here with
// encoding/binary: no DHCP library is available from the module proxy.
package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
)

// BOOTP op codes.
const (
	OpRequest uint8 = 1
	OpReply   uint8 = 2
)

// MessageType is the value of option 53.
type MessageType uint8

// DHCP message types (RFC 2132 9.6).
const (
	Discover MessageType = 1
	Offer    MessageType = 2
	Request  MessageType = 3
	Decline  MessageType = 4
	Ack      MessageType = 5
	Nak      MessageType = 6
	Release  MessageType = 7
	Inform   MessageType = 8
)

func (t MessageType) String() string {
	names := [...]string{"", "DISCOVER", "OFFER", "REQUEST", "DECLINE", "ACK", "NAK", "RELEASE", "INFORM"}
	if int(t) < len(names) && t != 0 {
		return names[t]
	}
	return fmt.Sprintf("type(%d)", uint8(t))
}

// Option codes used here (RFC 2132 unless noted).
const (
	OptPad             uint8  = 0
	OptSubnetMask      uint8  = 1
	OptRouter          uint8  = 3
	OptDNS             uint8  = 6
	OptHostname        uint8  = 12
	OptDomainName      uint8  = 15
	OptInterfaceMTU    uint8  = 26
	OptBroadcast       uint8  = 28
	OptRequestedIP     uint8  = 50
	OptLeaseTime       uint8  = 51
	OptOverload        uint8  = 52
	OptMessageType     uint8  = 53
	OptServerID        uint8  = 54
	OptParamRequest    uint8  = 55
	OptMessage         uint8  = 56
	OptMaxMessageSize  uint8  = 57
	OptRenewalTime     uint8  = 58
	OptRebindingTime   uint8  = 59
	OptClientID        uint8  = 61
	OptDomainSearch    uint8  = 119 // RFC 3397
	OptClasslessRoutes uint8  = 121 // RFC 3442
	OptEnd             uint8  = 255
	HTypeEthernet      uint8  = 1
	magicCookie        uint32 = 0x63825363
	headerLen                 = 236 // fixed BOOTP header, without the cookie
	minMessageLen             = 300 // RFC 1542: BOOTP messages are at least this long
	bootpBroadcastFlag uint16 = 0x8000
)

// Options are a message's options by code. A code's value is the
// concatenation of every instance of the option (RFC 3396); Pad and End
// never appear.
type Options map[uint8][]byte

// Message is a DHCP message (the BOOTP header and its options).
type Message struct {
	Op     uint8
	HType  uint8
	HLen   uint8
	Hops   uint8
	XID    uint32
	Secs   uint16
	Flags  uint16
	CIAddr netip.Addr // the zero Addr encodes as 0.0.0.0
	YIAddr netip.Addr
	SIAddr netip.Addr
	GIAddr netip.Addr
	CHAddr [16]byte
	SName  [64]byte
	File   [128]byte
	Options
}

// Errors of Parse.
var (
	ErrShort     = errors.New("dhcp: message too short")
	ErrNoCookie  = errors.New("dhcp: no magic cookie")
	ErrTruncated = errors.New("dhcp: option runs past the end of the message")
)

// Parse decodes a DHCP message. It checks the framing only; what the
// fields mean is up to the caller. Options overloaded into sname/file
// (option 52) are not read: this server never needs them.
func Parse(b []byte) (*Message, error) {
	if len(b) < headerLen+4 {
		return nil, fmt.Errorf("%w: %d bytes", ErrShort, len(b))
	}
	m := &Message{
		Op:     b[0],
		HType:  b[1],
		HLen:   b[2],
		Hops:   b[3],
		XID:    binary.BigEndian.Uint32(b[4:8]),
		Secs:   binary.BigEndian.Uint16(b[8:10]),
		Flags:  binary.BigEndian.Uint16(b[10:12]),
		CIAddr: addr4(b[12:16]),
		YIAddr: addr4(b[16:20]),
		SIAddr: addr4(b[20:24]),
		GIAddr: addr4(b[24:28]),
	}
	copy(m.CHAddr[:], b[28:44])
	copy(m.SName[:], b[44:108])
	copy(m.File[:], b[108:236])
	if binary.BigEndian.Uint32(b[236:240]) != magicCookie {
		return nil, ErrNoCookie
	}
	opts, err := parseOptions(b[240:])
	if err != nil {
		return nil, err
	}
	m.Options = opts
	return m, nil
}

func parseOptions(b []byte) (Options, error) {
	opts := Options{}
	for i := 0; i < len(b); {
		code := b[i]
		switch code {
		case OptPad:
			i++
			continue
		case OptEnd:
			return opts, nil
		}
		if i+1 >= len(b) {
			return nil, fmt.Errorf("%w: option %d has no length", ErrTruncated, code)
		}
		n := int(b[i+1])
		if i+2+n > len(b) {
			return nil, fmt.Errorf("%w: option %d of length %d", ErrTruncated, code, n)
		}
		opts[code] = append(opts[code], b[i+2:i+2+n]...)
		i += 2 + n
	}
	// A missing End is tolerated: some clients stop at the packet's end.
	return opts, nil
}

func addr4(b []byte) netip.Addr { return netip.AddrFrom4([4]byte(b)) }

func put4(b []byte, a netip.Addr) {
	if a.Is4() {
		v := a.As4()
		copy(b, v[:])
	}
}

// Marshal encodes m, options in ascending code order with the message
// type first, each value longer than 255 bytes split into several
// instances (RFC 3396), padded to the 300 bytes BOOTP relays expect.
func (m *Message) Marshal() []byte {
	b := make([]byte, headerLen+4, minMessageLen)
	b[0], b[1], b[2], b[3] = m.Op, m.HType, m.HLen, m.Hops
	binary.BigEndian.PutUint32(b[4:8], m.XID)
	binary.BigEndian.PutUint16(b[8:10], m.Secs)
	binary.BigEndian.PutUint16(b[10:12], m.Flags)
	put4(b[12:16], m.CIAddr)
	put4(b[16:20], m.YIAddr)
	put4(b[20:24], m.SIAddr)
	put4(b[24:28], m.GIAddr)
	copy(b[28:44], m.CHAddr[:])
	copy(b[44:108], m.SName[:])
	copy(b[108:236], m.File[:])
	binary.BigEndian.PutUint32(b[236:240], magicCookie)
	codes := make([]uint8, 0, len(m.Options))
	for c := range m.Options {
		if c != OptPad && c != OptEnd {
			codes = append(codes, c)
		}
	}
	slices.SortFunc(codes, func(x, y uint8) int {
		switch {
		case x == y:
			return 0
		case x == OptMessageType:
			return -1
		case y == OptMessageType:
			return 1
		}
		return int(x) - int(y)
	})
	for _, c := range codes {
		v := m.Options[c]
		for {
			n := min(len(v), 255)
			b = append(b, c, byte(n))
			b = append(b, v[:n]...)
			v = v[n:]
			if len(v) == 0 {
				break
			}
		}
	}
	b = append(b, OptEnd)
	for len(b) < minMessageLen {
		b = append(b, OptPad)
	}
	return b
}

// ClientMAC is the Ethernet address in chaddr, or nil when the message is
// not from an Ethernet client.
func (m *Message) ClientMAC() net.HardwareAddr {
	if m.HType != HTypeEthernet || m.HLen != 6 {
		return nil
	}
	return net.HardwareAddr(m.CHAddr[:6])
}

// Type is the message type (option 53), or 0 when missing or malformed.
func (m *Message) Type() MessageType {
	if v := m.Options[OptMessageType]; len(v) == 1 {
		return MessageType(v[0])
	}
	return 0
}

// Addr returns option code as one IPv4 address, if it is exactly that.
func (m *Message) Addr(code uint8) (netip.Addr, bool) {
	if v := m.Options[code]; len(v) == 4 {
		return addr4(v), true
	}
	return netip.Addr{}, false
}

// SetAddrs sets option code to the IPv4 addresses as.
func (o Options) SetAddrs(code uint8, as ...netip.Addr) {
	v := make([]byte, 0, 4*len(as))
	for _, a := range as {
		b := a.As4()
		v = append(v, b[:]...)
	}
	o[code] = v
}

// SetUint32 sets option code to v, big-endian.
func (o Options) SetUint32(code uint8, v uint32) {
	o[code] = binary.BigEndian.AppendUint32(nil, v)
}

// SetUint16 sets option code to v, big-endian.
func (o Options) SetUint16(code uint8, v uint16) {
	o[code] = binary.BigEndian.AppendUint16(nil, v)
}
