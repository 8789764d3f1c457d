package converter

import (
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertMemory(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "memory-1500M", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.Memory.Guest = resource.MustParse("1500M") // not a whole number of KiB... rounded up
		}},
		{name: "memory-no-balloon", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			off := false
			v.Spec.Domain.Devices.AutoattachMemBalloon = &off
		}},
	})
}
