package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertConsole(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "console-log", mutate: func(_ *v1.VirtualMachineInstance, o *Options) { o.ConsoleLog = "/var/run/podvirt/private/console.log" }},
		{name: "console-off", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.Devices.AutoattachSerialConsole = ptr(false)
		}},
	})
}
