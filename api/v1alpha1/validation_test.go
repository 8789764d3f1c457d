package v1alpha1_test

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// k8s reaches the test API server; nil when it could not start (the tests
// that need it then fail with startErr).
var (
	k8s      client.Client
	startErr error
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	srv, err := apiserver.Start(apiserver.Options{CRDDirs: []string{"../../charts/podvirt/crds"}})
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer srv.Stop()
	scheme := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := v1alpha1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	if err := apiextensionsv1.AddToScheme(scheme); err != nil {
		panic(err)
	}
	k8s, err = client.New(srv.Config, client.Options{Scheme: scheme})
	if err != nil {
		startErr = err
	}
	return m.Run()
}

func needServer(t *testing.T) client.Client {
	t.Helper()
	if startErr != nil {
		t.Fatal(startErr)
	}
	return k8s
}

func ptr[T any](v T) *T { return &v }

// validVM is a VM that uses every part of the API; each invalid case breaks
// one rule of it.
func validVM(name string) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: v1alpha1.VirtualMachineSpec{
			RunStrategy: v1alpha1.RunStrategyHalted,
			DiskTemplates: []v1alpha1.DiskTemplate{{
				ObjectMeta: v1alpha1.DiskTemplateMeta{
					Name: name + "-root",
					Annotations: map[string]string{
						v1alpha1.DiskSourceAnnotation:   "docker://registry.local/os/fedora:40",
						v1alpha1.DiskChecksumAnnotation: "sha256:" + strings.Repeat("ab", 32),
					},
				},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
					},
				},
			}},
			Template: v1alpha1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: v1alpha1.VirtualMachineInstanceSpec{
					Domain: v1alpha1.DomainSpec{
						CPU:      &v1alpha1.CPU{Sockets: 1, Cores: 2, Threads: 1},
						Memory:   v1alpha1.Memory{Guest: resource.MustParse("1Gi")},
						Machine:  &v1alpha1.Machine{Type: "q35"},
						Firmware: &v1alpha1.Firmware{Bootloader: v1alpha1.BootloaderUEFI},
						Devices: v1alpha1.Devices{
							Disks: []v1alpha1.Disk{
								{Name: "root", Bus: v1alpha1.DiskBusVirtio, BootOrder: ptr[uint](1)},
								{Name: "scratch", Bus: v1alpha1.DiskBusSCSI},
								{Name: "cloudinit", Bus: v1alpha1.DiskBusSATA},
							},
							Interfaces: []v1alpha1.Interface{
								{Name: "default"},
								{Name: "l2", MACAddress: "02:00:00:00:00:01", Model: v1alpha1.InterfaceModelVirtio, Binding: v1alpha1.InterfaceBindingTap},
							},
						},
					},
					Volumes: []v1alpha1.Volume{
						{Name: "root", VolumeSource: v1alpha1.VolumeSource{PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-root"}}},
						{Name: "scratch", VolumeSource: v1alpha1.VolumeSource{ContainerDisk: &v1alpha1.ContainerDiskSource{Image: "registry.local/scratch:1"}}},
						{Name: "cloudinit", VolumeSource: v1alpha1.VolumeSource{CloudInitNoCloud: &v1alpha1.CloudInitNoCloudSource{UserData: "#cloud-config\n"}}},
					},
					Networks: []v1alpha1.Network{
						{Name: "default", NetworkSource: v1alpha1.NetworkSource{Pod: &v1alpha1.PodNetwork{}}},
						{Name: "l2", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "default/l2-macvlan"}}},
					},
					TerminationGracePeriodSeconds: ptr[int64](30),
					ReadinessProbe: &v1alpha1.Probe{
						HTTPGet:       &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080)},
						PeriodSeconds: 5,
					},
					LivenessProbe: &v1alpha1.Probe{
						Exec:                &corev1.ExecAction{Command: []string{"systemctl", "is-active", "nginx"}},
						InitialDelaySeconds: 120,
					},
				},
			},
		},
	}
}

func TestValidVMIsAcceptedAndDefaulted(t *testing.T) {
	c := needServer(t)
	ctx := context.Background()
	vm := validVM("valid")
	vm.Spec.RunStrategy = ""
	vm.Spec.Template.Spec.Domain.CPU = &v1alpha1.CPU{Cores: 2}
	vm.Spec.Template.Spec.Domain.Devices.Disks[1].Bus = ""
	if err := c.Create(ctx, vm); err != nil {
		t.Fatalf("create a valid VM: %v", err)
	}
	t.Cleanup(func() { c.Delete(context.Background(), vm) })
	got := &v1alpha1.VirtualMachine{}
	if err := c.Get(ctx, client.ObjectKeyFromObject(vm), got); err != nil {
		t.Fatal(err)
	}
	spec := got.Spec.Template.Spec
	for what, ok := range map[string]bool{
		"runStrategy defaults to Always":      got.Spec.RunStrategy == v1alpha1.RunStrategyAlways,
		"diskRetentionPolicy defaults Retain": got.Spec.DiskRetentionPolicy == v1alpha1.DiskRetain,
		"cpu.sockets defaults to 1":           spec.Domain.CPU.Sockets == 1,
		"cpu.threads defaults to 1":           spec.Domain.CPU.Threads == 1,
		"disk bus defaults to virtio":         spec.Domain.Devices.Disks[1].Bus == v1alpha1.DiskBusVirtio,
		"interface model defaults to virtio":  spec.Domain.Devices.Interfaces[0].Model == v1alpha1.InterfaceModelVirtio,
		"template labels are kept":            got.Spec.Template.ObjectMeta.Labels["app"] == "valid",
		"disk template annotations are kept":  got.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1alpha1.DiskSourceAnnotation] != "",
	} {
		if !ok {
			t.Errorf("%s: got %+v", what, got.Spec)
		}
	}

	// The same spec as a VMI.
	vmi := &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "valid", Namespace: "default"},
		Spec:       validVM("valid").Spec.Template.Spec,
	}
	if err := c.Create(ctx, vmi); err != nil {
		t.Fatalf("create a valid VMI: %v", err)
	}
	t.Cleanup(func() { c.Delete(context.Background(), vmi) })
}

// TestInvalidVMsAreRejected breaks one rule per case and checks the API
// server refuses the VM with the message a user acts on.
func TestInvalidVMsAreRejected(t *testing.T) {
	c := needServer(t)
	vmiSpec := func(vm *v1alpha1.VirtualMachine) *v1alpha1.VirtualMachineInstanceSpec {
		return &vm.Spec.Template.Spec
	}
	for _, tc := range []struct {
		name   string
		break_ func(vm *v1alpha1.VirtualMachine)
		want   string
	}{
		{"memory below the floor", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Memory.Guest = resource.MustParse("16Mi")
		}, "memory.guest must be at least 32Mi"},
		{"memory as a plain byte count below the floor", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Memory.Guest = *resource.NewQuantity(1<<20, resource.DecimalSI)
		}, "memory.guest must be at least 32Mi"},
		{"zero cores", nil, "cpu.cores must be at least 1"},
		{"zero sockets", nil, "cpu.sockets must be at least 1"},
		{"zero threads", nil, "cpu.threads must be at least 1"},
		{"duplicate disk names", func(vm *v1alpha1.VirtualMachine) {
			d := &vmiSpec(vm).Domain.Devices
			d.Disks[1].Name = "root"
		}, "disk names must be unique"},
		{"duplicate interface names", func(vm *v1alpha1.VirtualMachine) {
			d := &vmiSpec(vm).Domain.Devices
			d.Interfaces[1].Name = "default"
		}, "interface names must be unique"},
		{"duplicate volume names", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Volumes[1].Name = "root"
		}, "volume names must be unique"},
		{"disk without a volume", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Domain.Devices.Disks = append(s.Domain.Devices.Disks, v1alpha1.Disk{Name: "data"})
		}, "every disk needs a volume of the same name in spec.volumes"},
		{"interface without a network", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Domain.Devices.Interfaces = append(s.Domain.Devices.Interfaces, v1alpha1.Interface{Name: "storage"})
		}, "every interface needs a network of the same name in spec.networks"},
		{"network without an interface", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Networks = append(s.Networks, v1alpha1.Network{Name: "spare", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "spare"}}})
		}, "every network needs an interface of the same name"},
		{"malformed MAC", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Devices.Interfaces[1].MACAddress = "02:00:00:00:01"
		}, "macAddress must be six colon-separated hex bytes, like 02:00:00:00:00:01"},
		{"multicast MAC", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Devices.Interfaces[1].MACAddress = "01:00:5e:00:00:01"
		}, "macAddress must be a unicast address"},
		{"the same MAC twice", func(vm *v1alpha1.VirtualMachine) {
			d := &vmiSpec(vm).Domain.Devices
			d.Interfaces[0].MACAddress = "02:00:00:00:00:01"
		}, "each interface needs its own macAddress"},
		{"two boot disks", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Devices.Disks[1].BootOrder = ptr[uint](1)
		}, "each disk's bootOrder must be unique: only one disk can boot first"},
		{"volume with two sources", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Volumes[1].PersistentVolumeClaim = &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: "x"}
		}, "a volume needs exactly one source: persistentVolumeClaim, containerDisk or cloudInitNoCloud"},
		{"volume without a source", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Volumes[1].ContainerDisk = nil
		}, "a volume needs exactly one source"},
		{"empty cloud-init", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Volumes[2].CloudInitNoCloud.UserData = ""
		}, "cloudInitNoCloud needs userData, networkData or a Secret for either"},
		{"user-data twice", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Volumes[2].CloudInitNoCloud.UserDataSecretRef = &corev1.LocalObjectReference{Name: "ud"}
		}, "cloudInitNoCloud: give userData or secretRef"},
		{"access credentials without cloud-init", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Volumes = s.Volumes[:2]
			s.Domain.Devices.Disks = s.Domain.Devices.Disks[:2]
			s.AccessCredentials = []v1alpha1.AccessCredential{{SSHPublicKey: &v1alpha1.SSHPublicKeyAccessCredential{
				Source:            v1alpha1.SSHPublicKeyAccessCredentialSource{Secret: &v1alpha1.AccessCredentialSecretSource{SecretName: "keys"}},
				PropagationMethod: v1alpha1.SSHPublicKeyAccessCredentialPropagationMethod{NoCloud: &v1alpha1.NoCloudPropagation{}},
			}}}
		}, "accessCredentials reach the guest through NoCloud: add a cloudInitNoCloud volume"},
		{"probe with two checks", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).ReadinessProbe.TCPSocket = &corev1.TCPSocketAction{Port: intstr.FromInt32(22)}
		}, "a probe needs exactly one of exec, httpGet, tcpSocket and guestAgentPing"},
		{"probe with no check", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).LivenessProbe.Exec = nil
		}, "a probe needs exactly one of exec, httpGet, tcpSocket and guestAgentPing"},
		{"liveness probe passing twice", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).LivenessProbe.SuccessThreshold = 2
		}, "a liveness probe's successThreshold must be 1"},
		{"http probe without the pod network", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Networks, s.Domain.Devices.Interfaces = s.Networks[1:], s.Domain.Devices.Interfaces[1:]
		}, "readinessProbe: tcpSocket and httpGet probes reach the guest through the pod network"},
		{"network that is both pod and multus", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Networks[0].Multus = &v1alpha1.MultusNetwork{NetworkName: "l2"}
		}, "a network needs exactly one of pod or multus"},
		{"two pod networks", func(vm *v1alpha1.VirtualMachine) {
			s := vmiSpec(vm)
			s.Networks[1].Multus = nil
			s.Networks[1].Pod = &v1alpha1.PodNetwork{}
			s.Domain.Devices.Interfaces[1].Binding = ""
		}, "at most one network can be the pod network"},
		{"tap binding on the pod network", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Devices.Interfaces[0].Binding = v1alpha1.InterfaceBindingTap
		}, "interface binding must match its network: 'user' for the pod network, 'tap' for a Multus network"},
		{"relative kernel path", func(vm *v1alpha1.VirtualMachine) {
			vmiSpec(vm).Domain.Firmware.KernelBoot = &v1alpha1.KernelBoot{KernelPath: "boot/vmlinuz"}
		}, "kernelBoot.kernelPath must be an absolute path in the launcher pod"},
		{"disk template without a name", func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.DiskTemplates[0].ObjectMeta.Name = ""
		}, "each diskTemplate needs metadata.name"},
		{"disk template with an unknown source scheme", func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1alpha1.DiskSourceAnnotation] = "ftp://mirror/disk.qcow2"
		}, "annotation disk.podvirt.io/source must start with docker://, https:// or http://"},
		{"two disk templates with one name", func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.DiskTemplates = append(vm.Spec.DiskTemplates, vm.Spec.DiskTemplates[0])
		}, "diskTemplates need unique metadata.name"},
		{"unknown run strategy", func(vm *v1alpha1.VirtualMachine) {
			vm.Spec.RunStrategy = "Sometimes"
		}, `supported values: "Always", "RerunOnFailure", "Manual", "Halted", "Once"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vm := validVM("invalid-" + strings.ReplaceAll(strings.ToLower(tc.name), " ", "-"))
			var obj client.Object = vm
			if tc.break_ != nil {
				tc.break_(vm)
			} else {
				// A zero count is what kubectl sends for "cores: 0"; Go
				// clients omit it, so write it into the object as JSON.
				u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(vm)
				if err != nil {
					t.Fatal(err)
				}
				field := strings.TrimPrefix(tc.name, "zero ")
				if err := unstructured.SetNestedField(u, int64(0), "spec", "template", "spec", "domain", "cpu", field); err != nil {
					t.Fatal(err)
				}
				uvm := &unstructured.Unstructured{Object: u}
				uvm.SetGroupVersionKind(v1alpha1.GroupVersion.WithKind("VirtualMachine"))
				obj = uvm
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			err := c.Create(ctx, obj)
			if err == nil {
				c.Delete(context.Background(), obj)
				t.Fatalf("the API server accepted the VM; want it refused with %q", tc.want)
			}
			if !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("refused with\n  %v\nwant a message containing\n  %q", err, tc.want)
			}
		})
	}
}

// TestInvalidVMIIsRejected checks the rules hold on a bare VMI too.
func TestInvalidVMIIsRejected(t *testing.T) {
	c := needServer(t)
	spec := validVM("x").Spec.Template.Spec
	spec.Domain.Memory.Guest = resource.MustParse("1Mi")
	vmi := &v1alpha1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: "small", Namespace: "default"}, Spec: spec}
	err := c.Create(context.Background(), vmi)
	if err == nil || !strings.Contains(err.Error(), "memory.guest must be at least 32Mi") {
		c.Delete(context.Background(), vmi)
		t.Fatalf("got %v, want the memory floor message", err)
	}
}

// TestCRDNames checks what kubectl users see: short names, the "all"
// category, the status subresource and the printer columns.
func TestCRDNames(t *testing.T) {
	c := needServer(t)
	for _, tc := range []struct{ crd, short, columns string }{
		{"virtualmachines.podvirt.io", "vm", "Age,Status,Ready,Node,IP,RestartRequired,Display Name"},
		{"virtualmachineinstances.podvirt.io", "vmi", "Age,Status,Ready,Node,IP"},
	} {
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := c.Get(context.Background(), client.ObjectKey{Name: tc.crd}, crd); err != nil {
			t.Fatal(err)
		}
		names := crd.Spec.Names
		if !slices.Contains(names.ShortNames, tc.short) || !slices.Contains(names.Categories, "all") {
			t.Errorf("%s: short names %v, categories %v", tc.crd, names.ShortNames, names.Categories)
		}
		v := crd.Spec.Versions[0]
		if v.Subresources == nil || v.Subresources.Status == nil {
			t.Errorf("%s: no status subresource", tc.crd)
		}
		var columns []string
		for _, col := range v.AdditionalPrinterColumns {
			columns = append(columns, col.Name)
		}
		if got := strings.Join(columns, ","); got != tc.columns {
			t.Errorf("%s: printer columns %s", tc.crd, got)
		}
	}
}
