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
			o.PasstSocket = "/var/run/podvirt/private/passt.sock"
			o.Taps = map[string]Tap{"l2b": {Dev: "tapnet2", MAC: "02:aa:bb:cc:dd:ee"}}
		}},
		{name: "interfaces-slirp", mutate: func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Networks = []v1.Network{{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
			v.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "default", Ports: []v1.Port{{Port: 80}}}}
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

func TestPasstPorts(t *testing.T) {
	for _, c := range []struct {
		ports    []v1.Port
		tcp, udp string
	}{
		{nil, "all", "all"},
		{[]v1.Port{{Name: "http", Port: 80}, {Name: "dns", Protocol: "UDP", Port: 53}, {Port: 22, Protocol: "TCP"}}, "80,22", "53"},
		{[]v1.Port{{Port: 5353, Protocol: "UDP"}}, "none", "5353"},
	} {
		if tcp, udp := PasstPorts(c.ports); tcp != c.tcp || udp != c.udp {
			t.Errorf("PasstPorts(%+v) = %q, %q; want %q, %q", c.ports, tcp, udp, c.tcp, c.udp)
		}
	}
}
