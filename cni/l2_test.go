package cni

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// TestL2Reachability attaches two pods to one network and has them talk
// TCP over it, per mode, with and without VLAN. With a VLAN, a third pod on
// another VLAN of the same network must not get through.
func TestL2Reachability(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		for _, vlan := range []int{0, 100} {
			t.Run(fmt.Sprintf("%s/vlan=%d", mode, vlan), func(t *testing.T) {
				if vlan != 0 && !vlanSupported(t, mode) {
					t.Skip(vlanKernelGap(mode))
				}
				n := newNode(t)
				dataDir := t.TempDir()
				attach := func(id string, vlan int) (ns.NetNS, net.IP) {
					pod := newNS(t)
					fields := modeFields(mode, vlan)
					fields["ipam"] = hostLocal(dataDir, "10.3.0.0/24")
					a := newAttachment(n, pod, id, "net1", conf("1.1.0", fields))
					ip, _ := guestIP(t, a.addOK(t))
					t.Cleanup(func() { _ = a.del() })
					return pod, ip
				}
				podA, ipA := attach("ctr-a", vlan)
				podB, _ := attach("ctr-b", vlan)
				if err := tcpExchange(podB, podA, ipA, 10*time.Second); err != nil {
					t.Fatalf("pod B to pod A (%s): %v", ipA, err)
				}
				if vlan != 0 {
					podC, _ := attach("ctr-c", vlan+1)
					if err := tcpExchange(podC, podA, ipA, time.Second); err == nil {
						t.Fatalf("pod C on VLAN %d reached pod A on VLAN %d", vlan+1, vlan)
					}
				}
			})
		}
	}
}

// tcpExchange listens on ip:0 in netns to, dials it from netns from and
// swaps a line each way, within timeout.
func tcpExchange(from, to ns.NetNS, ip net.IP, timeout time.Duration) error {
	var ln net.Listener
	err := to.Do(func(ns.NetNS) error {
		var err error
		ln, err = net.Listen("tcp4", net.JoinHostPort(ip.String(), "0"))
		return err
	})
	if err != nil {
		return err
	}
	defer ln.Close()
	served := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			served <- err
			return
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			served <- err
			return
		}
		_, err = c.Write([]byte("pong\n"))
		served <- err
	}()

	return from.Do(func(ns.NetNS) error {
		d := net.Dialer{Timeout: timeout}
		c, err := d.Dial("tcp4", ln.Addr().String())
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(timeout))
		if _, err := c.Write([]byte("ping\n")); err != nil {
			return err
		}
		buf := make([]byte, 5)
		if _, err := io.ReadFull(c, buf); err != nil {
			return err
		}
		if string(buf) != "pong\n" {
			return fmt.Errorf("got %q, want pong", buf)
		}
		return <-served
	})
}

// openTap attaches to tap name in netns n the way QEMU does, without a
// vnet header, and returns it as a file with working read deadlines.
func openTap(n ns.NetNS, name string) (*os.File, error) {
	var f *os.File
	err := n.Do(func(ns.NetNS) error {
		fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
		if err != nil {
			return err
		}
		ifr, err := unix.NewIfreq(name)
		if err != nil {
			unix.Close(fd)
			return err
		}
		ifr.SetUint16(unix.IFF_TAP | unix.IFF_NO_PI)
		if err := unix.IoctlIfreq(fd, unix.TUNSETIFF, ifr); err != nil {
			unix.Close(fd)
			return fmt.Errorf("TUNSETIFF %s: %w", name, err)
		}
		f = os.NewFile(uintptr(fd), name)
		return nil
	})
	return f, err
}

// arpRequest is a broadcast ARP who-has for target from (mac, ip).
func arpRequest(mac net.HardwareAddr, ip, target net.IP) []byte {
	var b bytes.Buffer
	b.Write(bytes.Repeat([]byte{0xff}, 6))
	b.Write(mac)
	_ = binary.Write(&b, binary.BigEndian, []uint16{0x0806, 1, 0x0800})
	b.Write([]byte{6, 4, 0, 1})
	b.Write(mac)
	b.Write(ip.To4())
	b.Write(make([]byte, 6))
	b.Write(target.To4())
	return b.Bytes()
}

// guestARP plays the guest on tap: it asks for target's MAC until a reply
// for (mac, ip) arrives, and returns target's MAC.
func guestARP(tap *os.File, mac net.HardwareAddr, ip, target net.IP, timeout time.Duration) (net.HardwareAddr, error) {
	deadline := time.Now().Add(timeout)
	req := arpRequest(mac, ip, target)
	buf := make([]byte, 2048)
	for time.Now().Before(deadline) {
		if _, err := tap.Write(req); err != nil {
			return nil, fmt.Errorf("writing to tap: %w", err)
		}
		_ = tap.SetReadDeadline(minTime(deadline, time.Now().Add(300*time.Millisecond)))
		for {
			n, err := tap.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return nil, fmt.Errorf("reading from tap: %w", err)
			}
			f := buf[:n]
			// Ethernet(14) + ARP(28): a reply (op 2) from target to us.
			if n >= 42 && binary.BigEndian.Uint16(f[12:]) == 0x0806 && binary.BigEndian.Uint16(f[20:]) == 2 &&
				net.IP(f[28:32]).Equal(target) && bytes.Equal(f[0:6], mac) && bytes.Equal(f[32:38], mac) {
				return net.HardwareAddr(bytes.Clone(f[22:28])), nil
			}
		}
	}
	return nil, fmt.Errorf("no ARP reply from %s within %s", target, timeout)
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
