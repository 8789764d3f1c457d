package converter

import (
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"

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
			if opts.PasstSocket != "" {
				passtInterface(dom, ifc.Name, model, mac, opts.PasstSocket)
				continue
			}
			li.Source = &libvirtxml.DomainInterfaceSource{User: &libvirtxml.DomainInterfaceSourceUser{}}
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

// passtInterface adds the pod network's NIC as a QEMU stream netdev on the
// passt process's socket. libvirt 9.0 (Debian 12) refuses its own passt
// backend (<backend type='passt'/> does not parse), so the launcher runs
// passt and the NIC is given to QEMU directly; libvirt does not see it.
func passtInterface(dom *libvirtxml.Domain, name string, model v1.InterfaceModel, mac, socket string) {
	netdev := "hostua-" + name
	// An address libvirt does not hand out (it fills slots from 1 up, and
	// q35's 0x1f holds the LPC bridge), since it places its own devices
	// without knowing of this one.
	bus := "pci.0"
	if dom.OS != nil && dom.OS.Type != nil && strings.Contains(dom.OS.Type.Machine, "q35") {
		bus = "pcie.0"
	}
	device := passtDevice[model] + ",netdev=" + netdev + ",id=ua-" + name + ",bus=" + bus + ",addr=" + passtSlot
	if mac != "" {
		device += ",mac=" + mac
	}
	if dom.QEMUCommandline == nil {
		dom.QEMUCommandline = &libvirtxml.DomainQEMUCommandline{}
	}
	dom.QEMUCommandline.Args = append(dom.QEMUCommandline.Args,
		libvirtxml.DomainQEMUCommandlineArg{Value: "-netdev"},
		libvirtxml.DomainQEMUCommandlineArg{Value: "stream,id=" + netdev + ",server=off,addr.type=unix,addr.path=" + socket},
		libvirtxml.DomainQEMUCommandlineArg{Value: "-device"},
		libvirtxml.DomainQEMUCommandlineArg{Value: device},
	)
}

// UserNetPasst is the program the launcher runs for the pod network.
const UserNetPasst = "passt"

// passtSlot is the PCI slot of the pod network NIC.
const passtSlot = "0x1e"

// passtDevice is QEMU's device for each NIC model.
var passtDevice = map[v1.InterfaceModel]string{
	v1.InterfaceModelVirtio:  "virtio-net-pci",
	v1.InterfaceModelE1000:   "e1000",
	v1.InterfaceModelE1000E:  "e1000e",
	v1.InterfaceModelRTL8139: "rtl8139",
}

// PasstPorts are passt's -t and -u arguments for the interface's ports:
// the listed ones, or every port when none is (as KubeVirt's masquerade
// binding forwards).
func PasstPorts(ports []v1.Port) (tcp, udp string) {
	if len(ports) == 0 {
		return "all", "all"
	}
	var t, u []string
	for _, p := range ports {
		n := strconv.Itoa(int(p.Port))
		if p.Protocol == corev1.ProtocolUDP {
			u = append(u, n)
		} else {
			t = append(t, n)
		}
	}
	tcp, udp = "none", "none"
	if len(t) > 0 {
		tcp = strings.Join(t, ",")
	}
	if len(u) > 0 {
		udp = strings.Join(u, ",")
	}
	return tcp, udp
}
