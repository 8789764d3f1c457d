// Package egress decides which addresses the CSI driver may connect to when
// it fetches an image a claim names. The check runs in the dialer, on the
// address about to be dialed after DNS resolution, so a name that resolves
// to something else a second time (DNS rebinding), an HTTP redirect or a
// registry's token or blob redirect cannot slip past it.
package egress

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"syscall"
	"time"
)

// Policy is what guarded fetches may dial.
type Policy struct {
	// PodCIDRs and ServiceCIDRs are the cluster's; addresses inside them
	// are refused unless AllowPrivate.
	PodCIDRs, ServiceCIDRs []netip.Prefix
	// AllowPrivate lifts the refusal of loopback and cluster addresses,
	// for in-cluster registries an admin opted in. Link-local (cloud
	// metadata), unspecified and multicast addresses stay refused: no image
	// is served from there.
	AllowPrivate bool
}

// Reasons a dial is refused.
const (
	ReasonLoopback    = "loopback address"
	ReasonLinkLocal   = "link-local address (cloud metadata endpoints live there)"
	ReasonMetadata    = "cloud metadata endpoint"
	ReasonUnspecified = "unspecified address"
	ReasonMulticast   = "multicast address"
	ReasonPodCIDR     = "inside the cluster's pod CIDR"
	ReasonServiceCIDR = "inside the cluster's service CIDR"
)

// metadata are cloud metadata endpoints outside the link-local range.
var metadata = map[netip.Addr]bool{
	netip.MustParseAddr("fd00:ec2::254"):   true, // AWS IMDS over IPv6
	netip.MustParseAddr("100.100.100.200"): true, // Alibaba Cloud
}

// RefusedError is a connection the policy did not allow.
type RefusedError struct {
	Addr   netip.AddrPort
	Reason string // one of the Reason constants, with the CIDR when one matched
	// Private says that AllowPrivate would have allowed it.
	Private bool
}

func (e *RefusedError) Error() string {
	s := fmt.Sprintf("connection to %s refused by the image egress policy: %s", e.Addr, e.Reason)
	if e.Private {
		s += "; an image source in the cluster or on the node must be allowed by the StorageClass (allowPrivateSources)"
	}
	return s
}

// Check says whether addr may be dialed: nil, or a *RefusedError.
func (p Policy) Check(addr netip.AddrPort) error {
	ip := addr.Addr().Unmap()
	refuse := func(reason string, private bool) error {
		return &RefusedError{Addr: addr, Reason: reason, Private: private}
	}
	switch {
	case ip.IsUnspecified():
		return refuse(ReasonUnspecified, false)
	case ip.IsMulticast():
		return refuse(ReasonMulticast, false)
	case ip.IsLinkLocalUnicast():
		return refuse(ReasonLinkLocal, false)
	case metadata[ip]:
		return refuse(ReasonMetadata, false)
	case p.AllowPrivate:
		return nil
	case ip.IsLoopback():
		return refuse(ReasonLoopback, true)
	}
	for _, c := range p.PodCIDRs {
		if c.Contains(ip) {
			return refuse(ReasonPodCIDR+" "+c.String(), true)
		}
	}
	for _, c := range p.ServiceCIDRs {
		if c.Contains(ip) {
			return refuse(ReasonServiceCIDR+" "+c.String(), true)
		}
	}
	return nil
}

// DialContext dials like a net.Dialer with these timeouts, refusing every
// address the policy does not allow. Use it as an http.Transport's
// DialContext, with no proxy: a proxy would dial on the fetch's behalf,
// unchecked.
func (p Policy) DialContext(timeout, keepAlive time.Duration) func(ctx context.Context, network, address string) (net.Conn, error) {
	d := &net.Dialer{Timeout: timeout, KeepAlive: keepAlive,
		// Control runs for every address the dialer tries, after resolution
		// and before connect: the address checked is the address dialed.
		Control: func(network, address string, _ syscall.RawConn) error {
			ap, err := netip.ParseAddrPort(address)
			if err != nil {
				return fmt.Errorf("image egress policy: cannot parse the address %q to dial: %w", address, err)
			}
			return p.Check(ap)
		}}
	return d.DialContext
}

// ParseCIDRs reads a comma-separated list of CIDRs (a flag's value).
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a CIDR such as 10.244.0.0/16: %w", f, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}
