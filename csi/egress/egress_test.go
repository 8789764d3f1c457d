package egress

import (
	"context"
	"errors"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"
)

var cluster = Policy{
	PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
	ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
}

func TestCheck(t *testing.T) {
	for _, tc := range []struct {
		addr         string
		allowPrivate bool
		reason       string // empty: allowed
	}{
		{"169.254.169.254:80", false, ReasonLinkLocal},
		{"169.254.169.254:80", true, ReasonLinkLocal},
		{"[fe80::1]:80", true, ReasonLinkLocal},
		{"[fd00:ec2::254]:80", true, ReasonMetadata},
		{"100.100.100.200:80", true, ReasonMetadata},
		{"[ff02::1]:80", false, ReasonMulticast},
		{"127.0.0.1:5000", false, ReasonLoopback},
		{"127.0.0.1:5000", true, ""},
		{"[::1]:5000", false, ReasonLoopback},
		{"[::ffff:127.0.0.1]:5000", false, ReasonLoopback},
		{"0.0.0.0:80", true, ReasonUnspecified},
		{"[::]:80", false, ReasonUnspecified},
		{"224.0.0.1:80", true, ReasonMulticast},
		{"10.244.3.7:5000", false, ReasonPodCIDR + " 10.244.0.0/16"},
		{"10.244.3.7:5000", true, ""},
		{"10.96.0.10:443", false, ReasonServiceCIDR + " 10.96.0.0/12"},
		{"10.250.0.1:5000", false, ""}, // a node address, as the demo's mirrors
		{"151.101.1.1:443", false, ""},
	} {
		p := cluster
		p.AllowPrivate = tc.allowPrivate
		err := p.Check(netip.MustParseAddrPort(tc.addr))
		if tc.reason == "" {
			if err != nil {
				t.Errorf("%s (allowPrivate %v): %v; want it allowed", tc.addr, tc.allowPrivate, err)
			}
			continue
		}
		var re *RefusedError
		if !errors.As(err, &re) || re.Reason != tc.reason {
			t.Errorf("%s (allowPrivate %v): %v; want refused: %s", tc.addr, tc.allowPrivate, err, tc.reason)
			continue
		}
		if !strings.Contains(err.Error(), tc.reason) || !strings.Contains(err.Error(), re.Addr.String()) {
			t.Errorf("%s: message %q names neither the address nor the reason", tc.addr, err)
		}
	}
}

// TestDialResolvedName: the check applies to what a name resolves to.
func TestDialResolvedName(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	_, port, _ := net.SplitHostPort(lis.Addr().String())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = cluster.DialContext(time.Second, 0)(ctx, "tcp4", net.JoinHostPort("localhost", port))
	var re *RefusedError
	if !errors.As(err, &re) || re.Reason != ReasonLoopback {
		t.Fatalf("dial localhost:%s = %v; want refused as %s", port, err, ReasonLoopback)
	}
	allowed := cluster
	allowed.AllowPrivate = true
	c, err := allowed.DialContext(time.Second, 0)(ctx, "tcp4", net.JoinHostPort("localhost", port))
	if err != nil {
		t.Fatalf("dial localhost:%s with AllowPrivate: %v", port, err)
	}
	c.Close()
}

func TestParseCIDRs(t *testing.T) {
	got, err := ParseCIDRs(" 10.244.0.0/16, 10.96.0.1/12,,fd00::/8")
	if err != nil || len(got) != 3 || got[1].String() != "10.96.0.0/12" {
		t.Fatalf("ParseCIDRs = %v, %v", got, err)
	}
	if _, err := ParseCIDRs("10.244.0.0"); err == nil || !strings.Contains(err.Error(), "10.244.0.0") {
		t.Fatalf("ParseCIDRs(no mask) = %v; want an error naming it", err)
	}
}
