package converter

import (
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func ptr[T any](v T) *T { return &v }

// baseVMI is a one-disk VMI; each case changes the concern it tests.
func baseVMI() *v1.VirtualMachineInstance {
	return &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "vm1", Namespace: "ns1", UID: "6f1c2a1e-0000-4000-8000-000000000001"},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory:  v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}},
			},
			Volumes: []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/guest:1"}}}},
		},
	}
}

// golden compares got with testdata/name.xml (rewritten with -update).
func golden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".xml")
	if *update {
		if err := os.WriteFile(path, []byte(got+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if strings.TrimSpace(string(want)) != strings.TrimSpace(got) {
		t.Fatalf("%s differs from the golden file; got:\n%s", path, got)
	}
}

type goldenCase struct {
	name   string
	mutate func(*v1.VirtualMachineInstance, *Options)
}

func runGolden(t *testing.T, cases []goldenCase) {
	t.Helper()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			vmi := baseVMI()
			opts := Options{DomainType: DomainQEMU}
			if c.mutate != nil {
				c.mutate(vmi, &opts)
			}
			got, err := ConvertXML(vmi, opts)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, c.name, got)
		})
	}
}

func TestConvertBase(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "base"},
		{name: "base-kvm", mutate: func(_ *v1.VirtualMachineInstance, o *Options) { o.DomainType = DomainKVM }},
	})
}

func TestConvertErrors(t *testing.T) {
	for name, mutate := range map[string]func(*v1.VirtualMachineInstance, *Options){
		"bad domain type": func(_ *v1.VirtualMachineInstance, o *Options) { o.DomainType = "xen" },
		"disk w/o volume": func(v *v1.VirtualMachineInstance, _ *Options) { v.Spec.Volumes = nil },
		"bad format": func(_ *v1.VirtualMachineInstance, o *Options) {
			o.Disks = map[string]DiskSource{"root": {Path: "/d", Format: "vmdk"}}
		},
		"no memory": func(v *v1.VirtualMachineInstance, _ *Options) { v.Spec.Domain.Memory.Guest = resource.Quantity{} },
		"uefi w/o nvram": func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.Firmware = &v1.Firmware{Bootloader: v1.BootloaderUEFI}
		},
		"iface w/o net": func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "x"}}
		},
		"vnc w/o socket": func(v *v1.VirtualMachineInstance, _ *Options) { v.Spec.Domain.Devices.VNC = ptr(true) },
		"cloud-init w/o disk": func(v *v1.VirtualMachineInstance, _ *Options) {
			v.Spec.Volumes = append(v.Spec.Volumes, v1.Volume{Name: "ci", VolumeSource: v1.VolumeSource{CloudInitNoCloud: &v1.CloudInitNoCloudSource{}}})
			v.Spec.Domain.Devices.Disks = append(v.Spec.Domain.Devices.Disks, v1.Disk{Name: "ci"})
		},
	} {
		t.Run(name, func(t *testing.T) {
			vmi := baseVMI()
			opts := Options{DomainType: DomainQEMU}
			mutate(vmi, &opts)
			if _, err := Convert(vmi, opts); err == nil {
				t.Fatal("no error")
			}
		})
	}
}
