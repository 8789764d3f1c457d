package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertGraphics(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "graphics-vnc", mutate: func(v *v1.VirtualMachineInstance, o *Options) {
			v.Spec.Domain.Devices.VNC = ptr(true)
			o.VNCSocket = "/var/run/podvirt/private/vnc.sock"
		}},
	})
}
