// Package identity is what makes a VM's network identity its own: the
// range its MACs come from, the address range of an L2 network (read from
// the network's IPAM configuration), and the claims a controller has
// handed out but its cache does not show yet.
//
// The controller records both in the VM, so every VMI of the VM uses the
// same MAC and the same address, and a VM's values are free again only
// when the VM is gone. Nothing here talks to the API server.
package identity

import (
	"encoding/binary"
	"encoding/json"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"
)

// MACRange is an inclusive range of unicast MACs, e.g.
// 02:70:76:00:00:00-02:70:76:ff:ff:ff.
type MACRange struct{ first, last uint64 }

// DefaultMACRange is locally administered (the 02 bit) and unicast, so it
// never collides with a vendor's MAC.
const DefaultMACRange = "02:70:76:00:00:00-02:70:76:ff:ff:ff"

// ParseMACRange parses FIRST-LAST.
func ParseMACRange(s string) (MACRange, error) {
	from, to, ok := strings.Cut(s, "-")
	if !ok {
		return MACRange{}, fmt.Errorf("MAC range %q: want FIRST-LAST, like %s", s, DefaultMACRange)
	}
	first, err := macNumber(strings.TrimSpace(from))
	if err != nil {
		return MACRange{}, fmt.Errorf("MAC range %q: %w", s, err)
	}
	last, err := macNumber(strings.TrimSpace(to))
	if err != nil {
		return MACRange{}, fmt.Errorf("MAC range %q: %w", s, err)
	}
	if first > last {
		return MACRange{}, fmt.Errorf("MAC range %q: the first MAC is after the last", s)
	}
	if first>>40 != last>>40 {
		// A range spanning first bytes would cross multicast MACs.
		return MACRange{}, fmt.Errorf("MAC range %q: first and last must share the first byte", s)
	}
	return MACRange{first: first, last: last}, nil
}

func macNumber(s string) (uint64, error) {
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return 0, fmt.Errorf("%q is not a MAC like 02:70:76:00:00:01", s)
	}
	if hw[0]&1 != 0 {
		return 0, fmt.Errorf("%s is a multicast MAC: the first byte must be even", s)
	}
	var b [8]byte
	copy(b[2:], hw)
	return binary.BigEndian.Uint64(b[:]), nil
}

// Size is how many MACs the range holds.
func (r MACRange) Size() uint64 { return r.last - r.first + 1 }

// At is the i-th MAC of the range (i below Size), lower case.
func (r MACRange) At(i uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], r.first+i)
	return net.HardwareAddr(b[2:]).String()
}

// Contains reports whether mac is in the range.
func (r MACRange) Contains(mac string) bool {
	n, err := macNumber(mac)
	return err == nil && n >= r.first && n <= r.last
}

func (r MACRange) String() string { return r.At(0) + "-" + r.At(r.Size()-1) }

// Pool is the range of addresses an L2 network's IPAM hands out, which the
// controller reserves VM addresses from.
type Pool struct {
	Subnet      netip.Prefix
	First, Last netip.Addr
	Gateway     netip.Addr // never handed out; may be invalid
}

// PoolFromConfig reads the pool from a CNI network configuration (a
// NetworkAttachmentDefinition's spec.config, a single config or a
// conflist). It returns nil and no error when the IPAM is not one whose
// addresses can be requested: host-local is (it honours runtimeConfig.ips),
// so its range is the pool; with no IPAM or another one, a VM's address is
// whatever that IPAM gives.
func PoolFromConfig(config string) (*Pool, error) {
	var conf struct {
		IPAM    *hostLocal `json:"ipam"`
		Plugins []struct {
			IPAM *hostLocal `json:"ipam"`
		} `json:"plugins"`
	}
	if err := json.Unmarshal([]byte(config), &conf); err != nil {
		return nil, fmt.Errorf("the CNI config is not JSON: %w", err)
	}
	ipam := conf.IPAM
	for _, p := range conf.Plugins {
		if ipam == nil {
			ipam = p.IPAM
		}
	}
	if ipam == nil || ipam.Type != "host-local" {
		return nil, nil
	}
	r := ipam.hostLocalRange
	if len(ipam.Ranges) > 0 && len(ipam.Ranges[0]) > 0 {
		r = ipam.Ranges[0][0]
	}
	return r.pool()
}

type hostLocal struct {
	Type string `json:"type"`
	hostLocalRange
	Ranges [][]hostLocalRange `json:"ranges"`
}

type hostLocalRange struct {
	Subnet     string `json:"subnet"`
	RangeStart string `json:"rangeStart"`
	RangeEnd   string `json:"rangeEnd"`
	Gateway    string `json:"gateway"`
}

// pool applies host-local's defaults: the range is the subnet without its
// network and broadcast addresses, and the gateway is the first address.
func (r hostLocalRange) pool() (*Pool, error) {
	subnet, err := netip.ParsePrefix(r.Subnet)
	if err != nil {
		return nil, fmt.Errorf("host-local subnet %q: %w", r.Subnet, err)
	}
	subnet = subnet.Masked()
	p := &Pool{Subnet: subnet, First: subnet.Addr().Next(), Last: lastAddr(subnet)}
	if subnet.Addr().Is4() {
		p.Last = p.Last.Prev() // the broadcast address
	}
	for _, f := range []struct {
		s   string
		dst *netip.Addr
	}{{r.RangeStart, &p.First}, {r.RangeEnd, &p.Last}, {r.Gateway, &p.Gateway}} {
		if f.s == "" {
			continue
		}
		a, err := netip.ParseAddr(f.s)
		if err != nil || !subnet.Contains(a) {
			return nil, fmt.Errorf("host-local address %q is not in subnet %s", f.s, subnet)
		}
		*f.dst = a
	}
	if !p.Gateway.IsValid() {
		p.Gateway = subnet.Addr().Next()
	}
	if p.Last.Less(p.First) {
		return nil, fmt.Errorf("host-local range %s-%s is empty", p.First, p.Last)
	}
	return p, nil
}

func lastAddr(p netip.Prefix) netip.Addr {
	b := p.Addr().AsSlice()
	for i := range b {
		if bit := i * 8; bit >= p.Bits() {
			b[i] = 0xff
		} else if bit+8 > p.Bits() {
			b[i] |= 0xff >> (p.Bits() - bit)
		}
	}
	a, _ := netip.AddrFromSlice(b)
	return a
}

// Contains reports whether a can be handed out: inside the range and not
// the gateway.
func (p *Pool) Contains(a netip.Addr) bool {
	return !a.Less(p.First) && !p.Last.Less(a) && a != p.Gateway
}

func (p *Pool) String() string { return p.First.String() + "-" + p.Last.String() }

// ParseAddress reads an interface's ipAddress (with or without a prefix)
// and returns it with the pool's prefix, as recorded in the VM.
func (p *Pool) ParseAddress(s string) (netip.Addr, string, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		pfx, perr := netip.ParsePrefix(s)
		if perr != nil {
			return netip.Addr{}, "", fmt.Errorf("%q is not an IP address", s)
		}
		if pfx.Bits() != p.Subnet.Bits() {
			return netip.Addr{}, "", fmt.Errorf("%s has prefix /%d, but the network's subnet is %s", s, pfx.Bits(), p.Subnet)
		}
		a = pfx.Addr()
	}
	return a, p.WithPrefix(a), nil
}

// WithPrefix is a in CIDR form with the subnet's prefix length.
func (p *Pool) WithPrefix(a netip.Addr) string {
	return netip.PrefixFrom(a, p.Subnet.Bits()).String()
}

// Claims remembers the values a controller handed out until its cache
// shows them in the VM, so two workers (or two VMs in a row, before the
// cache caught up) never get the same one. A claim lapses after ttl.
type Claims struct {
	ttl time.Duration
	mu  sync.Mutex
	m   map[string]claim
}

type claim struct {
	owner string
	until time.Time
}

// NewClaims makes an empty set of claims that lapse after ttl.
func NewClaims(ttl time.Duration) *Claims { return &Claims{ttl: ttl, m: map[string]claim{}} }

// Claim gives key to owner unless another owner holds it; it reports
// whether owner holds it now.
func (c *Claims) Claim(key, owner string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if h, ok := c.m[key]; ok && h.owner != owner && now.Before(h.until) {
		return false
	}
	c.m[key] = claim{owner: owner, until: now.Add(c.ttl)}
	if len(c.m) > 4096 {
		for k, h := range c.m {
			if !now.Before(h.until) {
				delete(c.m, k)
			}
		}
	}
	return true
}

// Release drops every claim of owner (a VM that is gone).
func (c *Claims) Release(owner string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for k, h := range c.m {
		if h.owner == owner {
			delete(c.m, k)
		}
	}
}
