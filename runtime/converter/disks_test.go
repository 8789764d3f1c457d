package converter

import (
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
)

func TestConvertDisks(t *testing.T) {
	runGolden(t, []goldenCase{
		{name: "disks-buses", mutate: func(v *v1.VirtualMachineInstance, o *Options) {
			v.Spec.Domain.Devices.Disks = []v1.Disk{
				{Name: "root", BootOrder: ptr(uint(1))},
				{Name: "data", Bus: v1.DiskBusSATA, Serial: "DATA1"},
				{Name: "scratch", Bus: v1.DiskBusSCSI},
				{Name: "ci"},
			}
			v.Spec.Volumes = append(v.Spec.Volumes,
				v1.Volume{Name: "data", VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: "data", ReadOnly: true}}},
				v1.Volume{Name: "scratch", VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: "scratch"}}},
				v1.Volume{Name: "ci", VolumeSource: v1.VolumeSource{CloudInitNoCloud: &v1.CloudInitNoCloudSource{UserData: "#!/bin/sh\n"}}},
			)
			o.CloudInitDisk = "/var/run/podvirt/private/cloud-init.iso"
			o.Disks = map[string]DiskSource{
				"root":    {Path: "/var/run/podvirt/private/root.qcow2", Format: diskmeta.FormatQCOW2},
				"scratch": {Path: "/dev/podvirt/scratch", Format: diskmeta.FormatRaw, Block: true},
			}
		}},
	})
}

func TestDiskLetters(t *testing.T) {
	for i, want := range map[int]string{0: "a", 25: "z", 26: "aa", 27: "ab", 701: "zz", 702: "aaa"} {
		if got := diskLetters(i); got != want {
			t.Errorf("diskLetters(%d) = %q, want %q", i, got, want)
		}
	}
}
