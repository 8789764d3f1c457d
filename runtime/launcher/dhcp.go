package launcher

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"

	"github.com/podvirt/podvirt/runtime/dhcp"
	"github.com/podvirt/podvirt/runtime/network"
)

// dhcpServers are the launcher's DHCP servers, one per tap NIC with a lease.
type dhcpServers struct {
	mu      sync.Mutex
	servers []*dhcp.Server
	nics    []nicServer // every NIC ServeDHCP was given, for Interfaces
	wg      sync.WaitGroup
	stopped bool
}

// ServeDHCP starts serving each NIC's lease on its tap, in the NIC's
// NetNS (empty: the launcher's own netns, as in a launcher pod). Call it
// before Start, so the guest's first DISCOVER finds the server. The
// servers stop when the domain ends, or at Close. NICs without a lease
// (L2-only networks) are skipped. On error no server is left running.
func (l *Launcher) ServeDHCP(nics []network.GuestNIC) error {
	var started []*dhcp.Server
	var served []nicServer
	for _, nic := range nics {
		if nic.Lease == nil {
			served = append(served, nicServer{nic: nic})
			continue
		}
		s, err := dhcp.Listen(dhcp.Config{
			Interface: nic.Tap,
			NetNS:     nic.NetNS,
			Lease:     *nic.Lease,
			Log:       slog.Default().With("domain", l.name, "network", nic.Network),
		})
		if err != nil {
			for _, s := range started {
				_ = s.Close()
			}
			return fmt.Errorf("domain %s: DHCP for network %q: %w", l.name, nic.Network, err)
		}
		started = append(started, s)
		served = append(served, nicServer{nic: nic, server: s})
	}
	d := &l.dhcp
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stopped {
		for _, s := range started {
			_ = s.Close()
		}
		return fmt.Errorf("domain %s: DHCP: launcher closed", l.name)
	}
	d.nics = append(d.nics, served...)
	for _, s := range started {
		d.servers = append(d.servers, s)
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			if err := s.Serve(); err != nil {
				slog.Error("DHCP server stopped", "domain", l.name, "err", err)
			}
		}()
	}
	if len(started) > 0 {
		go func() {
			<-l.done
			_ = l.stopDHCP()
		}()
	}
	return nil
}

// DHCPReplies sums the replies every DHCP server sent, by type.
func (l *Launcher) DHCPReplies() map[dhcp.MessageType]int {
	l.dhcp.mu.Lock()
	defer l.dhcp.mu.Unlock()
	out := map[dhcp.MessageType]int{}
	for _, s := range l.dhcp.servers {
		for k, v := range s.Replies() {
			out[k] += v
		}
	}
	return out
}

// DHCPRunning reports whether any DHCP server is still serving.
func (l *Launcher) DHCPRunning() bool {
	l.dhcp.mu.Lock()
	defer l.dhcp.mu.Unlock()
	return !l.dhcp.stopped && len(l.dhcp.servers) > 0
}

// stopDHCP closes every DHCP server and waits for them; later ServeDHCP
// calls fail.
func (l *Launcher) stopDHCP() error {
	d := &l.dhcp
	d.mu.Lock()
	var errs []error
	if !d.stopped {
		d.stopped = true
		for _, s := range d.servers {
			errs = append(errs, s.Close())
		}
	}
	d.mu.Unlock()
	d.wg.Wait()
	return errors.Join(errs...)
}
