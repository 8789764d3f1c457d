package converter

import (
	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// convertCPU sets vCPUs, topology and model. Without a model, kvm passes
// the host CPU through and TCG emulates qemu64, which TCG runs fastest.
func convertCPU(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	c := vmi.Spec.Domain.CPU
	dom.VCPU = &libvirtxml.DomainVCPU{Placement: "static", Value: uint(c.VCPUs())}
	cpu := &libvirtxml.DomainCPU{}
	model := ""
	if c != nil {
		model = c.Model
	}
	switch {
	case model == "host-passthrough" || (model == "" && opts.DomainType == DomainKVM):
		cpu.Mode = "host-passthrough"
	case model == "host-model":
		cpu.Mode = "host-model"
	case model == "max" || model == "maximum":
		cpu.Mode = "maximum"
	case model == "":
		cpu.Mode = "custom"
		cpu.Match = "exact"
		cpu.Model = &libvirtxml.DomainCPUModel{Value: "qemu64", Fallback: "allow"}
	default:
		cpu.Mode = "custom"
		cpu.Match = "exact"
		cpu.Model = &libvirtxml.DomainCPUModel{Value: model, Fallback: "forbid"}
	}
	if c != nil && (c.Sockets != 0 || c.Cores != 0 || c.Threads != 0) {
		one := func(v uint32) int {
			if v == 0 {
				return 1
			}
			return int(v)
		}
		cpu.Topology = &libvirtxml.DomainCPUTopology{Sockets: one(c.Sockets), Dies: 1, Cores: one(c.Cores), Threads: one(c.Threads)}
	}
	dom.CPU = cpu
	return nil
}
