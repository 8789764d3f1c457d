package cli

import (
	"os"
	"strings"
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestConvertKubeVirtVMs converts the KubeVirt VMs of testdata/kubevirt
// (the user guide's examples and the usual shapes, written from the
// kubevirt.io/v1 API) and has a real API server with podvirt's CRDs create
// each result as printed, in the namespace -n gives.
func TestConvertKubeVirtVMs(t *testing.T) {
	ns := namespace(t)
	for _, tc := range []struct {
		file    string
		lossy   bool
		dropped []string // paths --lossy reports on stderr
		check   func(t *testing.T, vms []*v1.VirtualMachine)
	}{
		{file: "testvm.yaml", check: func(t *testing.T, vms []*v1.VirtualMachine) {
			spec := vms[0].Spec.Template.Spec
			if vms[0].Spec.RunStrategy != v1.RunStrategyHalted || spec.Domain.Memory.Guest.String() != "64M" ||
				spec.Volumes[0].ContainerDisk.Image != "quay.io/kubevirt/cirros-container-disk-demo" ||
				spec.Volumes[1].CloudInitNoCloud.UserData != `Hi.\n` ||
				spec.Domain.Devices.Interfaces[0].Binding != v1.InterfaceBindingUser || spec.Networks[0].Pod == nil ||
				vms[0].Spec.Template.ObjectMeta.Labels["kubevirt.io/domain"] != "testvm" {
				t.Errorf("got %+v", vms[0].Spec)
			}
		}},
		{file: "fedora-cloudinit.yaml", lossy: true, dropped: []string{"spec.template.spec.domain.devices.rng"}, check: func(t *testing.T, vms []*v1.VirtualMachine) {
			spec := vms[0].Spec.Template.Spec
			if vms[0].Spec.RunStrategy != v1.RunStrategyAlways || spec.Domain.CPU.VCPUs() != 2 || spec.Domain.Memory.Guest.String() != "2Gi" ||
				!strings.Contains(spec.Volumes[1].CloudInitNoCloud.UserData, "ssh_authorized_keys") ||
				*spec.TerminationGracePeriodSeconds != 180 || spec.NodeSelector["kubernetes.io/arch"] != "amd64" ||
				len(spec.Tolerations) != 1 || vms[0].Labels["app"] != "fedora" {
				t.Errorf("got %+v", vms[0].Spec)
			}
		}},
		{file: "dv-registry.yaml", check: func(t *testing.T, vms []*v1.VirtualMachine) {
			vm := vms[0]
			spec := vm.Spec.Template.Spec
			if len(vm.Spec.DiskTemplates) != 1 || vm.Spec.DiskTemplates[0].ObjectMeta.Name != "fedora-dv-root" ||
				vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] != "docker://quay.io/containerdisks/fedora:40" ||
				vm.Spec.DiskTemplates[0].Spec.Resources.Requests.Storage().String() != "6Gi" {
				t.Errorf("disk templates %+v", vm.Spec.DiskTemplates)
			}
			if spec.Volumes[0].PersistentVolumeClaim.ClaimName != "fedora-dv-root" || *spec.Domain.Devices.Disks[0].BootOrder != 1 ||
				spec.Domain.Firmware.Bootloader != v1.BootloaderUEFI || spec.Domain.CPU.Model != "host-passthrough" ||
				spec.Affinity.NodeAffinity == nil || vm.Spec.RunStrategy != v1.RunStrategyRerunOnFailure {
				t.Errorf("got %+v", spec)
			}
		}},
		{file: "dv-http.yaml", check: func(t *testing.T, vms []*v1.VirtualMachine) {
			vm := vms[0]
			spec := vm.Spec.Template.Spec
			root, data := vm.Spec.DiskTemplates[0], vm.Spec.DiskTemplates[1]
			if root.ObjectMeta.Annotations[v1.DiskSourceAnnotation] != "https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-generic-amd64.qcow2" ||
				*root.Spec.StorageClassName != "podvirt" || data.ObjectMeta.Annotations[v1.DiskSourceAnnotation] != "" || *data.Spec.VolumeMode != "Block" {
				t.Errorf("disk templates %+v", vm.Spec.DiskTemplates)
			}
			claims := map[string]string{}
			for _, v := range spec.Volumes {
				if v.PersistentVolumeClaim != nil {
					claims[v.Name] = v.PersistentVolumeClaim.ClaimName
				}
			}
			if claims["root"] != "debian-root" || claims["data"] != "debian-data" || claims["shared"] != "shared-data" || claims["old"] != "debian-old-dv" {
				t.Errorf("claims %v", claims)
			}
			if len(spec.Domain.Devices.Disks) != 5 || !spec.Domain.Devices.Disks[2].ReadOnly || spec.Domain.Devices.VNC != nil ||
				!strings.Contains(spec.Volumes[4].CloudInitNoCloud.NetworkData, "dhcp4: true") || vm.Spec.RunStrategy != v1.RunStrategyAlways {
				t.Errorf("got %+v", spec)
			}
		}},
		{file: "multus.yaml", check: func(t *testing.T, vms []*v1.VirtualMachine) {
			spec := vms[0].Spec.Template.Spec
			want := map[string]v1.InterfaceBinding{"default": v1.InterfaceBindingUser, "lan": v1.InterfaceBindingTap, "wan": v1.InterfaceBindingTap}
			for _, i := range spec.Domain.Devices.Interfaces {
				if i.Binding != want[i.Name] {
					t.Errorf("interface %s: binding %s, want %s", i.Name, i.Binding, want[i.Name])
				}
			}
			if spec.Networks[2].Multus.NetworkName != "podvirt-system/l2-macvlan" || spec.Domain.Devices.Interfaces[1].MACAddress != "02:00:00:00:00:10" ||
				spec.Domain.Devices.Interfaces[2].Model != v1.InterfaceModelE1000 || vms[0].Spec.RunStrategy != v1.RunStrategyManual {
				t.Errorf("got %+v", spec)
			}
		}},
		{file: "exported-list.yaml", check: func(t *testing.T, vms []*v1.VirtualMachine) {
			if len(vms) != 2 || vms[0].Name != "web-1" || vms[1].Name != "web-2" || len(vms[0].Annotations) != 0 || len(vms[0].Finalizers) != 0 ||
				vms[0].Spec.Template.ObjectMeta.Labels["app"] != "web" {
				t.Errorf("got %+v", vms)
			}
		}},
		{file: "unsupported.yaml", lossy: true, dropped: []string{
			`metadata.annotations["kubevirt.io/immediate-data-volume-creation"]`,
			"spec.instancetype",
			"spec.template.spec.evictionStrategy",
			"spec.template.spec.domain.devices.gpus",
			"spec.template.spec.domain.devices.disks[1]",
			"spec.template.spec.domain.devices.disks[2].cdrom",
			"spec.template.spec.domain.devices.interfaces[1].sriov",
			"spec.template.spec.volumes[1].hostDisk",
			"spec.template.spec.volumes[2]",
		}, check: func(t *testing.T, vms []*v1.VirtualMachine) {
			spec := vms[0].Spec.Template.Spec
			if len(spec.Volumes) != 1 || len(spec.Domain.Devices.Disks) != 1 || len(spec.Networks) != 1 || len(spec.Domain.Devices.Interfaces) != 1 {
				t.Errorf("want only the root disk and the pod network left: %+v", spec)
			}
		}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			args := []string{"convert", "-f", "testdata/kubevirt/" + tc.file}
			if tc.lossy {
				args = append(args, "--lossy")
			}
			out, stderr, code := offline(t, "", append(args, "-n", ns)...)
			if code != 0 {
				t.Fatalf("exit %d: %s", code, stderr)
			}
			for _, p := range tc.dropped {
				if !strings.Contains(stderr, "  "+p+": ") {
					t.Errorf("stderr does not list %s:\n%s", p, stderr)
				}
			}
			if tc.dropped == nil && stderr != "" {
				t.Errorf("stderr: %s", stderr)
			}
			printed := decodeVMs(t, out)
			for _, vm := range printed {
				if vm.Namespace != ns || vm.APIVersion != "podvirt.io/v1alpha1" || vm.Kind != "VirtualMachine" {
					t.Errorf("%s: apiVersion %q kind %q namespace %q", vm.Name, vm.APIVersion, vm.Kind, vm.Namespace)
				}
				if vm.UID != "" || vm.ResourceVersion != "" || vm.Generation != 0 || !vm.CreationTimestamp.IsZero() {
					t.Errorf("%s: what the API server wrote was copied: %+v", vm.Name, vm.ObjectMeta)
				}
			}
			tc.check(t, printed)
			tc.check(t, createManifests(t, ns, out))
		})
	}
}

// TestConvertRefuses: a VM with fields podvirt has no place for is not
// printed; the error lists each field's path and why. Values podvirt
// cannot take stop it even with --lossy.
func TestConvertRefuses(t *testing.T) {
	out, stderr, code := offline(t, "", "convert", "-f", "testdata/kubevirt/unsupported.yaml")
	if code == 0 || out != "" {
		t.Fatalf("exit %d, printed %q", code, out)
	}
	for _, want := range []string{
		"nothing was printed", "--lossy",
		"spec.instancetype: podvirt has no instance types",
		"spec.template.spec.volumes[1].hostDisk: podvirt has no host disks",
		"spec.template.spec.domain.devices.gpus: podvirt has no GPU",
		"spec.template.spec.domain.devices.interfaces[1].sriov: podvirt has no SR-IOV",
		"spec.template.spec.domain.devices.disks[2].cdrom:",
		"spec.template.spec.evictionStrategy:",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("error does not say %q:\n%s", want, stderr)
		}
	}

	const blocked = `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: bad}
spec:
  runStrategy: WaitAsReceiver
  template:
    spec:
      domain:
        cpu: {cores: two}
        devices: {rng: {}}
`
	out, stderr, code = offline(t, blocked, "convert", "-f", "-", "--lossy")
	if code == 0 || out != "" {
		t.Fatalf("exit %d, printed %q", code, out)
	}
	for _, want := range []string{
		"stdin cannot be converted", `VirtualMachine "bad"`,
		`spec.runStrategy: "WaitAsReceiver"`,
		"spec.template.spec.domain.cpu.cores: want a whole number",
		"spec.template.spec.domain.memory.guest: the VM has no memory",
		"spec.template.spec.domain.devices.rng:",
	} {
		if !strings.Contains(stderr, want) {
			t.Errorf("error does not say %q:\n%s", want, stderr)
		}
	}

	for _, tc := range []struct{ stdin, args, want string }{
		{"", "convert", "needs -f FILE"},
		{"", "convert -f testdata/kubevirt/missing.yaml", "no such file"},
		{"kind: [", "convert -f -", "not YAML or JSON"},
		{"apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n", "convert -f -", "convert takes KubeVirt VirtualMachines only"},
	} {
		out, stderr, code := offline(t, tc.stdin, strings.Fields(tc.args)...)
		if code == 0 || out != "" || !strings.Contains(stderr, tc.want) {
			t.Errorf("%s: exit %d, printed %q, error %q; want %q", tc.args, code, out, stderr, tc.want)
		}
	}
}

// TestConvertStdin: -f - reads stdin; without -n the KubeVirt VM's
// namespace stays.
func TestConvertStdin(t *testing.T) {
	in, err := os.ReadFile("testdata/kubevirt/dv-registry.yaml")
	if err != nil {
		t.Fatal(err)
	}
	out, stderr, code := offline(t, string(in), "convert", "-f", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if vm := decodeVMs(t, out)[0]; vm.Name != "fedora-dv" || vm.Namespace != "vms" {
		t.Fatalf("got %s/%s", vm.Namespace, vm.Name)
	}
}
