package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertFirmware(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "firmware-uefi", mutate: func(v *v1.VirtualMachineInstance, o *Options) {
			v.Spec.Domain.Firmware = &v1.Firmware{Bootloader: v1.BootloaderUEFI, Serial: "SN-1"}
			o.NVRAMDir = "/var/run/podvirt/private/nvram"
		}},
		{name: "firmware-kernelboot", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.Machine = &v1.Machine{Type: "pc"}
			v.Spec.Domain.Firmware = &v1.Firmware{KernelBoot: &v1.KernelBoot{KernelPath: "/boot/vmlinuz", InitrdPath: "/boot/initrd", Cmdline: "console=ttyS0"}}
		}},
	})
}
