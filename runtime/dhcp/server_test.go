package dhcp

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/test/harness/netnstest"
)

// link is a veth pair srv0 (in the server's netns) – cli0 (in the
// client's), both up; it returns cli0's MAC.
func link(t *testing.T, srv, cli ns.NetNS) net.HardwareAddr {
	t.Helper()
	var mac net.HardwareAddr
	err := srv.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "srv0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "cli0", PeerNamespace: netlink.NsFd(int(cli.Fd()))}); err != nil {
			return err
		}
		l, err := netlinksafe.LinkByName("srv0")
		if err != nil {
			return err
		}
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	err = cli.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("cli0")
		if err != nil {
			return err
		}
		mac = l.Attrs().HardwareAddr
		return netlink.LinkSetUp(l)
	})
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// udhcpc runs busybox's DHCP client on cli0 in netns cli until it has a
// lease (or gives up after tries DISCOVERs) and returns the environment
// its script saw on "bound".
func udhcpc(t *testing.T, cli ns.NetNS, tries int) (map[string]string, error) {
	t.Helper()
	bb, err := exec.LookPath("busybox")
	if err != nil {
		t.Fatal("busybox (Debian package busybox-static) not found: run `make deps`")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "bound.env")
	script := filepath.Join(dir, "script")
	if err := os.WriteFile(script, []byte("#!/bin/sh\n[ \"$1\" = bound ] && env > "+out+"\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bb, "udhcpc", "-f", "-q", "-n", "-i", "cli0", "-s", script, "-t", strconv.Itoa(tries), "-T", "1", "-A", "1")
	var output strings.Builder
	cmd.Stdout, cmd.Stderr = &output, &output
	// The child is forked from a thread in the client's netns.
	if err := cli.Do(func(ns.NetNS) error { return cmd.Start() }); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		return nil, &exec.ExitError{ProcessState: cmd.ProcessState, Stderr: []byte(output.String())}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatalf("udhcpc exited 0 but its script never ran bound: %v\n%s", err, output.String())
	}
	env := map[string]string{}
	for _, line := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(line, "="); ok {
			env[k] = v
		}
	}
	return env, nil
}

func serve(t *testing.T, cfg Config) *Server {
	t.Helper()
	s, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		_ = s.Close()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Serve did not return after Close")
		}
	})
	return s
}

// TestServeUdhcpc serves a lease over a veth pair between two netns to
// busybox udhcpc, the client the test guest runs.
func TestServeUdhcpc(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: creates network namespaces and links; run the tests as root")
	}
	t.Run("lease", func(t *testing.T) {
		srv, cli := netnstest.New(t), netnstest.New(t)
		lease := *testLease()
		lease.MAC = link(t, srv, cli)
		lease.Hostname = "vm-a"
		// The server is opened from the test's netns, in the server's.
		s := serve(t, Config{Interface: "srv0", NetNS: srv.Path(), Lease: lease})
		env, err := udhcpc(t, cli, 5)
		if err != nil {
			t.Fatalf("udhcpc got no lease: %v", err)
		}
		want := map[string]string{
			"ip":           "10.4.0.7",
			"mask":         "24",
			"subnet":       "255.255.255.0",
			"broadcast":    "10.4.0.255",
			"router":       "10.4.0.1",
			"dns":          "10.4.0.53 10.4.0.54",
			"domain":       "example.com",
			"search":       "example.com",
			"hostname":     "vm-a",
			"mtu":          "1400",
			"serverid":     "169.254.75.10",
			"staticroutes": "0.0.0.0/0 10.4.0.1 192.168.0.0/16 10.4.0.254",
		}
		for k, v := range want {
			if got := env[k]; got != v {
				t.Errorf("udhcpc's $%s = %q, want %q", k, got, v)
			}
		}
		if r := s.Replies(); r[Offer] < 1 || r[Ack] != 1 || r[Nak] != 0 {
			t.Errorf("replies %v, want ≥1 OFFER, 1 ACK", r)
		}
	})
	// On a bridge port (bridge mode's tap) and behind a tc ingress
	// redirect (macvlan mode's tap) the kernel takes frames before
	// protocol-specific packet sockets see them; the server must still.
	t.Run("bridge-port", func(t *testing.T) {
		srv, cli := netnstest.New(t), netnstest.New(t)
		lease := *testLease()
		lease.MAC = link(t, srv, cli)
		err := srv.Do(func(ns.NetNS) error {
			attrs := netlink.NewLinkAttrs()
			attrs.Name = "br0"
			br := &netlink.Bridge{LinkAttrs: attrs}
			if err := netlink.LinkAdd(br); err != nil {
				return err
			}
			port, err := netlinksafe.LinkByName("srv0")
			if err != nil {
				return err
			}
			if err := netlink.LinkSetMaster(port, br); err != nil {
				return err
			}
			return netlink.LinkSetUp(br)
		})
		if err != nil {
			t.Fatal(err)
		}
		s := serve(t, Config{Interface: "srv0", NetNS: srv.Path(), Lease: lease})
		env, err := udhcpc(t, cli, 5)
		if err != nil {
			t.Fatalf("udhcpc behind a bridge port got no lease: %v", err)
		}
		if env["ip"] != "10.4.0.7" {
			t.Errorf("udhcpc got %q", env["ip"])
		}
		if r := s.Replies(); r[Ack] != 1 {
			t.Errorf("replies %v", r)
		}
	})
	t.Run("other-mac", func(t *testing.T) {
		srv, cli := netnstest.New(t), netnstest.New(t)
		link(t, srv, cli)
		lease := *testLease() // for guestMAC, not cli0's
		s := serve(t, Config{Interface: "srv0", NetNS: srv.Path(), Lease: lease})
		if env, err := udhcpc(t, cli, 3); err == nil {
			t.Fatalf("a client with another MAC got a lease: %v", env)
		}
		if r := s.Replies(); len(r) != 0 {
			t.Errorf("replies %v to another MAC", r)
		}
	})
	t.Run("missing-interface", func(t *testing.T) {
		srv := netnstest.New(t)
		if _, err := Listen(Config{Interface: "nope0", NetNS: srv.Path(), Lease: *testLease()}); err == nil {
			t.Fatal("listening on a missing interface worked")
		}
	})
}
