package converter

import (
	"fmt"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// convertGraphics adds VNC on a unix socket (never a TCP port in the pod)
// with a VGA device when the VMI asks for it, and otherwise no display at
// all.
func convertGraphics(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	if vnc := vmi.Spec.Domain.Devices.VNC; vnc == nil || !*vnc {
		dom.Devices.Videos = append(dom.Devices.Videos, libvirtxml.DomainVideo{Model: libvirtxml.DomainVideoModel{Type: "none"}})
		return nil
	}
	if opts.VNCSocket == "" {
		return fmt.Errorf("vnc needs a socket path")
	}
	dom.Devices.Graphics = append(dom.Devices.Graphics, libvirtxml.DomainGraphic{VNC: &libvirtxml.DomainGraphicVNC{
		Listeners: []libvirtxml.DomainGraphicListener{{Socket: &libvirtxml.DomainGraphicListenerSocket{Socket: opts.VNCSocket}}},
	}})
	dom.Devices.Videos = append(dom.Devices.Videos, libvirtxml.DomainVideo{Model: libvirtxml.DomainVideoModel{Type: "vga"}})
	return nil
}
