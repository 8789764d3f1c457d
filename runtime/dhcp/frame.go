package dhcp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
)

// Ports.
const (
	ServerPort = 67
	ClientPort = 68
)

const (
	ethHeaderLen  = 14
	ipv4HeaderLen = 20
	udpHeaderLen  = 8
	etherTypeIPv4 = 0x0800
	protoUDP      = 17
	defaultTTL    = 64
)

// Frame is a UDP datagram in an IPv4 packet in an Ethernet II frame, as
// read from or written to the tap.
type Frame struct {
	DstMAC, SrcMAC   net.HardwareAddr
	SrcIP, DstIP     netip.Addr
	SrcPort, DstPort uint16
	Payload          []byte
}

// ErrNotUDP is returned by ParseFrame for frames that are not a whole,
// well-formed IPv4 UDP datagram.
var ErrNotUDP = errors.New("dhcp: not an IPv4 UDP frame")

// ParseFrame decodes an Ethernet frame holding an unfragmented IPv4 UDP
// datagram. The IPv4 header checksum is checked; the UDP checksum is not
// (a guest offloading checksums hands the tap a partial one). Payload
// aliases b.
func ParseFrame(b []byte) (*Frame, error) {
	if len(b) < ethHeaderLen+ipv4HeaderLen+udpHeaderLen {
		return nil, fmt.Errorf("%w: %d bytes", ErrNotUDP, len(b))
	}
	if binary.BigEndian.Uint16(b[12:14]) != etherTypeIPv4 {
		return nil, fmt.Errorf("%w: ethertype %#04x", ErrNotUDP, binary.BigEndian.Uint16(b[12:14]))
	}
	f := &Frame{DstMAC: net.HardwareAddr(b[0:6]), SrcMAC: net.HardwareAddr(b[6:12])}
	ip := b[ethHeaderLen:]
	if ip[0]>>4 != 4 {
		return nil, fmt.Errorf("%w: IP version %d", ErrNotUDP, ip[0]>>4)
	}
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:4]))
	if ihl < ipv4HeaderLen || total < ihl+udpHeaderLen || total > len(ip) {
		return nil, fmt.Errorf("%w: header length %d, total length %d of %d", ErrNotUDP, ihl, total, len(ip))
	}
	if frag := binary.BigEndian.Uint16(ip[6:8]); frag&0x3fff != 0 {
		return nil, fmt.Errorf("%w: fragment", ErrNotUDP)
	}
	if ip[9] != protoUDP {
		return nil, fmt.Errorf("%w: protocol %d", ErrNotUDP, ip[9])
	}
	if checksum(ip[:ihl], 0) != 0 {
		return nil, fmt.Errorf("%w: bad IPv4 header checksum", ErrNotUDP)
	}
	f.SrcIP, f.DstIP = addr4(ip[12:16]), addr4(ip[16:20])
	udp := ip[ihl:total]
	f.SrcPort = binary.BigEndian.Uint16(udp[0:2])
	f.DstPort = binary.BigEndian.Uint16(udp[2:4])
	ulen := int(binary.BigEndian.Uint16(udp[4:6]))
	if ulen < udpHeaderLen || ulen > len(udp) {
		return nil, fmt.Errorf("%w: UDP length %d of %d", ErrNotUDP, ulen, len(udp))
	}
	f.Payload = udp[udpHeaderLen:ulen]
	return f, nil
}

// Marshal encodes f with correct IPv4 and UDP checksums.
func (f *Frame) Marshal() []byte {
	total := ipv4HeaderLen + udpHeaderLen + len(f.Payload)
	b := make([]byte, ethHeaderLen+total)
	copy(b[0:6], f.DstMAC)
	copy(b[6:12], f.SrcMAC)
	binary.BigEndian.PutUint16(b[12:14], etherTypeIPv4)
	ip := b[ethHeaderLen:]
	ip[0] = 0x45
	binary.BigEndian.PutUint16(ip[2:4], uint16(total))
	ip[8] = defaultTTL
	ip[9] = protoUDP
	put4(ip[12:16], f.SrcIP)
	put4(ip[16:20], f.DstIP)
	binary.BigEndian.PutUint16(ip[10:12], checksum(ip[:ipv4HeaderLen], 0))
	udp := ip[ipv4HeaderLen:]
	binary.BigEndian.PutUint16(udp[0:2], f.SrcPort)
	binary.BigEndian.PutUint16(udp[2:4], f.DstPort)
	binary.BigEndian.PutUint16(udp[4:6], uint16(udpHeaderLen+len(f.Payload)))
	copy(udp[udpHeaderLen:], f.Payload)
	// Pseudo-header: source, destination, zero, protocol, UDP length.
	pseudo := uint32(protoUDP) + uint32(udpHeaderLen+len(f.Payload))
	for i := 12; i < 20; i += 2 {
		pseudo += uint32(binary.BigEndian.Uint16(ip[i : i+2]))
	}
	sum := checksum(udp, pseudo)
	if sum == 0 {
		sum = 0xffff // 0 means "no checksum" in UDP over IPv4
	}
	binary.BigEndian.PutUint16(udp[6:8], sum)
	return b
}

// checksum is the Internet checksum of b, starting from initial.
func checksum(b []byte, initial uint32) uint16 {
	sum := initial
	for len(b) >= 2 {
		sum += uint32(binary.BigEndian.Uint16(b))
		b = b[2:]
	}
	if len(b) == 1 {
		sum += uint32(b[0]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}
