package converter

import (
	"fmt"
	"path/filepath"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// Debian's ovmf package.
const (
	DefaultOVMFCode = "/usr/share/OVMF/OVMF_CODE_4M.fd"
	DefaultOVMFVars = "/usr/share/OVMF/OVMF_VARS_4M.fd"
)

// DefaultMachine is the machine type when the VMI names none: q35 boots
// faster than pc under libvirt and has PCIe.
const DefaultMachine = "q35"

// convertFirmware sets the machine, the firmware (SeaBIOS or OVMF) or a
// direct kernel boot, and the SMBIOS serial.
func convertFirmware(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	machine := DefaultMachine
	if m := vmi.Spec.Domain.Machine; m != nil && m.Type != "" {
		machine = m.Type
	}
	dom.OS = &libvirtxml.DomainOS{Type: &libvirtxml.DomainOSType{Arch: "x86_64", Machine: machine, Type: "hvm"}}
	fw := vmi.Spec.Domain.Firmware
	if fw == nil {
		return nil
	}
	switch fw.Bootloader {
	case "", v1.BootloaderBIOS:
	case v1.BootloaderUEFI:
		code, vars := opts.OVMFCode, opts.OVMFVars
		if code == "" {
			code = DefaultOVMFCode
		}
		if vars == "" {
			vars = DefaultOVMFVars
		}
		if opts.NVRAMDir == "" {
			return fmt.Errorf("uefi needs a directory for the VM's NVRAM")
		}
		dom.OS.Loader = &libvirtxml.DomainLoader{Path: code, Readonly: "yes", Secure: "no", Type: "pflash"}
		dom.OS.NVRam = &libvirtxml.DomainNVRam{NVRam: filepath.Join(opts.NVRAMDir, dom.Name+"_VARS.fd"), Template: vars}
	default:
		return fmt.Errorf("bootloader %q: must be %q or %q", fw.Bootloader, v1.BootloaderBIOS, v1.BootloaderUEFI)
	}
	if kb := fw.KernelBoot; kb != nil {
		if kb.KernelPath == "" {
			return fmt.Errorf("kernelBoot needs kernelPath")
		}
		dom.OS.Kernel = kb.KernelPath
		dom.OS.Initrd = kb.InitrdPath
		dom.OS.Cmdline = kb.Cmdline
	}
	if fw.Serial != "" {
		dom.OS.SMBios = &libvirtxml.DomainSMBios{Mode: "sysinfo"}
		dom.SysInfo = append(dom.SysInfo, libvirtxml.DomainSysInfo{SMBIOS: &libvirtxml.DomainSysInfoSMBIOS{
			System: &libvirtxml.DomainSysInfoSystem{Entry: []libvirtxml.DomainSysInfoEntry{{Name: "serial", Value: fw.Serial}}},
		}})
	}
	return nil
}
