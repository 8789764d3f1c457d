package converter

import (
	"fmt"
	"time"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// MemBalloonStatsPeriod is how often the guest's balloon driver reports
// its memory; KubeVirt's default.
const MemBalloonStatsPeriod = 10 * time.Second

// convertMemory gives the guest spec.domain.memory.guest, in KiB, and a
// virtio balloon that reports how much of it the guest uses (never resized:
// podvirt does not overcommit by ballooning).
func convertMemory(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, _ Options) error {
	q := vmi.Spec.Domain.Memory.Guest
	b := q.Value()
	if b <= 0 {
		return fmt.Errorf("guest memory %s: must be positive", q.String())
	}
	kib := uint((b + 1023) / 1024)
	dom.Memory = &libvirtxml.DomainMemory{Value: kib, Unit: "KiB"}
	dom.CurrentMemory = &libvirtxml.DomainCurrentMemory{Value: kib, Unit: "KiB"}
	dom.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "none"}
	if vmi.Spec.Domain.Devices.MemBalloon() {
		dom.Devices.MemBalloon = &libvirtxml.DomainMemBalloon{Model: "virtio", Stats: &libvirtxml.DomainMemBalloonStats{Period: uint(MemBalloonStatsPeriod / time.Second)}}
	}
	return nil
}
