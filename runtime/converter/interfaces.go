package converter

import (
	"fmt"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// Tap is the CNI-made tap of a tap-bound interface and the MAC the guest
// must use on it (the CNI result's; in macvlan mode, the macvlan's).
type Tap struct {
	Dev string
	MAC string
}

// convertInterfaces adds one NIC per VMI interface: a pod network NIC
// through user-mode networking (passt or slirp), a Multus network NIC
// through the unmanaged tap the CNI plugin built in the pod.
func convertInterfaces(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	nets := map[string]*v1.Network{}
	for i := range vmi.Spec.Networks {
		nets[vmi.Spec.Networks[i].Name] = &vmi.Spec.Networks[i]
	}
	for _, ifc := range vmi.Spec.Domain.Devices.Interfaces {
		n := nets[ifc.Name]
		if n == nil {
			return fmt.Errorf("interface %q has no network of that name", ifc.Name)
		}
		binding := ifc.Binding
		if binding == "" {
			binding = v1.InterfaceBindingTap
			if n.Pod != nil {
				binding = v1.InterfaceBindingUser
			}
		}
		model := ifc.Model
		if model == "" {
			model = v1.InterfaceModelVirtio
		}
		li := libvirtxml.DomainInterface{
			Model: &libvirtxml.DomainInterfaceModel{Type: string(model)},
			Alias: &libvirtxml.DomainAlias{Name: "ua-" + ifc.Name},
		}
		mac := ifc.MACAddress
		switch binding {
		case v1.InterfaceBindingUser:
			li.Source = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
			if opts.UserNetBackend != "" {
				li.Backend = &libvirtxml.DomainInterfaceBackend{Type: opts.UserNetBackend}
			}
		case v1.InterfaceBindingTap:
			tap, ok := opts.Taps[ifc.Name]
			if !ok {
				tap = Tap{Dev: podlink.TapForNetwork(ifc.Name)}
			}
			if tap.MAC != "" {
				if mac != "" && mac != tap.MAC {
					return fmt.Errorf("interface %q: MAC %s asked for, but the network gave the guest %s", ifc.Name, mac, tap.MAC)
				}
				mac = tap.MAC
			}
			li.Source = &libvirtxml.DomainInterfaceSource{Ethernet: &libvirtxml.DomainInterfaceSourceEthernet{}}
			li.Target = &libvirtxml.DomainInterfaceTarget{Dev: tap.Dev, Managed: "no"}
		default:
			return fmt.Errorf("interface %q: binding %q: must be %q or %q", ifc.Name, binding, v1.InterfaceBindingUser, v1.InterfaceBindingTap)
		}
		if mac != "" {
			li.MAC = &libvirtxml.DomainInterfaceMAC{Address: mac}
		}
		dom.Devices.Interfaces = append(dom.Devices.Interfaces, li)
	}
	return nil
}
