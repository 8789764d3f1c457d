package launcher

import (
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/dhcp"
	"github.com/podvirt/podvirt/runtime/network"
)

// nicServer is one NIC given to ServeDHCP and its DHCP server (nil for
// a NIC without a lease).
type nicServer struct {
	nic    network.GuestNIC
	server *dhcp.Server
}

// Interfaces returns the pod network NIC, then the guest NICs passed to
// ServeDHCP, in order.
func (l *Launcher) Interfaces() []cmdserver.Interface {
	l.dhcp.mu.Lock()
	defer l.dhcp.mu.Unlock()
	out := make([]cmdserver.Interface, 0, len(l.dhcp.nics)+1)
	if l.podNIC != nil {
		out = append(out, *l.podNIC)
	}
	for _, ns := range l.dhcp.nics {
		i := cmdserver.Interface{Network: ns.nic.Network, MAC: ns.nic.MAC}
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
