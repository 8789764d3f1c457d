package converter

import (
	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// convertConsole gives the guest a serial console on a pty (the launcher
// streams it) and, when asked, a copy in a log file. append='on' keeps a
// restarted or migrated domain from truncating the log.
func convertConsole(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	if !vmi.Spec.Domain.Devices.SerialConsole() {
		return nil
	}
	port := uint(0)
	serial := libvirtxml.DomainSerial{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainSerialTarget{Type: "isa-serial", Port: &port},
		Alias:  &libvirtxml.DomainAlias{Name: "serial0"},
	}
	if opts.ConsoleLog != "" {
		serial.Log = &libvirtxml.DomainChardevLog{File: opts.ConsoleLog, Append: "on"}
	}
	dom.Devices.Serials = append(dom.Devices.Serials, serial)
	dom.Devices.Consoles = append(dom.Devices.Consoles, libvirtxml.DomainConsole{
		Source: &libvirtxml.DomainChardevSource{Pty: &libvirtxml.DomainChardevSourcePty{}},
		Target: &libvirtxml.DomainConsoleTarget{Type: "serial", Port: &port},
	})
	return nil
}
