package converter

import (
	"fmt"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// convertMemory gives the guest spec.domain.memory.guest, in KiB.
func convertMemory(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, _ Options) error {
	q := vmi.Spec.Domain.Memory.Guest
	b := q.Value()
	if b <= 0 {
		return fmt.Errorf("guest memory %s: must be positive", q.String())
	}
	kib := uint((b + 1023) / 1024)
	dom.Memory = &libvirtxml.DomainMemory{Value: kib, Unit: "KiB"}
	dom.CurrentMemory = &libvirtxml.DomainCurrentMemory{Value: kib, Unit: "KiB"}
	return nil
}
