package cli

import (
	"errors"
	"fmt"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/validation"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// createCommand is `create vm`: like `virtctl create vm` it prints a
// manifest and sends nothing, so the user can read and edit it before
// `kubectl apply -f -`.
func (o *options) createCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "create",
		Short: "Print the manifest of a new object (vm) as YAML, to edit or pipe to `kubectl apply -f -`",
		Args:  cobra.NoArgs,
	}
	cmd.AddCommand(o.createVMCommand())
	return cmd
}

// vmFlags are the flags of `create vm`, as typed; newVM checks them.
type vmFlags struct {
	image, memory, cpu, diskSize, storageClass string
	runStrategy, sshKeySecret, userDataFile    string
	networks                                   []string
}

// Defaults of `create vm`.
const (
	defaultVMMemory   = "256Mi"
	defaultVMCPU      = "1"
	defaultVMDiskSize = "1Gi"
	rootDisk          = "root"
	cloudInitDisk     = "cloudinit"
	podNetworkName    = v1.DefaultPodNetwork
	maxCores          = 256 // the CRD's maximum of cpu.cores
)

func (o *options) createVMCommand() *cobra.Command {
	var f vmFlags
	cmd := &cobra.Command{
		Use:   "vm NAME --image SOURCE",
		Short: "Print a VirtualMachine booting from an imported disk",
		Long: `Print a VirtualMachine (podvirt.io/v1alpha1) as YAML. Its disk NAME-root is a disk
template: a PVC that podvirt's CSI driver fills from --image before the first start. Without
--network the VM has one NIC on the pod network (passt: the guest has the pod's address;
add interfaces[].ports to the printed VM to have Services reach guest ports); each --network
adds a NIC on that Multus NetworkAttachmentDefinition instead (binding tap: the guest is on
the NAD's L2 segment).`,
		Example: fmt.Sprintf(`  %[1]s create vm web --image docker://quay.io/containerdisks/fedora:40 --disk-size 6Gi | kubectl apply -f -
  %[1]s create vm db --image https://example.com/disk.qcow2 --network l2-bridge --memory 1Gi --cpu 2
  %[1]s create vm test --image docker://registry.local/cirros:0.6 --user-data-file cloud-init.yaml -n dev
  kubectl create secret generic my-keys --from-file=key1=$HOME/.ssh/id_ed25519.pub
  %[1]s create vm box --image docker://quay.io/containerdisks/fedora:40 --ssh-key-secret my-keys`, o.name),
		Args: exactlyOneName("VM"),
		RunE: func(cmd *cobra.Command, args []string) error {
			ns := ""
			if o.flags.Namespace != nil {
				ns = *o.flags.Namespace // only when given: the manifest stays namespace-free otherwise
			}
			vm, err := newVM(args[0], ns, f)
			if err != nil {
				return err
			}
			return printVMs(o.streams.Out, vm)
		},
	}
	fl := cmd.Flags()
	fl.StringVar(&f.image, "image", "", "the disk's source (required): docker://REGISTRY/REPO:TAG (a containerDisk image) or https://HOST/disk.qcow2")
	fl.StringVar(&f.memory, "memory", defaultVMMemory, "the guest's memory, at least "+v1.MinGuestMemory)
	fl.StringVar(&f.cpu, "cpu", defaultVMCPU, fmt.Sprintf("the guest's vCPUs (cores of one socket), 1 to %d", maxCores))
	fl.StringVar(&f.diskSize, "disk-size", defaultVMDiskSize, "the disk's size: at least the image's virtual size (a bigger image is refused), the rest is free space")
	fl.StringVar(&f.storageClass, "storage-class", "", "the disk's StorageClass (empty: the cluster's default); it must be podvirt's (the chart's is named podvirt), the only one that imports --image")
	fl.StringVar(&f.runStrategy, "run-strategy", string(v1.RunStrategyAlways), "when the VM runs: "+strings.Join(runStrategies(), ", "))
	fl.StringArrayVar(&f.networks, "network", nil, "a NetworkAttachmentDefinition, NAME or NAMESPACE/NAME, to put a NIC on (repeatable); without it the VM gets the pod network")
	fl.StringVar(&f.userDataFile, "user-data-file", "", "a cloud-init user-data file (#cloud-config ...) for a NoCloud seed disk")
	fl.StringVar(&f.sshKeySecret, "ssh-key-secret", "", "a Secret in the VM's namespace holding SSH public keys (one per line, under any key): added to the guest's authorized keys through cloud-init at each start (spec.accessCredentials)")
	return cmd
}

func runStrategies() []string {
	return []string{string(v1.RunStrategyAlways), string(v1.RunStrategyRerunOnFailure), string(v1.RunStrategyManual), string(v1.RunStrategyHalted), string(v1.RunStrategyOnce)}
}

// nadRef is what the CRD accepts as a Multus network name.
var nadRef = regexp.MustCompile(`^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`)

// newVM checks the flags, all of them (so one run lists every mistake),
// and builds the VM.
func newVM(vmName, namespace string, f vmFlags) (*v1.VirtualMachine, error) {
	var errs []error
	bad := func(format string, a ...any) { errs = append(errs, fmt.Errorf(format, a...)) }

	if msgs := validation.IsDNS1123Label(vmName); len(msgs) > 0 {
		bad("VM name %q: %s (it names the VM's VMI, pod and labels)", vmName, strings.Join(msgs, "; "))
	}
	if f.sshKeySecret != "" {
		if msgs := validation.IsDNS1123Subdomain(f.sshKeySecret); len(msgs) > 0 {
			bad("--ssh-key-secret %q is not a Secret name: %s", f.sshKeySecret, strings.Join(msgs, "; "))
		}
	}
	if err := checkImageSource(f.image); err != nil {
		errs = append(errs, err)
	}
	memory, err := resource.ParseQuantity(f.memory)
	if err != nil {
		bad("--memory %q is not a quantity: write it like 512Mi or 2Gi", f.memory)
	} else if memory.Cmp(resource.MustParse(v1.MinGuestMemory)) < 0 {
		bad("--memory %s is too little: a guest needs at least %s", f.memory, v1.MinGuestMemory)
	}
	cores, err := strconv.ParseUint(f.cpu, 10, 32)
	if err != nil || cores < 1 || cores > maxCores {
		bad("--cpu %q: want a whole number of vCPUs from 1 to %d, like --cpu 2", f.cpu, maxCores)
	}
	size, err := resource.ParseQuantity(f.diskSize)
	if err != nil {
		bad("--disk-size %q is not a quantity: write it like 10Gi", f.diskSize)
	} else if size.Sign() <= 0 {
		bad("--disk-size %s: the disk needs a size above zero, at least the image's virtual size, like 10Gi", f.diskSize)
	}
	if f.storageClass != "" {
		if msgs := validation.IsDNS1123Subdomain(f.storageClass); len(msgs) > 0 {
			bad("--storage-class %q is not a StorageClass name: %s", f.storageClass, strings.Join(msgs, "; "))
		}
	}
	strategy := v1.RunStrategy(f.runStrategy)
	if !slices.Contains(runStrategies(), f.runStrategy) {
		bad("--run-strategy %q: want one of %s", f.runStrategy, strings.Join(runStrategies(), ", "))
	}
	if namespace != "" {
		if msgs := validation.IsDNS1123Label(namespace); len(msgs) > 0 {
			bad("--namespace %q is not a namespace name: %s", namespace, strings.Join(msgs, "; "))
		}
	}
	var userData string
	if f.userDataFile != "" {
		b, err := os.ReadFile(f.userDataFile)
		switch {
		case err != nil:
			bad("--user-data-file: %v", err)
		case len(b) == 0:
			bad("--user-data-file %s is empty: give it cloud-init user-data, e.g. starting with #cloud-config", f.userDataFile)
		case len(b) > 65536:
			bad("--user-data-file %s has %d bytes: cloudInitNoCloud.userData takes at most 65536", f.userDataFile, len(b))
		}
		userData = string(b)
		if f.sshKeySecret != "" && !strings.HasPrefix(userData, "#cloud-config") {
			bad("--user-data-file %s is not #cloud-config: --ssh-key-secret adds the keys to a #cloud-config's ssh_authorized_keys; write it as #cloud-config, or put the keys in it and drop --ssh-key-secret", f.userDataFile)
		}
	}
	if f.sshKeySecret != "" && userData == "" {
		userData = "#cloud-config\n" // the keys are added at each start
	}
	ifaces, networks, err := vmNetworks(f.networks)
	if err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}

	claim := vmName + "-" + rootDisk
	vm := &v1.VirtualMachine{
		Spec: v1.VirtualMachineSpec{
			RunStrategy: strategy,
			DiskTemplates: []v1.DiskTemplate{{
				ObjectMeta: v1.DiskTemplateMeta{Name: claim, Annotations: map[string]string{v1.DiskSourceAnnotation: f.image}},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
				},
			}},
			Template: v1.VirtualMachineInstanceTemplateSpec{Spec: v1.VirtualMachineInstanceSpec{
				Domain: v1.DomainSpec{
					CPU:    &v1.CPU{Cores: uint32(cores)},
					Memory: v1.Memory{Guest: memory},
					Devices: v1.Devices{
						Disks:      []v1.Disk{{Name: rootDisk}},
						Interfaces: ifaces,
					},
				},
				Networks: networks,
				Volumes: []v1.Volume{{Name: rootDisk, VolumeSource: v1.VolumeSource{
					PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: claim},
				}}},
			}},
		},
	}
	vm.APIVersion, vm.Kind = v1.GroupVersion.String(), "VirtualMachine"
	vm.Name, vm.Namespace = vmName, namespace
	if f.storageClass != "" {
		vm.Spec.DiskTemplates[0].Spec.StorageClassName = &f.storageClass
	}
	if userData != "" {
		spec := &vm.Spec.Template.Spec
		spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks, v1.Disk{Name: cloudInitDisk})
		spec.Volumes = append(spec.Volumes, v1.Volume{Name: cloudInitDisk, VolumeSource: v1.VolumeSource{
			CloudInitNoCloud: &v1.CloudInitNoCloudSource{UserData: userData},
		}})
	}
	if f.sshKeySecret != "" {
		vm.Spec.Template.Spec.AccessCredentials = []v1.AccessCredential{{SSHPublicKey: &v1.SSHPublicKeyAccessCredential{
			Source:            v1.SSHPublicKeyAccessCredentialSource{Secret: &v1.AccessCredentialSecretSource{SecretName: f.sshKeySecret}},
			PropagationMethod: v1.SSHPublicKeyAccessCredentialPropagationMethod{NoCloud: &v1.NoCloudPropagation{}},
		}}}
	}
	return vm, nil
}

// checkImageSource accepts what the CSI driver imports: docker://<image
// reference> and http(s)://host/path.
func checkImageSource(src string) error {
	const want = "docker://REGISTRY/REPO:TAG (a containerDisk image) or https://HOST/PATH (a qcow2 or raw image)"
	if src == "" {
		return fmt.Errorf("--image is required: the disk's source, %s", want)
	}
	if ref, ok := strings.CutPrefix(src, "docker://"); ok {
		if _, err := name.ParseReference(ref); err != nil {
			return fmt.Errorf("--image %q: %q is not an image reference (%w): want %s", src, ref, err, want)
		}
		return nil
	}
	u, err := url.Parse(src)
	switch {
	case err == nil && (u.Scheme == "https" || u.Scheme == "http") && u.Host != "" && u.Path != "":
		return nil
	case err == nil && (u.Scheme == "https" || u.Scheme == "http"):
		return fmt.Errorf("--image %q: an HTTP source needs a host and the image's path: want %s", src, want)
	case err == nil && u.Scheme == "":
		return fmt.Errorf("--image %q has no scheme: say where the disk comes from, e.g. docker://%s for a containerDisk image in a registry; want %s", src, src, want)
	case err == nil:
		return fmt.Errorf("--image %q: scheme %q is not supported: want %s", src, u.Scheme, want)
	}
	return fmt.Errorf("--image %q is not a URL (%w): want %s", src, err, want)
}

// vmNetworks is one Multus NIC (binding tap) per NAD, named after it, or
// without NADs the pod network (binding user), the NIC KubeVirt gives a VM
// that names no networks.
func vmNetworks(nads []string) ([]v1.Interface, []v1.Network, error) {
	if len(nads) == 0 {
		return []v1.Interface{{Name: podNetworkName, Binding: v1.InterfaceBindingUser}},
			[]v1.Network{{Name: podNetworkName, NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}, nil
	}
	var ifaces []v1.Interface
	var networks []v1.Network
	taken := map[string]bool{}
	for _, nad := range nads {
		if !nadRef.MatchString(nad) || len(nad) > 317 {
			return nil, nil, fmt.Errorf("--network %q is not a NetworkAttachmentDefinition: want NAME or NAMESPACE/NAME (lowercase letters, digits, '-', and '.' in NAME), like --network l2-bridge", nad)
		}
		_, nadName, _ := strings.Cut(nad, "/")
		if nadName == "" {
			nadName = nad
		}
		// An interface name is a DNS label: no dots, at most 63
		// characters; a second NIC on the same NAD gets a suffix.
		base := strings.ReplaceAll(nadName, ".", "-")
		if len(base) > 60 {
			base = strings.TrimRight(base[:60], "-")
		}
		ifName := base
		for i := 2; taken[ifName]; i++ {
			ifName = fmt.Sprintf("%s-%d", base, i)
		}
		taken[ifName] = true
		ifaces = append(ifaces, v1.Interface{Name: ifName, Binding: v1.InterfaceBindingTap})
		networks = append(networks, v1.Network{Name: ifName, NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: nad}}})
	}
	return ifaces, networks, nil
}
