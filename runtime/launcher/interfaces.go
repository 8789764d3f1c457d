package launcher

import (
	"net"
	"net/netip"

	"github.com/podvirt/podvirt/runtime/dhcp"
	"github.com/podvirt/podvirt/runtime/network"
)

// nicServer is one NIC given to ServeDHCP and its DHCP server (nil for
// a NIC without a lease).
type nicServer struct {
	nic    network.GuestNIC
	server *dhcp.Server
}

// Interface is one guest NIC as the launcher knows it from its DHCP
// leases.
type Interface struct {
	// Network is the VMI network (and interface) name.
	Network string
	// Tap is the tap the NIC is plugged into.
	Tap string
	// MAC is the guest's MAC.
	MAC net.HardwareAddr
	// Addr is the address the lease gives the guest; invalid for an
	// L2-only network (no lease: the guest brings its own).
	Addr netip.Prefix
	// Acked is whether the launcher's DHCP server has acknowledged the
	// lease to the guest at least once.
	Acked bool
}

// Interfaces returns the guest NICs passed to ServeDHCP, in order.
func (l *Launcher) Interfaces() []Interface {
	l.dhcp.mu.Lock()
	defer l.dhcp.mu.Unlock()
	out := make([]Interface, 0, len(l.dhcp.nics))
	for _, ns := range l.dhcp.nics {
		i := Interface{Network: ns.nic.Network, Tap: ns.nic.Tap, MAC: ns.nic.MAC}
		if ns.nic.Lease != nil {
			i.Addr = ns.nic.Lease.Addr
		}
		if ns.server != nil {
			i.Acked = ns.server.Replies()[dhcp.Ack] > 0
		}
		out = append(out, i)
	}
	return out
}
