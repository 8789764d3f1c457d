package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertCPU(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "cpu-topology", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.CPU = &v1.CPU{Sockets: 1, Cores: 2, Threads: 2}
		}},
		{name: "cpu-model", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.CPU = &v1.CPU{Model: "Skylake-Server"}
		}},
		{name: "cpu-maximum", mutate: func(v *v1.VirtualMachineInstance, _ *Options) { v.Spec.Domain.CPU = &v1.CPU{Model: "max"} }},
	})
}
