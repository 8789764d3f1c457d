package dhcp

import (
	"fmt"
	"net/netip"
	"strings"
)

// Route is a classless static route (option 121).
type Route struct {
	Dst netip.Prefix
	// Via is the next hop; the zero Addr (or 0.0.0.0) means on-link.
	Via netip.Addr
}

// EncodeClasslessRoutes encodes routes as option 121 (RFC 3442): for each,
// the prefix length, the significant octets of the destination, the router.
func EncodeClasslessRoutes(routes []Route) ([]byte, error) {
	var b []byte
	for _, r := range routes {
		if !r.Dst.IsValid() || !r.Dst.Addr().Is4() {
			return nil, fmt.Errorf("dhcp: route destination %s is not IPv4", r.Dst)
		}
		if r.Via.IsValid() && !r.Via.Is4() {
			return nil, fmt.Errorf("dhcp: route %s: next hop %s is not IPv4", r.Dst, r.Via)
		}
		dst := r.Dst.Masked()
		bits := dst.Bits()
		a := dst.Addr().As4()
		b = append(b, byte(bits))
		b = append(b, a[:(bits+7)/8]...)
		via := [4]byte{}
		if r.Via.IsValid() {
			via = r.Via.As4()
		}
		b = append(b, via[:]...)
	}
	return b, nil
}

// DecodeClasslessRoutes decodes option 121.
func DecodeClasslessRoutes(b []byte) ([]Route, error) {
	var routes []Route
	for len(b) > 0 {
		bits := int(b[0])
		if bits > 32 {
			return nil, fmt.Errorf("dhcp: classless route with prefix length %d", bits)
		}
		n := (bits + 7) / 8
		if len(b) < 1+n+4 {
			return nil, fmt.Errorf("%w: classless route", ErrTruncated)
		}
		var a [4]byte
		copy(a[:], b[1:1+n])
		routes = append(routes, Route{
			Dst: netip.PrefixFrom(netip.AddrFrom4(a), bits),
			Via: netip.AddrFrom4([4]byte(b[1+n : 1+n+4])),
		})
		b = b[1+n+4:]
	}
	return routes, nil
}

// EncodeDomainSearch encodes names as option 119 (RFC 3397), as plain
// uncompressed DNS names.
func EncodeDomainSearch(names []string) ([]byte, error) {
	var b []byte
	for _, name := range names {
		name = strings.TrimSuffix(name, ".")
		if name == "" {
			continue
		}
		if len(name) > 253 {
			return nil, fmt.Errorf("dhcp: search domain %q is too long", name)
		}
		for _, label := range strings.Split(name, ".") {
			if len(label) == 0 || len(label) > 63 {
				return nil, fmt.Errorf("dhcp: search domain %q has a bad label", name)
			}
			b = append(b, byte(len(label)))
			b = append(b, label...)
		}
		b = append(b, 0)
	}
	return b, nil
}
