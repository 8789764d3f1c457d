package identity

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestMACRange(t *testing.T) {
	r, err := ParseMACRange(DefaultMACRange)
	if err != nil {
		t.Fatal(err)
	}
	if r.Size() != 1<<24 || r.At(0) != "02:70:76:00:00:00" || r.At(r.Size()-1) != "02:70:76:ff:ff:ff" {
		t.Fatalf("range %s: size %d", r, r.Size())
	}
	if !r.Contains("02:70:76:12:34:56") || !r.Contains("02:70:76:AB:CD:EF") || r.Contains("02:70:77:00:00:00") {
		t.Fatal("Contains is wrong")
	}
	for in, want := range map[string]string{
		"02:00:00:00:00:00":                   "want FIRST-LAST",
		"03:00:00:00:00:00-03:00:00:00:00:09": "multicast",
		"02:00:00:00:00:09-02:00:00:00:00:00": "after the last",
		"02:00:00:00:00:00-04:00:00:00:00:00": "share the first byte",
		"02:00:00:00:00-02:00:00:00:00:01":    "is not a MAC",
	} {
		if _, err := ParseMACRange(in); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseMACRange(%q) = %v, want an error with %q", in, err, want)
		}
	}
}

func TestPoolFromConfig(t *testing.T) {
	for _, tc := range []struct {
		name, config        string
		first, last, gw, pf string
	}{
		{"chart's ranges", `{"type":"podvirt-l2","ipam":{"type":"host-local","ranges":[[{"subnet":"192.168.200.0/24","rangeStart":"192.168.200.10","rangeEnd":"192.168.200.199","gateway":"192.168.200.1"}]]}}`,
			"192.168.200.10", "192.168.200.199", "192.168.200.1", "192.168.200.10/24"},
		{"old-style defaults", `{"ipam":{"type":"host-local","subnet":"10.1.2.0/28"}}`,
			"10.1.2.1", "10.1.2.14", "10.1.2.1", "10.1.2.1/28"},
		{"conflist", `{"plugins":[{"type":"podvirt-l2","ipam":{"type":"host-local","subnet":"10.9.0.0/16","rangeStart":"10.9.1.0"}},{"type":"tuning"}]}`,
			"10.9.1.0", "10.9.255.254", "10.9.0.1", "10.9.1.0/16"},
		{"IPv6", `{"ipam":{"type":"host-local","subnet":"fd00:1::/120"}}`,
			"fd00:1::1", "fd00:1::ff", "fd00:1::1", "fd00:1::1/120"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := PoolFromConfig(tc.config)
			if err != nil || p == nil {
				t.Fatalf("pool %v, %v", p, err)
			}
			if p.First.String() != tc.first || p.Last.String() != tc.last || p.Gateway.String() != tc.gw {
				t.Fatalf("pool %s gateway %s, want %s-%s gateway %s", p, p.Gateway, tc.first, tc.last, tc.gw)
			}
			if got := p.WithPrefix(p.First); got != tc.pf {
				t.Fatalf("WithPrefix = %s, want %s", got, tc.pf)
			}
			if p.Contains(p.Gateway) || !p.Contains(p.Last) || p.Contains(p.Last.Next()) {
				t.Fatal("Contains is wrong")
			}
		})
	}
	for _, config := range []string{`{"type":"bridge"}`, `{"ipam":{"type":"dhcp"}}`, `{"ipam":{"type":"whereabouts","range":"10.0.0.0/24"}}`} {
		if p, err := PoolFromConfig(config); p != nil || err != nil {
			t.Errorf("PoolFromConfig(%s) = %v, %v; want no pool (the IPAM cannot be asked for an address)", config, p, err)
		}
	}
	for config, want := range map[string]string{
		`{`: "not JSON",
		`{"ipam":{"type":"host-local","subnet":"10.0.0.0/24","rangeStart":"10.0.1.5"}}`:                       "not in subnet",
		`{"ipam":{"type":"host-local","subnet":"nonsense"}}`:                                                  "subnet",
		`{"ipam":{"type":"host-local","subnet":"10.0.0.0/24","rangeStart":"10.0.0.9","rangeEnd":"10.0.0.8"}}`: "empty",
	} {
		if _, err := PoolFromConfig(config); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("PoolFromConfig(%s) = %v, want an error with %q", config, err, want)
		}
	}
}

func TestParseAddress(t *testing.T) {
	p, err := PoolFromConfig(`{"ipam":{"type":"host-local","subnet":"192.168.200.0/24"}}`)
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]string{"192.168.200.7": "192.168.200.7/24", "192.168.200.7/24": "192.168.200.7/24"} {
		a, recorded, err := p.ParseAddress(in)
		if err != nil || recorded != want || a != netip.MustParseAddr("192.168.200.7") {
			t.Errorf("ParseAddress(%s) = %s %s %v, want %s", in, a, recorded, err, want)
		}
	}
	for _, in := range []string{"192.168.200.7/16", "x"} {
		if _, _, err := p.ParseAddress(in); err == nil {
			t.Errorf("ParseAddress(%s): no error", in)
		}
	}
}

func TestClaims(t *testing.T) {
	c := NewClaims(time.Minute)
	now := time.Now()
	if !c.Claim("k", "a", now) {
		t.Fatal("a free key cannot be claimed")
	}
	if !c.Claim("k", "a", now) {
		t.Fatal("the owner cannot claim its own key again")
	}
	if c.Claim("k", "b", now) {
		t.Fatal("another owner got a held key")
	}
	if !c.Claim("k", "a", now) {
		t.Fatal("the owner lost its key to another's attempt")
	}
	if !c.Claim("k", "b", now.Add(2*time.Minute)) {
		t.Fatal("a lapsed claim still holds")
	}
}
