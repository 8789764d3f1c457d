package converter

import (
	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// GuestAgentChannel is the virtio-serial port QEMU's guest agent listens
// on; libvirt talks to the agent through it (exec probes, fsfreeze).
const GuestAgentChannel = "org.qemu.guest_agent.0"

// convertGuestAgent gives every guest the agent's channel, as KubeVirt
// does: it costs a virtio-serial port, and a guest that runs no agent
// simply never answers on it. libvirt picks the socket's path.
func convertGuestAgent(dom *libvirtxml.Domain, _ *v1.VirtualMachineInstance, _ Options) error {
	dom.Devices.Channels = append(dom.Devices.Channels, libvirtxml.DomainChannel{
		Source: &libvirtxml.DomainChardevSource{UNIX: &libvirtxml.DomainChardevSourceUNIX{Mode: "bind"}},
		Target: &libvirtxml.DomainChannelTarget{VirtIO: &libvirtxml.DomainChannelTargetVirtIO{Name: GuestAgentChannel}},
	})
	return nil
}
