package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestConvertInterfaces(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "interfaces", mutate: func(v *v1.VirtualMachineInstance, o *Options) {
			v.Spec.Networks = []v1.Network{
				{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}},
				{Name: "l2", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "l2-bridge"}}},
				{Name: "l2b", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "l2-macvlan"}}},
			}
			v.Spec.Domain.Devices.Interfaces = []v1.Interface{
				{Name: "default"},
				{Name: "l2", MACAddress: "02:00:00:00:00:01", Model: v1.InterfaceModelE1000E},
				{Name: "l2b"},
			}
			o.UserNetBackend = "passt"
			o.Taps = map[string]Tap{"l2b": {Dev: "tapnet2", MAC: "02:aa:bb:cc:dd:ee"}}
		}},
	})
}

func TestConvertInterfaceMACConflict(t *testing.T) {
	vmi := baseVMI()
	vmi.Spec.Networks = []v1.Network{{Name: "l2", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "n"}}}}
	vmi.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "l2", MACAddress: "02:00:00:00:00:01"}}
	_, err := Convert(vmi, Options{DomainType: DomainQEMU, Taps: map[string]Tap{"l2": {Dev: "tap0", MAC: "02:00:00:00:00:02"}}})
	if err == nil {
		t.Fatal("a MAC the network did not give was accepted")
	}
}
