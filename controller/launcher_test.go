package controller

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/podlink"
)

func TestMemoryOverhead(t *testing.T) {
	for _, tc := range []struct {
		name      string
		cpu       *v1alpha1.CPU
		guest     string
		vnc       bool
		emulation bool
		want      string
	}{
		{"smallest", nil, "32Mi", false, false, "217Mi"},                                                    // 208 + 8 + ⌈32Mi/512⌉ → 216.0625 → 217
		{"1Gi, 1 vCPU", nil, "1Gi", false, false, "218Mi"},                                                  // 208 + 8 + 2
		{"1Gi, 2 vCPUs, VNC", &v1alpha1.CPU{Cores: 2}, "1Gi", true, false, "242Mi"},                         // 208 + 16 + 2 + 16
		{"8Gi, 2×4×2 vCPUs", &v1alpha1.CPU{Sockets: 2, Cores: 4, Threads: 2}, "8Gi", false, false, "352Mi"}, // 208 + 128 + 16
		{"1Gi under TCG", nil, "1Gi", false, true, "346Mi"},                                                 // 218 + 128
	} {
		t.Run(tc.name, func(t *testing.T) {
			spec := &v1alpha1.VirtualMachineInstanceSpec{Domain: v1alpha1.DomainSpec{
				CPU:     tc.cpu,
				Memory:  v1alpha1.Memory{Guest: resource.MustParse(tc.guest)},
				Devices: v1alpha1.Devices{VNC: &tc.vnc},
			}}
			got := MemoryOverhead(spec, tc.emulation)
			if want := resource.MustParse(tc.want); got.Cmp(want) != 0 {
				t.Fatalf("overhead %s, want %s", got.String(), tc.want)
			}
		})
	}
}

func TestLauncherPodName(t *testing.T) {
	vmi := &v1alpha1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: strings.Repeat("a", 253), UID: "0123abcd-0000-0000-0000-000000000000"}}
	name := launcherPodName(vmi)
	if errs := validation.IsDNS1123Subdomain(name + "-" + v1alpha1.PrivateVolumeName); len(errs) > 0 {
		t.Fatalf("%s: %v", name, errs)
	}
	if !strings.HasSuffix(name, "-0123a") {
		t.Fatalf("%s does not end in the UID's prefix", name)
	}
	other := vmi.DeepCopy()
	other.UID = "ffff0000-0000-0000-0000-000000000000"
	if launcherPodName(other) == name {
		t.Fatal("a new VMI of the same name gets the old pod's name")
	}
}

func TestLauncherPodWithoutKVM(t *testing.T) {
	cfg := DefaultConfig()
	cfg.UseEmulation = true
	vmi := representativeVMI("ns")
	vmi.UID = "0123abcd-0000-0000-0000-000000000000"
	claims := map[string]volumeClaim{"golden-root": {mode: corev1.PersistentVolumeFilesystem}, "golden-data": {mode: corev1.PersistentVolumeBlock}}
	pod, _, err := launcherPod(vmi, claims, &cfg)
	if err != nil {
		t.Fatal(err)
	}
	limits := pod.Spec.Containers[0].Resources.Limits
	if _, ok := limits[v1alpha1.KVMDevice]; ok {
		t.Error("emulation still requests /dev/kvm")
	}
	if _, ok := limits[v1alpha1.VhostNetDevice]; ok {
		t.Error("emulation still requests /dev/vhost-net")
	}
	if _, ok := limits[v1alpha1.TunDevice]; !ok {
		t.Error("emulation dropped /dev/net/tun")
	}
	delete(claims, "golden-data")
	if _, _, err := launcherPod(vmi, claims, &cfg); err == nil || !strings.Contains(err.Error(), "golden-data") {
		t.Errorf("missing PVC: got %v", err)
	}
}

func TestMultusNetworks(t *testing.T) {
	vmi := &v1alpha1.VirtualMachineInstance{Spec: v1alpha1.VirtualMachineInstanceSpec{
		Domain: v1alpha1.DomainSpec{Devices: v1alpha1.Devices{Interfaces: []v1alpha1.Interface{
			{Name: "b"}, {Name: "pod"}, {Name: "a", MACAddress: "02:00:00:00:00:01"},
		}}},
		Networks: []v1alpha1.Network{
			{Name: "a", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "other/nad-a"}}},
			{Name: "pod", NetworkSource: v1alpha1.NetworkSource{Pod: &v1alpha1.PodNetwork{}}},
			{Name: "b", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "nad-b"}}},
		},
	}}
	got, err := multusNetworks(vmi)
	if err != nil {
		t.Fatal(err)
	}
	want := `[{"name":"nad-b","interface":"` + podlink.InterfaceName("b") + `"},` +
		`{"name":"nad-a","namespace":"other","interface":"` + podlink.InterfaceName("a") + `","mac":"02:00:00:00:00:01"}]`
	if got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
	vmi.Spec.Networks = vmi.Spec.Networks[1:2]
	if got, _ := multusNetworks(vmi); got != "" {
		t.Fatalf("pod network only: %q", got)
	}
}

func TestContainerDiskSource(t *testing.T) {
	for in, want := range map[string]string{
		"quay.io/containerdisks/fedora:40": "docker://quay.io/containerdisks/fedora:40",
		"docker://registry.local/x:1":      "docker://registry.local/x:1",
		"https://host/disk.qcow2":          "https://host/disk.qcow2",
	} {
		if got := containerDiskSource(in); got != want {
			t.Errorf("%s → %s, want %s", in, got, want)
		}
	}
}
