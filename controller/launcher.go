package controller

import (
	"encoding/json"
	"fmt"
	"path"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// Memory overhead of a launcher pod beyond the guest's memory, in MiB. The
// pod requests guest + overhead, where
//
//	overhead = 208Mi                       fixed: launcher 32 + libvirtd 64 + virtlogd 16 + QEMU base 96
//	         + 8Mi × vCPUs                 vCPU threads and per-vCPU state
//	         + ⌈guest / 512⌉               guest page tables
//	         + 16Mi if VNC                 video RAM
//	         + 128Mi with emulation (TCG)  translation cache (the launcher caps QEMU's tb-size to fit)
//
// as KubeVirt's GetMemoryOverhead does, with podvirt's processes.
const (
	overheadFixedMiB   = 32 + 64 + 16 + 96
	overheadPerVCPUMiB = 8
	overheadVNCMiB     = 16
	overheadTCGMiB     = 128
	pageTableDivisor   = 512
)

// MemoryOverhead is the memory a launcher pod needs beyond the guest's.
func MemoryOverhead(spec *v1alpha1.VirtualMachineInstanceSpec, emulation bool) resource.Quantity {
	const mi = 1 << 20
	bytes := int64(overheadFixedMiB) * mi
	bytes += spec.Domain.CPU.VCPUs() * overheadPerVCPUMiB * mi
	guest := spec.Domain.Memory.Guest.Value()
	bytes += (guest + pageTableDivisor - 1) / pageTableDivisor
	if spec.Domain.Devices.VNC != nil && *spec.Domain.Devices.VNC {
		bytes += overheadVNCMiB * mi
	}
	if emulation {
		bytes += overheadTCGMiB * mi
	}
	// Round up to whole MiB so the request reads well.
	bytes = (bytes + mi - 1) / mi * mi
	return *resource.NewQuantity(bytes, resource.BinarySI)
}

// launcherPodName is the name of a VMI's launcher pod. It is fixed by the
// VMI's name and UID, so creating it twice fails instead of making a second
// pod, and a new VMI of the same name never collides with an old pod still
// terminating.
func launcherPodName(vmi *v1alpha1.VirtualMachineInstance) string {
	return launcherPodNameFor(vmi, vmi.UID)
}

// launcherPodNameFor is a launcher pod name for vmi suffixed from uid: the
// VMI's own for its first pod, a migration's for its target pod.
func launcherPodNameFor(vmi *v1alpha1.VirtualMachineInstance, uid types.UID) string {
	const prefix = "virt-launcher-"
	suffix := "-" + strings.ReplaceAll(string(uid), "-", "")[:5]
	name := vmi.Name
	if max := validation.DNS1123SubdomainMaxLength - len(prefix) - len(suffix) - len(v1alpha1.PrivateVolumeName) - 1; len(name) > max {
		name = strings.TrimRight(name[:max], "-.")
	}
	return prefix + name + suffix
}

// volumeClaim is what the VMI reconciler found out about a PVC a volume
// names.
type volumeClaim struct {
	mode     corev1.PersistentVolumeMode
	readOnly bool
}

// multusSelection is one entry of the k8s.v1.cni.cncf.io/networks
// annotation (Multus's NetworkSelectionElement).
type multusSelection struct {
	Name      string `json:"name"`
	Namespace string `json:"namespace,omitempty"`
	Interface string `json:"interface,omitempty"`
	MAC       string `json:"mac,omitempty"`
	// IPs are the addresses the network's IPAM is asked for (Multus passes
	// them on as runtimeConfig.ips), in CIDR form.
	IPs []string `json:"ips,omitempty"`
	// CNIArgs reach the plugin as args.cni.
	CNIArgs map[string]string `json:"cni-args,omitempty"`
}

// handoffArg is podvirt-l2's args.cni key naming the pod whose attachment a
// same-node migration target takes over (cni/handoff).
const handoffArg = "podvirtHandoffFrom"

// handOverFrom marks every Multus attachment of a same-node migration's
// target pod as taking over the source pod's: its lease and MAC are the
// source's until the switch.
func handOverFrom(pod *corev1.Pod, source types.UID) error {
	raw := pod.Annotations[v1alpha1.MultusNetworksAnnotation]
	if raw == "" {
		return nil
	}
	var selections []multusSelection
	if err := json.Unmarshal([]byte(raw), &selections); err != nil {
		return fmt.Errorf("multus networks of pod %s: %w", pod.Name, err)
	}
	for i := range selections {
		selections[i].CNIArgs = map[string]string{handoffArg: string(source)}
	}
	out, err := json.Marshal(selections)
	if err != nil {
		return err
	}
	pod.Annotations[v1alpha1.MultusNetworksAnnotation] = string(out)
	return nil
}

// launcherPod builds the launcher pod of vmi. claims holds the volume mode of
// every PVC a volume names (keyed by claim name). It also returns where each
// volume's disk is inside the pod, for the VMI's status.
func launcherPod(vmi *v1alpha1.VirtualMachineInstance, claims map[string]volumeClaim, cfg *Config) (*corev1.Pod, []v1alpha1.VolumeStatus, error) {
	return launcherPodNamed(vmi, launcherPodName(vmi), claims, cfg)
}

// launcherPodNamed is launcherPod under another name.
func launcherPodNamed(vmi *v1alpha1.VirtualMachineInstance, name string, claims map[string]volumeClaim, cfg *Config) (*corev1.Pod, []v1alpha1.VolumeStatus, error) {
	meta, err := launcherPodMeta(vmi, name)
	if err != nil {
		return nil, nil, err
	}
	vols, err := launcherVolumes(vmi, name, claims, cfg)
	if err != nil {
		return nil, nil, err
	}
	// The launcher needs the guest's grace period plus time to stop
	// libvirt and report.
	podGrace := guestGrace(&vmi.Spec) + 15
	pod := &corev1.Pod{
		ObjectMeta: meta,
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			TerminationGracePeriodSeconds: &podGrace,
			AutomountServiceAccountToken:  new(false),
			EnableServiceLinks:            new(false),
			NodeSelector:                  vmi.Spec.NodeSelector,
			Affinity:                      vmi.Spec.Affinity,
			Tolerations:                   vmi.Spec.Tolerations,
			Volumes:                       vols.volumes,
			Containers:                    []corev1.Container{launcherContainer(vmi, cfg, vols)},
		},
	}
	if len(validation.IsDNS1123Label(vmi.Name)) == 0 {
		pod.Spec.Hostname = vmi.Name
	}
	return pod, vols.statuses, nil
}

// launcherPodMeta is the launcher pod's name, labels (the VMI's, and the
// ones that tie the pod to it), annotations (the default container, the
// Multus networks) and owner.
func launcherPodMeta(vmi *v1alpha1.VirtualMachineInstance, name string) (metav1.ObjectMeta, error) {
	labels := map[string]string{}
	for k, v := range vmi.Labels {
		labels[k] = v
	}
	labels[v1alpha1.AppLabel] = v1alpha1.AppLauncher
	labels[v1alpha1.VMINameLabel] = vmi.Name
	labels[v1alpha1.CreatedByLabel] = string(vmi.UID)

	annotations := map[string]string{"kubectl.kubernetes.io/default-container": v1alpha1.LauncherContainerName}
	networks, err := multusNetworks(vmi)
	if err != nil {
		return metav1.ObjectMeta{}, err
	}
	if networks != "" {
		annotations[v1alpha1.MultusNetworksAnnotation] = networks
	}
	return metav1.ObjectMeta{
		Name:        name,
		Namespace:   vmi.Namespace,
		Labels:      labels,
		Annotations: annotations,
		OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vmi,
			v1alpha1.GroupVersion.WithKind("VirtualMachineInstance"))},
	}, nil
}

// podVolumes are the launcher pod's volumes, where the launcher container
// sees them, and where each VMI volume's disk is.
type podVolumes struct {
	volumes  []corev1.Volume
	mounts   []corev1.VolumeMount
	devices  []corev1.VolumeDevice
	statuses []v1alpha1.VolumeStatus
}

// launcherVolumes lays out the pod's volumes: the socket and private
// emptyDirs, then one per VMI volume, in order.
func launcherVolumes(vmi *v1alpha1.VirtualMachineInstance, podName string, claims map[string]volumeClaim, cfg *Config) (podVolumes, error) {
	pv := podVolumes{
		volumes: []corev1.Volume{
			{Name: v1alpha1.SocketVolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			{Name: v1alpha1.PrivateVolumeName, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		},
		mounts: []corev1.VolumeMount{
			{Name: v1alpha1.SocketVolumeName, MountPath: v1alpha1.SocketDir},
			{Name: v1alpha1.PrivateVolumeName, MountPath: v1alpha1.PrivateDir},
		},
	}
	for _, v := range vmi.Spec.Volumes {
		switch {
		case v.PersistentVolumeClaim != nil:
			claim, ok := claims[v.PersistentVolumeClaim.ClaimName]
			if !ok {
				return podVolumes{}, fmt.Errorf("volume %s: PVC %s/%s not found", v.Name, vmi.Namespace, v.PersistentVolumeClaim.ClaimName)
			}
			pv.addClaim(v.Name, v.PersistentVolumeClaim, claim)
		case v.ContainerDisk != nil:
			pv.addContainerDisk(vmi, podName, v.Name, v.ContainerDisk, cfg)
		case v.CloudInitNoCloud != nil:
			// The launcher writes the seed image under PrivateDir itself,
			// from the spec and these Secrets.
			pv.statuses = append(pv.statuses, v1alpha1.VolumeStatus{Name: v.Name})
			if ref := v.CloudInitNoCloud.UserDataSecretRef; ref != nil {
				pv.addSecret(v1alpha1.CloudInitSecretMount(v1alpha1.CloudInitUserData), ref.Name)
			}
			if ref := v.CloudInitNoCloud.NetworkDataSecretRef; ref != nil {
				pv.addSecret(v1alpha1.CloudInitSecretMount(v1alpha1.CloudInitNetworkData), ref.Name)
			}
		}
	}
	for i, ac := range vmi.Spec.AccessCredentials {
		if key := ac.SSHPublicKey; key != nil && key.Source.Secret != nil {
			pv.addSecret(v1alpha1.AccessCredentialMount(i), key.Source.Secret.SecretName)
		}
	}
	return pv, nil
}

// addSecret mounts Secret secret read-only at SecretDir/mount. The kubelet
// refuses to start the pod while the Secret is missing, and says so in a
// FailedMount event.
func (pv *podVolumes) addSecret(mount, secret string) {
	volume := "podvirt-" + mount
	pv.volumes = append(pv.volumes, corev1.Volume{Name: volume, VolumeSource: corev1.VolumeSource{
		Secret: &corev1.SecretVolumeSource{SecretName: secret, DefaultMode: ptr.To[int32](0o400)},
	}})
	pv.mounts = append(pv.mounts, corev1.VolumeMount{Name: volume, MountPath: path.Join(v1alpha1.SecretDir, mount), ReadOnly: true})
}

// addClaim mounts a PVC volume: a device node for a Block PVC, a directory
// holding disk.img for a Filesystem one.
func (pv *podVolumes) addClaim(name string, src *v1alpha1.PersistentVolumeClaimVolumeSource, claim volumeClaim) {
	readOnly := src.ReadOnly || claim.readOnly
	pv.volumes = append(pv.volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: src.ClaimName, ReadOnly: readOnly},
	}})
	mode := claim.mode
	status := v1alpha1.VolumeStatus{Name: name, ClaimName: src.ClaimName, VolumeMode: &mode}
	if mode == corev1.PersistentVolumeBlock {
		pv.devices = append(pv.devices, corev1.VolumeDevice{Name: name, DevicePath: v1alpha1.BlockDiskPath(name)})
		status.Path = v1alpha1.BlockDiskPath(name)
	} else {
		pv.mounts = append(pv.mounts, corev1.VolumeMount{Name: name, MountPath: v1alpha1.DiskDir + "/" + name, ReadOnly: readOnly})
		status.Path = v1alpha1.FilesystemDiskPath(name)
	}
	pv.statuses = append(pv.statuses, status)
}

// addContainerDisk mounts a containerDisk as an ephemeral PVC the
// disk.podvirt.io CSI driver fills from the image (an overlay on its node
// cache), deleted with the pod.
func (pv *podVolumes) addContainerDisk(vmi *v1alpha1.VirtualMachineInstance, podName, name string, src *v1alpha1.ContainerDiskSource, cfg *Config) {
	filesystem := corev1.PersistentVolumeFilesystem
	var class *string
	if cfg.ContainerDiskStorageClass != "" {
		class = &cfg.ContainerDiskStorageClass
	}
	labels := map[string]string{v1alpha1.VMINameLabel: vmi.Name, v1alpha1.CreatedByLabel: string(vmi.UID)}
	if vm := vmi.Labels[v1alpha1.VMNameLabel]; vm != "" {
		labels[v1alpha1.VMNameLabel] = vm // so its VM's controller watches the import
	}
	pv.volumes = append(pv.volumes, corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{
		Ephemeral: &corev1.EphemeralVolumeSource{VolumeClaimTemplate: &corev1.PersistentVolumeClaimTemplate{
			ObjectMeta: metav1.ObjectMeta{
				Labels:      labels,
				Annotations: map[string]string{v1alpha1.DiskSourceAnnotation: containerDiskSource(src.Image)},
			},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				VolumeMode:       &filesystem,
				StorageClassName: class,
				Resources: corev1.VolumeResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceStorage: cfg.ContainerDiskSize},
				},
			},
		}},
	}})
	pv.mounts = append(pv.mounts, corev1.VolumeMount{Name: name, MountPath: v1alpha1.DiskDir + "/" + name})
	pv.statuses = append(pv.statuses, v1alpha1.VolumeStatus{
		Name:       name,
		ClaimName:  podName + "-" + name, // the name Kubernetes gives a generic ephemeral volume's PVC
		VolumeMode: &filesystem,
		Path:       v1alpha1.FilesystemDiskPath(name),
	})
}

// launcherResources are the launcher container's requests — CPU by the
// allocation ratio, the guest's memory plus MemoryOverhead — and its
// device limits (also requested): tun always, KVM and vhost-net unless
// the guest is emulated.
func launcherResources(spec *v1alpha1.VirtualMachineInstanceSpec, cfg *Config) corev1.ResourceRequirements {
	memory := spec.Domain.Memory.Guest.DeepCopy()
	memory.Add(MemoryOverhead(spec, cfg.UseEmulation))
	cpu := resource.NewMilliQuantity(spec.Domain.CPU.VCPUs()*1000/cfg.CPUAllocationRatio, resource.DecimalSI)
	if cpu.MilliValue() < 10 {
		cpu = resource.NewMilliQuantity(10, resource.DecimalSI)
	}
	one := resource.MustParse("1")
	deviceLimits := corev1.ResourceList{
		v1alpha1.TunDevice: one,
	}
	if !cfg.UseEmulation {
		// Emulation is for nodes without KVM (developer machines), which
		// often lack vhost-net too; QEMU's virtio-net works without it.
		deviceLimits[v1alpha1.KVMDevice] = one
		deviceLimits[v1alpha1.VhostNetDevice] = one
	}
	requests := corev1.ResourceList{corev1.ResourceCPU: *cpu, corev1.ResourceMemory: memory}
	for k, v := range deviceLimits {
		requests[k] = v
	}
	return corev1.ResourceRequirements{Requests: requests, Limits: deviceLimits}
}

// podEmulated reports whether a launcher pod runs its guest under TCG (it
// asks for no KVM device).
func podEmulated(pod *corev1.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == v1alpha1.LauncherContainerName {
			_, kvm := c.Resources.Limits[v1alpha1.KVMDevice]
			return !kvm
		}
	}
	return false
}

// guestGrace is the VMI's termination grace period in seconds (default 30).
func guestGrace(spec *v1alpha1.VirtualMachineInstanceSpec) int64 {
	if spec.TerminationGracePeriodSeconds != nil {
		return *spec.TerminationGracePeriodSeconds
	}
	return 30
}

// launcherContainer runs the launcher, unprivileged, with the VMI's
// identity in its environment, the resources of launcherResources, and
// the pod's volumes.
func launcherContainer(vmi *v1alpha1.VirtualMachineInstance, cfg *Config, vols podVolumes) corev1.Container {
	return corev1.Container{
		Name:    v1alpha1.LauncherContainerName,
		Image:   cfg.LauncherImage,
		Command: cfg.LauncherCommand,
		Env: []corev1.EnvVar{
			{Name: "PODVIRT_VMI_NAMESPACE", Value: vmi.Namespace},
			{Name: "PODVIRT_VMI_NAME", Value: vmi.Name},
			{Name: "PODVIRT_VMI_UID", Value: string(vmi.UID)},
			{Name: "PODVIRT_POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			{Name: "PODVIRT_NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
		},
		Resources:     launcherResources(&vmi.Spec, cfg),
		VolumeMounts:  vols.mounts,
		VolumeDevices: vols.devices,
		SecurityContext: &corev1.SecurityContext{
			Privileged: new(false),
		},
	}
}

// multusNetworks is the k8s.v1.cni.cncf.io/networks annotation for vmi's
// Multus networks, in interface order, or "" when it has none.
func multusNetworks(vmi *v1alpha1.VirtualMachineInstance) (string, error) {
	byName := map[string]*v1alpha1.MultusNetwork{}
	for i := range vmi.Spec.Networks {
		if m := vmi.Spec.Networks[i].Multus; m != nil {
			byName[vmi.Spec.Networks[i].Name] = m
		}
	}
	var selections []multusSelection
	for _, iface := range vmi.Spec.Domain.Devices.Interfaces {
		m, ok := byName[iface.Name]
		if !ok {
			continue
		}
		sel := multusSelection{Name: m.NetworkName, Interface: podlink.InterfaceName(iface.Name), MAC: iface.MACAddress}
		if iface.IPAddress != "" {
			sel.IPs = []string{iface.IPAddress}
		}
		if ns, n, ok := strings.Cut(m.NetworkName, "/"); ok {
			sel.Namespace, sel.Name = ns, n
		}
		selections = append(selections, sel)
	}
	if len(selections) == 0 {
		return "", nil
	}
	out, err := json.Marshal(selections)
	if err != nil {
		return "", fmt.Errorf("multus networks of %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	return string(out), nil
}

// containerDiskSource is the disk.podvirt.io/source of a containerDisk
// image: docker:// unless the reference names its scheme.
func containerDiskSource(image string) string {
	if strings.Contains(image, "://") {
		return image
	}
	return "docker://" + image
}
