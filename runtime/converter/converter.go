// Package converter turns a VirtualMachineInstance into a libvirt domain.
// Each concern has its own file (cpu, memory, firmware, disks,
// interfaces, console, graphics, cloud-init) and its own golden test; the
// converter only reads the VMI and the Options the launcher resolved from
// the pod (disk paths and formats, taps, the cloud-init disk), so it never
// touches the host.
package converter

import (
	"fmt"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// Domain types.
const (
	DomainKVM  = "kvm"
	DomainQEMU = "qemu" // TCG
)

// DiskSource is where a volume's disk is in the pod and its declared
// format. The format is never probed: a guest-writable raw disk probed as
// qcow2 would let the guest read host files through a backing file.
type DiskSource struct {
	Path   string
	Format string // "raw" or "qcow2"
	Block  bool   // a block device rather than a file
}

// Options are what the launcher knows beyond the VMI.
type Options struct {
	// DomainType is kvm or qemu, as the caller decided (the launcher
	// probes KVM: runtime/launcher.DefaultDomainType).
	DomainType string
	// Disks maps volume name to its disk; volumes missing here get the
	// defaults of their source (see DefaultDiskSource).
	Disks map[string]DiskSource
	// CloudInitDisk is the path of the NoCloud ISO the launcher built for
	// the VMI's cloudInitNoCloud volume (BuildNoCloudISO).
	CloudInitDisk string
	// Taps maps interface name to the tap the CNI plugin made for it; an
	// interface with tap binding missing here uses podlink.TapForNetwork.
	Taps map[string]Tap
	// ConsoleLog, when set, receives a copy of the serial console.
	ConsoleLog string
	// PasstSocket, when set, is the unix socket of the passt process the
	// launcher started for the pod network: user binding goes through it
	// (forwarding the interface's ports), else through QEMU's slirp.
	PasstSocket string
	// OVMFCode and OVMFVars are the UEFI firmware and its variable store
	// template; empty means the Debian ovmf paths.
	OVMFCode, OVMFVars string
	// NVRAMDir holds the per-VM copy of the UEFI variables.
	NVRAMDir string
	// VNCSocket, when set and VNC is on, is the unix socket VNC listens on.
	VNCSocket string
}

// DomainName is the libvirt name of a VMI's domain.
func DomainName(vmi *v1.VirtualMachineInstance) string {
	return vmi.Namespace + "_" + vmi.Name
}

// Convert renders vmi as a libvirt domain.
func Convert(vmi *v1.VirtualMachineInstance, opts Options) (*libvirtxml.Domain, error) {
	if opts.DomainType != DomainKVM && opts.DomainType != DomainQEMU {
		return nil, fmt.Errorf("domain type %q: must be %q or %q", opts.DomainType, DomainKVM, DomainQEMU)
	}
	dom := &libvirtxml.Domain{
		Type:       opts.DomainType,
		Name:       DomainName(vmi),
		UUID:       string(vmi.UID),
		Devices:    &libvirtxml.DomainDeviceList{},
		OnPoweroff: "destroy",
		OnReboot:   "restart",
		OnCrash:    "destroy",
		Features: &libvirtxml.DomainFeatureList{
			ACPI: &libvirtxml.DomainFeature{},
			APIC: &libvirtxml.DomainFeatureAPIC{},
		},
	}
	steps := []struct {
		what string
		f    func(*libvirtxml.Domain, *v1.VirtualMachineInstance, Options) error
	}{
		{"cpu", convertCPU},
		{"memory", convertMemory},
		{"firmware", convertFirmware},
		{"disks", convertDisks},
		{"interfaces", convertInterfaces},
		{"console", convertConsole},
		{"guest agent", convertGuestAgent},
		{"graphics", convertGraphics},
	}
	for _, s := range steps {
		if err := s.f(dom, vmi, opts); err != nil {
			return nil, fmt.Errorf("vmi %s/%s: %s: %w", vmi.Namespace, vmi.Name, s.what, err)
		}
	}
	return dom, nil
}

// ConvertXML is Convert marshalled to the XML libvirt takes.
func ConvertXML(vmi *v1.VirtualMachineInstance, opts Options) (string, error) {
	dom, err := Convert(vmi, opts)
	if err != nil {
		return "", err
	}
	return dom.Marshal()
}
