package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// VirtualMachineInstance is one run of a virtual machine: the controller
// gives it one launcher pod, the launcher runs the domain inside that pod,
// and the node daemon reports what the domain does.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmi;vmis,categories=all;podvirt
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=='Ready')].status`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.status.interfaces[0].ipAddress`
type VirtualMachineInstance struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineInstanceSpec   `json:"spec"`
	Status VirtualMachineInstanceStatus `json:"status,omitempty"`
}

// VirtualMachineInstanceList is a list of VirtualMachineInstances.
//
// +kubebuilder:object:root=true
type VirtualMachineInstanceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineInstance `json:"items"`
}

// VirtualMachineInstanceSpec describes the machine: its domain (CPU, memory,
// firmware, devices), where each disk's data comes from (volumes), which
// networks its NICs join, and where it may run.
//
// Every disk is backed by the volume of the same name and every interface
// by the network of the same name, as in KubeVirt.
//
// +kubebuilder:validation:XValidation:rule="!has(self.domain.devices.disks) || self.domain.devices.disks.all(d, has(self.volumes) && self.volumes.exists(v, v.name == d.name))",message="every disk needs a volume of the same name in spec.volumes: add the missing volume, or rename the disk",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.domain.devices.interfaces) || self.domain.devices.interfaces.all(i, has(self.networks) && self.networks.exists(n, n.name == i.name))",message="every interface needs a network of the same name in spec.networks: add the missing network, or rename the interface",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.networks) || self.networks.all(n, has(self.domain.devices.interfaces) && self.domain.devices.interfaces.exists(i, i.name == n.name))",message="every network needs an interface of the same name in spec.domain.devices.interfaces: add the interface, or remove the network",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.networks) || self.networks.filter(n, has(n.pod)).size() <= 1",message="at most one network can be the pod network (pod: {}); attach further networks through Multus",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.domain.devices.interfaces) || !has(self.networks) || self.domain.devices.interfaces.all(i, !has(i.binding) || self.networks.all(n, n.name != i.name || (i.binding == 'user') == has(n.pod)))",message="interface binding must match its network: 'user' for the pod network, 'tap' for a Multus network",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.domain.devices.interfaces) || self.domain.devices.interfaces.all(i, !has(i.ports) || (has(self.networks) && self.networks.exists(n, n.name == i.name && has(n.pod))))",message="interface ports are forwarded by the pod network only: remove ports from an interface on a Multus network (its guest has its own address there)",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.readinessProbe) || !(has(self.readinessProbe.tcpSocket) || has(self.readinessProbe.httpGet)) || (has(self.networks) && self.networks.exists(n, has(n.pod)))",message="readinessProbe: tcpSocket and httpGet probes reach the guest through the pod network: add it (networks: [{name: default, pod: {}}]) or probe with exec through the guest agent",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.livenessProbe) || !(has(self.livenessProbe.tcpSocket) || has(self.livenessProbe.httpGet)) || (has(self.networks) && self.networks.exists(n, has(n.pod)))",message="livenessProbe: tcpSocket and httpGet probes reach the guest through the pod network: add it (networks: [{name: default, pod: {}}]) or probe with exec through the guest agent",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!has(self.accessCredentials) || (has(self.volumes) && self.volumes.exists(v, has(v.cloudInitNoCloud)))",message="accessCredentials reach the guest through NoCloud: add a cloudInitNoCloud volume (and disk) to the VM",reason=FieldValueInvalid
type VirtualMachineInstanceSpec struct {
	// Domain is the virtual hardware.
	Domain DomainSpec `json:"domain"`

	// Volumes are the sources of the disks' data, one per disk, matched by
	// name.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(v, self.exists_one(w, w.name == v.name))",message="volume names must be unique: two volumes have the same name",reason=FieldValueInvalid
	Volumes []Volume `json:"volumes,omitempty"`

	// Networks are the networks the interfaces join, one per interface,
	// matched by name.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(n, self.exists_one(m, m.name == n.name))",message="network names must be unique: two networks have the same name",reason=FieldValueInvalid
	Networks []Network `json:"networks,omitempty"`

	// NodeSelector must match a node's labels for the VM to run there.
	//
	// +optional
	NodeSelector map[string]string `json:"nodeSelector,omitempty"`

	// Affinity constrains which nodes the VM runs on, as for a pod.
	//
	// +optional
	Affinity *corev1.Affinity `json:"affinity,omitempty"`

	// Tolerations let the VM run on nodes with matching taints.
	//
	// +optional
	// +listType=atomic
	Tolerations []corev1.Toleration `json:"tolerations,omitempty"`

	// EvictionStrategy is what happens when the VMI's node is drained:
	// LiveMigrate moves it to another node first (its launcher pod cannot
	// be evicted until then, so `kubectl drain` waits); None lets the
	// eviction stop it. Empty: the cluster's default (chart value
	// controller.evictionStrategy).
	//
	// +optional
	EvictionStrategy *EvictionStrategy `json:"evictionStrategy,omitempty"`

	// TerminationGracePeriodSeconds is how long the guest gets to shut down
	// after an ACPI power-off request before it is stopped hard. Default 30.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=86400
	TerminationGracePeriodSeconds *int64 `json:"terminationGracePeriodSeconds,omitempty"`

	// AccessCredentials put credentials from Secrets into the guest, as in
	// KubeVirt: SSH public keys through the cloud-init NoCloud disk.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=8
	AccessCredentials []AccessCredential `json:"accessCredentials,omitempty"`

	// ReadinessProbe decides the VMI's Ready condition (and so whether
	// Services and L2 Services send it traffic): Ready only while it
	// passes.
	//
	// +optional
	ReadinessProbe *Probe `json:"readinessProbe,omitempty"`
	// LivenessProbe stops a guest that keeps failing it: the VMI fails
	// (reason LivenessProbeFailed) and the VM's run strategy starts it
	// again.
	//
	// +optional
	// +kubebuilder:validation:XValidation:rule="!has(self.successThreshold) || self.successThreshold <= 1",message="a liveness probe's successThreshold must be 1",reason=FieldValueInvalid
	LivenessProbe *Probe `json:"livenessProbe,omitempty"`
}

// AccessCredential is one credential for the guest.
type AccessCredential struct {
	// SSHPublicKey adds the public keys in a Secret to the guest's
	// authorized keys.
	SSHPublicKey *SSHPublicKeyAccessCredential `json:"sshPublicKey"`
}

// SSHPublicKeyAccessCredential is a Secret of SSH public keys and how they
// reach the guest.
type SSHPublicKeyAccessCredential struct {
	// Source is the Secret: every key of it holds public keys, one per
	// line (authorized_keys format).
	Source SSHPublicKeyAccessCredentialSource `json:"source"`
	// PropagationMethod is how the keys reach the guest.
	PropagationMethod SSHPublicKeyAccessCredentialPropagationMethod `json:"propagationMethod"`
}

// SSHPublicKeyAccessCredentialSource names where the keys are.
type SSHPublicKeyAccessCredentialSource struct {
	// Secret in the VMI's namespace.
	Secret *AccessCredentialSecretSource `json:"secret"`
}

// AccessCredentialSecretSource is a Secret in the VMI's namespace.
type AccessCredentialSecretSource struct {
	// SecretName is the Secret's name.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	SecretName string `json:"secretName"`
}

// SSHPublicKeyAccessCredentialPropagationMethod is how keys reach the
// guest.
type SSHPublicKeyAccessCredentialPropagationMethod struct {
	// NoCloud adds the keys to the ssh_authorized_keys of the cloud-init
	// user-data on the NoCloud disk at boot (the user-data must be
	// #cloud-config, or empty). A change to the Secret applies at the next
	// start.
	NoCloud *NoCloudPropagation `json:"noCloud"`
}

// NoCloudPropagation has no settings.
type NoCloudPropagation struct{}

// MinGuestMemory is the smallest guest memory the API accepts.
const MinGuestMemory = "32Mi"

// DomainSpec is the virtual hardware of a VM.
type DomainSpec struct {
	// CPU is the guest's CPU topology; nil means one socket, one core, one
	// thread.
	//
	// +optional
	CPU *CPU `json:"cpu,omitempty"`

	// Memory is the guest's memory.
	Memory Memory `json:"memory"`

	// Machine is the emulated machine; nil means q35.
	//
	// +optional
	Machine *Machine `json:"machine,omitempty"`

	// Firmware is how the guest boots; nil means BIOS from the disks.
	//
	// +optional
	Firmware *Firmware `json:"firmware,omitempty"`

	// Devices are the guest's disks, NICs and consoles.
	//
	// +optional
	Devices Devices `json:"devices,omitempty"`
}

// CPU is the guest's CPU topology. The guest gets sockets × cores × threads
// vCPUs. A field left at zero in Go means 1 (the API server defaults it).
type CPU struct {
	// Sockets is the number of CPU sockets. Default 1.
	//
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Maximum=64
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="cpu.sockets must be at least 1 (leave it out for 1)",reason=FieldValueInvalid
	Sockets uint32 `json:"sockets,omitempty"`

	// Cores is the number of cores per socket. Default 1.
	//
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Maximum=256
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="cpu.cores must be at least 1 (leave it out for 1)",reason=FieldValueInvalid
	Cores uint32 `json:"cores,omitempty"`

	// Threads is the number of threads per core. Default 1.
	//
	// +optional
	// +kubebuilder:default=1
	// +kubebuilder:validation:Maximum=8
	// +kubebuilder:validation:XValidation:rule="self >= 1",message="cpu.threads must be at least 1 (leave it out for 1)",reason=FieldValueInvalid
	Threads uint32 `json:"threads,omitempty"`

	// Model is the CPU model libvirt presents ("host-model",
	// "host-passthrough" or a named model). Empty means the hypervisor's
	// default.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Model string `json:"model,omitempty"`
}

// VCPUs is the number of vCPUs the topology gives, counting a zero field as 1.
func (c *CPU) VCPUs() int64 {
	if c == nil {
		return 1
	}
	one := func(v uint32) int64 {
		if v == 0 {
			return 1
		}
		return int64(v)
	}
	return one(c.Sockets) * one(c.Cores) * one(c.Threads)
}

// Memory is the guest's memory.
type Memory struct {
	// Guest is the memory the guest sees, at least 32Mi.
	//
	// +kubebuilder:validation:XValidation:rule="quantity(string(self)).compareTo(quantity('32Mi')) >= 0",message="memory.guest must be at least 32Mi",reason=FieldValueInvalid
	Guest resource.Quantity `json:"guest"`
}

// Machine is the emulated machine type.
type Machine struct {
	// Type is the QEMU machine type, e.g. "q35" or "pc". Default q35.
	//
	// +optional
	// +kubebuilder:default=q35
	// +kubebuilder:validation:MaxLength=64
	// +kubebuilder:validation:Pattern=`^[a-zA-Z0-9._-]+$`
	Type string `json:"type,omitempty"`
}

// Bootloader is the firmware the guest boots with.
//
// +kubebuilder:validation:Enum=bios;uefi
type Bootloader string

// Bootloaders.
const (
	BootloaderBIOS Bootloader = "bios"
	BootloaderUEFI Bootloader = "uefi"
)

// Firmware is how the guest boots.
type Firmware struct {
	// Bootloader is bios (SeaBIOS) or uefi (OVMF). Default bios.
	//
	// +optional
	// +kubebuilder:default=bios
	Bootloader Bootloader `json:"bootloader,omitempty"`

	// KernelBoot boots a kernel directly instead of a disk's bootloader.
	//
	// +optional
	KernelBoot *KernelBoot `json:"kernelBoot,omitempty"`

	// Serial is the SMBIOS system serial number the guest sees.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=64
	Serial string `json:"serial,omitempty"`
}

// KernelBoot is direct kernel boot: QEMU loads the kernel and initrd from
// files and passes the command line, bypassing any bootloader. The paths are
// absolute paths in the launcher pod's filesystem (for instance files baked
// into the launcher image, as the test guest does).
type KernelBoot struct {
	// KernelPath is the kernel image.
	//
	// +kubebuilder:validation:MinLength=2
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="kernelBoot.kernelPath must be an absolute path in the launcher pod",reason=FieldValueInvalid
	KernelPath string `json:"kernelPath"`

	// InitrdPath is the initial ramdisk, if any.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	// +kubebuilder:validation:XValidation:rule="self.startsWith('/')",message="kernelBoot.initrdPath must be an absolute path in the launcher pod",reason=FieldValueInvalid
	InitrdPath string `json:"initrdPath,omitempty"`

	// Cmdline is the kernel command line.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=4096
	Cmdline string `json:"cmdline,omitempty"`
}

// Devices are the guest's devices.
type Devices struct {
	// Disks are the guest's disks, each backed by the volume of the same
	// name.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +kubebuilder:validation:XValidation:rule="self.all(d, self.exists_one(e, e.name == d.name))",message="disk names must be unique: two disks have the same name",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule="self.all(d, !has(d.bootOrder) || self.exists_one(e, has(e.bootOrder) && e.bootOrder == d.bootOrder))",message="each disk's bootOrder must be unique: only one disk can boot first (bootOrder 1), the others need distinct higher numbers or none",reason=FieldValueInvalid
	Disks []Disk `json:"disks,omitempty"`

	// Interfaces are the guest's NICs, each joined to the network of the
	// same name.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=16
	// +kubebuilder:validation:XValidation:rule="self.all(i, self.exists_one(j, j.name == i.name))",message="interface names must be unique: two interfaces have the same name",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule="self.all(i, !has(i.macAddress) || self.exists_one(j, has(j.macAddress) && j.macAddress.lowerAscii() == i.macAddress.lowerAscii()))",message="each interface needs its own macAddress: two interfaces have the same one",reason=FieldValueInvalid
	Interfaces []Interface `json:"interfaces,omitempty"`

	// AutoattachSerialConsole gives the guest a serial console (ttyS0) the
	// node daemon can proxy. Default true.
	//
	// +optional
	AutoattachSerialConsole *bool `json:"autoattachSerialConsole,omitempty"`

	// VNC gives the guest a graphics device reachable over VNC. Default
	// false.
	//
	// +optional
	VNC *bool `json:"vnc,omitempty"`

	// AutoattachMemBalloon gives the guest a virtio memory balloon whose
	// driver reports the guest's available and unused memory (the
	// podvirt_vmi_memory_* metrics). Default true.
	//
	// +optional
	AutoattachMemBalloon *bool `json:"autoattachMemBalloon,omitempty"`

	// AutoattachPodInterface gives a VM that lists no interfaces and no
	// networks one NIC on the pod network (named default), as KubeVirt
	// does; the controller writes it into the VM's spec. Default true.
	//
	// +optional
	AutoattachPodInterface *bool `json:"autoattachPodInterface,omitempty"`
}

// PodInterface is the spec's interface on the pod network, or nil.
func (s *VirtualMachineInstanceSpec) PodInterface() *Interface {
	for _, n := range s.Networks {
		if n.Pod == nil {
			continue
		}
		for i := range s.Domain.Devices.Interfaces {
			if s.Domain.Devices.Interfaces[i].Name == n.Name {
				return &s.Domain.Devices.Interfaces[i]
			}
		}
	}
	return nil
}

// SerialConsole reports whether the guest gets a serial console.
func (d *Devices) SerialConsole() bool {
	return d.AutoattachSerialConsole == nil || *d.AutoattachSerialConsole
}

// PodInterfaceByDefault reports whether a VM without interfaces gets one
// on the pod network.
func (d *Devices) PodInterfaceByDefault() bool {
	return d.AutoattachPodInterface == nil || *d.AutoattachPodInterface
}

// MemBalloon reports whether the guest gets a memory balloon.
func (d *Devices) MemBalloon() bool {
	return d.AutoattachMemBalloon == nil || *d.AutoattachMemBalloon
}

// DiskBus is the bus a disk is attached to.
//
// +kubebuilder:validation:Enum=virtio;sata;scsi
type DiskBus string

// Disk buses.
const (
	DiskBusVirtio DiskBus = "virtio"
	DiskBusSATA   DiskBus = "sata"
	DiskBusSCSI   DiskBus = "scsi"
)

// Disk is one guest disk.
type Disk struct {
	// Name is the disk's name, also the name of the volume that backs it.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// Bus is virtio, sata or scsi. Default virtio.
	//
	// +optional
	// +kubebuilder:default=virtio
	Bus DiskBus `json:"bus,omitempty"`

	// BootOrder is the disk's place in the boot order, 1 first. Disks
	// without one are not tried unless no device has a boot order, in which
	// case the first disk boots.
	//
	// +optional
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=64
	BootOrder *uint `json:"bootOrder,omitempty"`

	// ReadOnly attaches the disk read-only.
	//
	// +optional
	ReadOnly bool `json:"readOnly,omitempty"`

	// Serial is the serial number the guest sees (so it finds the disk
	// under /dev/disk/by-id).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=20
	// +kubebuilder:validation:Pattern=`^[A-Za-z0-9_.+-]+$`
	Serial string `json:"serial,omitempty"`
}

// InterfaceModel is the NIC model the guest sees.
//
// +kubebuilder:validation:Enum=virtio;e1000;e1000e;rtl8139
type InterfaceModel string

// NIC models.
const (
	InterfaceModelVirtio  InterfaceModel = "virtio"
	InterfaceModelE1000   InterfaceModel = "e1000"
	InterfaceModelE1000E  InterfaceModel = "e1000e"
	InterfaceModelRTL8139 InterfaceModel = "rtl8139"
)

// InterfaceBinding is how a guest NIC is joined to the pod's side of its
// network.
//
// +kubebuilder:validation:Enum=user;tap
type InterfaceBinding string

// Interface bindings.
const (
	// InterfaceBindingUser is user-mode networking (passt, or QEMU's slirp)
	// over the launcher pod's own interface: no privilege needed. The only
	// binding of the pod network, and its default.
	InterfaceBindingUser InterfaceBinding = "user"
	// InterfaceBindingTap hands QEMU the tap that the podvirt-l2 CNI plugin
	// built inside the pod for this network ("guest": "tap"). The only
	// binding of a Multus network, and its default.
	InterfaceBindingTap InterfaceBinding = "tap"
)

// Interface is one guest NIC.
type Interface struct {
	// Name is the interface's name, also the name of its network.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	// MACAddress is the guest NIC's MAC, e.g. "02:00:00:00:00:01"; empty
	// means one is generated.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=17
	// +kubebuilder:validation:XValidation:rule="self.matches('^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$')",message="macAddress must be six colon-separated hex bytes, like 02:00:00:00:00:01",reason=FieldValueInvalid
	// +kubebuilder:validation:XValidation:rule="!self.matches('^([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}$') || self.substring(1, 2).matches('[02468aceACE]')",message="macAddress must be a unicast address: the first byte must be even, like 02:…",reason=FieldValueInvalid
	MACAddress string `json:"macAddress,omitempty"`

	// IPAddress is the guest's address on its Multus network, e.g.
	// "192.168.200.20" or "192.168.200.20/24", inside the range of the
	// network's IPAM. In a VM, empty means the controller reserves one for
	// the VM and records it here with the network's prefix; it stays the
	// VM's across restarts until the VM is deleted.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=43
	// +kubebuilder:validation:XValidation:rule="isIP(self) || isCIDR(self)",message="ipAddress must be an IP address, like 192.168.200.20, optionally with its prefix, like 192.168.200.20/24",reason=FieldValueInvalid
	IPAddress string `json:"ipAddress,omitempty"`

	// Model is the NIC model. Default virtio.
	//
	// +optional
	// +kubebuilder:default=virtio
	Model InterfaceModel `json:"model,omitempty"`

	// Binding is how the NIC reaches its network: user for the pod network,
	// tap for a Multus network. Empty means the network's only binding.
	//
	// +optional
	Binding InterfaceBinding `json:"binding,omitempty"`

	// Ports are the guest's ports the pod network forwards from the launcher
	// pod's address (KubeVirt's interfaces[].ports), so a Service selecting
	// the VMI reaches them; none listed forwards every TCP and UDP port.
	// Only for the pod network.
	//
	// +optional
	// +listType=atomic
	// +kubebuilder:validation:MaxItems=64
	Ports []Port `json:"ports,omitempty"`
}

// Port is a guest port the pod network forwards.
type Port struct {
	// Name names the port, as in a Service's targetPort.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=15
	Name string `json:"name,omitempty"`

	// Protocol is TCP or UDP. Default TCP.
	//
	// +optional
	// +kubebuilder:default=TCP
	// +kubebuilder:validation:Enum=TCP;UDP
	Protocol corev1.Protocol `json:"protocol,omitempty"`

	// Port is the port number, in the guest and on the pod.
	//
	// +kubebuilder:validation:Minimum=1
	// +kubebuilder:validation:Maximum=65535
	Port int32 `json:"port"`
}

// Volume is the source of one disk's data.
//
// +kubebuilder:validation:XValidation:rule="[has(self.persistentVolumeClaim), has(self.containerDisk), has(self.cloudInitNoCloud)].filter(x, x).size() == 1",message="a volume needs exactly one source: persistentVolumeClaim, containerDisk or cloudInitNoCloud",reason=FieldValueInvalid
type Volume struct {
	// Name is the volume's name, also the name of the disk it backs.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	VolumeSource `json:",inline"`
}

// VolumeSource is where a disk's data comes from. Exactly one field is set.
type VolumeSource struct {
	// PersistentVolumeClaim is a PVC in the VM's namespace (Filesystem
	// volume mode: the disk is the file disk.img on it; Block: the device).
	//
	// +optional
	PersistentVolumeClaim *PersistentVolumeClaimVolumeSource `json:"persistentVolumeClaim,omitempty"`

	// ContainerDisk is an ephemeral disk imported from an OCI image in
	// containerDisk layout (the image file under /disk/). Writes are lost
	// when the VMI ends.
	//
	// +optional
	ContainerDisk *ContainerDiskSource `json:"containerDisk,omitempty"`

	// CloudInitNoCloud is a cloud-init NoCloud seed disk built from the
	// given data.
	//
	// +optional
	CloudInitNoCloud *CloudInitNoCloudSource `json:"cloudInitNoCloud,omitempty"`
}

// PersistentVolumeClaimVolumeSource names a PVC in the VM's namespace.
type PersistentVolumeClaimVolumeSource struct {
	// ClaimName is the PVC's name.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=253
	ClaimName string `json:"claimName"`

	// ReadOnly attaches the PVC read-only.
	//
	// +optional
	ReadOnly bool `json:"readOnly,omitempty"`
}

// ContainerDiskSource is an ephemeral disk from an OCI image.
type ContainerDiskSource struct {
	// Image is the image reference, e.g. "quay.io/containerdisks/fedora:40"
	// (docker:// is implied).
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=1024
	Image string `json:"image"`
}

// CloudInitNoCloudSource is the data of a cloud-init NoCloud seed disk.
//
// +kubebuilder:validation:XValidation:rule="has(self.userData) || has(self.networkData) || has(self.secretRef) || has(self.networkDataSecretRef)",message="cloudInitNoCloud needs userData, networkData or a Secret for either (secretRef, networkDataSecretRef)",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="!(has(self.userData) && has(self.secretRef))",message="cloudInitNoCloud: give userData or secretRef (a Secret with the user-data), not both",reason=FieldValueInvalid
// +kubebuilder:validation:XValidation:rule="!(has(self.networkData) && has(self.networkDataSecretRef))",message="cloudInitNoCloud: give networkData or networkDataSecretRef, not both",reason=FieldValueInvalid
type CloudInitNoCloudSource struct {
	// UserData is the cloud-init user-data (e.g. "#cloud-config ...").
	//
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	UserData string `json:"userData,omitempty"`

	// NetworkData is the cloud-init network-config (version 1 or 2).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=65536
	NetworkData string `json:"networkData,omitempty"`

	// UserDataSecretRef takes the user-data from the Secret's key
	// "userdata" (or "userData") instead, so none sits in the VM's spec
	// (KubeVirt's secretRef).
	//
	// +optional
	UserDataSecretRef *corev1.LocalObjectReference `json:"secretRef,omitempty"`

	// NetworkDataSecretRef takes the network-config from the Secret's key
	// "networkdata" (or "networkData").
	//
	// +optional
	NetworkDataSecretRef *corev1.LocalObjectReference `json:"networkDataSecretRef,omitempty"`
}

// Network is a network the VM's interface of the same name joins.
//
// +kubebuilder:validation:XValidation:rule="has(self.pod) != has(self.multus)",message="a network needs exactly one of pod or multus",reason=FieldValueInvalid
type Network struct {
	// Name is the network's name, also the name of its interface.
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`

	NetworkSource `json:",inline"`
}

// NetworkSource is what a network is. Exactly one field is set.
type NetworkSource struct {
	// Pod is the launcher pod's own network, reached through user-mode
	// networking.
	//
	// +optional
	Pod *PodNetwork `json:"pod,omitempty"`

	// Multus is a secondary network from a Multus
	// NetworkAttachmentDefinition, reached at L2.
	//
	// +optional
	Multus *MultusNetwork `json:"multus,omitempty"`
}

// PodNetwork is the launcher pod's own network.
type PodNetwork struct {
	// VMNetworkCIDR is the guest-side subnet of user-mode networking, when
	// the default does not suit.
	//
	// +optional
	// +kubebuilder:validation:MaxLength=43
	VMNetworkCIDR string `json:"vmNetworkCIDR,omitempty"`
}

// MultusNetwork names a NetworkAttachmentDefinition.
type MultusNetwork struct {
	// NetworkName is the NAD, as "name" (in the VM's namespace) or
	// "namespace/name".
	//
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=317
	// +kubebuilder:validation:Pattern=`^([a-z0-9]([-a-z0-9]*[a-z0-9])?/)?[a-z0-9]([-a-z0-9.]*[a-z0-9])?$`
	NetworkName string `json:"networkName"`
}

// EvictionStrategy says what a node drain does to a VMI.
//
// +kubebuilder:validation:Enum=LiveMigrate;None
type EvictionStrategy string

// Eviction strategies.
const (
	EvictionStrategyLiveMigrate EvictionStrategy = "LiveMigrate"
	EvictionStrategyNone        EvictionStrategy = "None"
)

// VirtualMachineInstancePhase is where a VMI is in its life.
type VirtualMachineInstancePhase string

// VMI phases.
const (
	// VMIPhaseUnset is a VMI the controller has not seen yet.
	VMIPhaseUnset VirtualMachineInstancePhase = ""
	// Pending: accepted; the launcher pod does not exist yet.
	Pending VirtualMachineInstancePhase = "Pending"
	// Scheduling: the launcher pod exists but is not running yet.
	Scheduling VirtualMachineInstancePhase = "Scheduling"
	// Scheduled: the launcher pod runs on a node; the domain is not
	// running yet.
	Scheduled VirtualMachineInstancePhase = "Scheduled"
	// Running: the node daemon reports the domain running (or paused).
	Running VirtualMachineInstancePhase = "Running"
	// Succeeded: the guest shut down by itself (or was stopped) cleanly.
	Succeeded VirtualMachineInstancePhase = "Succeeded"
	// Failed: the domain crashed, the launcher failed, or the launcher pod
	// was lost.
	Failed VirtualMachineInstancePhase = "Failed"
	// Unknown: the VMI's state cannot be found out.
	Unknown VirtualMachineInstancePhase = "Unknown"
)

// IsFinal reports whether a VMI in phase p will never run again.
func (p VirtualMachineInstancePhase) IsFinal() bool { return p == Succeeded || p == Failed }

// DomainState is the state of the libvirt domain, as the node daemon
// reports it.
//
// +kubebuilder:validation:Enum=Starting;Running;Paused;Shutdown;Crashed
type DomainState string

// Domain states.
const (
	// DomainStarting: the launcher is defining or starting the domain.
	DomainStarting DomainState = "Starting"
	// DomainRunning: QEMU runs the guest.
	DomainRunning DomainState = "Running"
	// DomainPaused: the guest is paused.
	DomainPaused DomainState = "Paused"
	// DomainShutdown: the guest powered off, or was stopped, cleanly
	// (the VMI Succeeds).
	DomainShutdown DomainState = "Shutdown"
	// DomainCrashed: QEMU or the guest failed (the VMI Fails).
	DomainCrashed DomainState = "Crashed"
)

// DomainStates are all domain states, as the CRD's enum lists them.
var DomainStates = []DomainState{DomainStarting, DomainRunning, DomainPaused, DomainShutdown, DomainCrashed}

// DomainReasonPausedByUser is the DomainStatus.Reason of a guest paused on
// request (the PausedAnnotation); the controller gives the VMI's Paused
// condition this reason.
const DomainReasonPausedByUser = "PausedByUser"

// DomainReasonUnknown is the DomainStatus.Reason for a libvirt reason code
// the launcher has no word for: reasons are words only, as the conditions
// the controller copies them into must be.
const DomainReasonUnknown = "Unknown"

// VirtualMachineInstanceStatus is what the controller and the node daemon
// observe.
//
// Who writes what: the node daemon (podvirt-handler) writes Domain,
// Interfaces, GuestOSInfo and its part of SnapshotState, with a merge
// patch of just those fields;
// everything else is written by the controller, which derives Phase from the
// launcher pod together with Domain.State.
type VirtualMachineInstanceStatus struct {
	// Phase is where the VMI is in its life.
	//
	// +optional
	Phase VirtualMachineInstancePhase `json:"phase,omitempty"`

	// PhaseTransitionTimestamps records when the VMI entered each phase.
	//
	// +optional
	// +listType=atomic
	PhaseTransitionTimestamps []VirtualMachineInstancePhaseTransitionTimestamp `json:"phaseTransitionTimestamps,omitempty"`

	// Startup says where the VMI's start went, step by step, written by
	// the node daemon once the domain started (a VMI that arrived by
	// migration has none).
	//
	// +optional
	// +listType=atomic
	Startup []StartupStep `json:"startup,omitempty"`

	// Reason is a CamelCase reason for a Failed phase.
	//
	// +optional
	Reason string `json:"reason,omitempty"`

	// Message says in words why the VMI is in its phase, when it is not
	// obvious.
	//
	// +optional
	Message string `json:"message,omitempty"`

	// NodeName is the node the launcher pod runs on.
	//
	// +optional
	NodeName string `json:"nodeName,omitempty"`

	// LauncherPod is the name of the VMI's launcher pod.
	//
	// +optional
	LauncherPod string `json:"launcherPod,omitempty"`

	// Readiness is the readiness probe's last verdict, from the launcher;
	// absent without a probe or before its first verdict.
	//
	// +optional
	Readiness *ProbeStatus `json:"readiness,omitempty"`

	// Conditions: Ready (the guest runs, is not paused, the launcher pod
	// is ready and the readiness probe, if any, passes), Paused (True while the guest is paused, its reason
	// why, e.g. PausedByUser; absent otherwise), PodScheduled (copied from
	// the launcher pod), Synchronized (False when the controller cannot
	// make the launcher pod).
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`

	// VolumeStatus says where each volume's disk is inside the launcher pod.
	// Written by the controller when it creates the launcher pod.
	//
	// +optional
	// +listType=map
	// +listMapKey=name
	VolumeStatus []VolumeStatus `json:"volumeStatus,omitempty"`

	// MigrationState is the VMI's migration in flight, or its last one.
	//
	// +optional
	MigrationState *MigrationState `json:"migrationState,omitempty"`

	// SnapshotState is the online snapshot of the VMI's disks in flight,
	// or its last one.
	//
	// +optional
	SnapshotState *SnapshotState `json:"snapshotState,omitempty"`

	// Domain is the domain's state, written by the node daemon.
	//
	// +optional
	Domain *DomainStatus `json:"domain,omitempty"`

	// Interfaces are the guest's NICs and their addresses, written by the
	// node daemon.
	//
	// +optional
	// +listType=atomic
	Interfaces []VirtualMachineInstanceNetworkInterface `json:"interfaces,omitempty"`

	// GuestOSInfo is what the guest says about itself, where known; written
	// by the node daemon.
	//
	// +optional
	GuestOSInfo *GuestOSInfo `json:"guestOSInfo,omitempty"`
}

// VirtualMachineInstancePhaseTransitionTimestamp is when a VMI entered a
// phase.
type VirtualMachineInstancePhaseTransitionTimestamp struct {
	Phase                    VirtualMachineInstancePhase `json:"phase"`
	PhaseTransitionTimestamp metav1.Time                 `json:"phaseTransitionTimestamp"`
}

// StartupStep is one step of a VMI's start: when it ended, and how long it
// took from the end of the step before it (the first: from the VMI's
// creation). Steps timed by the API server (Scheduled, and the VMI's
// creation) have second precision; the node's, milliseconds.
type StartupStep struct {
	// Name is the step: Scheduled (the launcher pod bound to a node,
	// after its disks were made and bound there), LauncherStarted
	// (volumes mounted, pod sandbox and networks, the container started),
	// LibvirtdReady (the launcher's own libvirtd answers),
	// NodeDaemonConnected (the node daemon found the launcher's socket),
	// DomainDefined (Start arrived, the domain rendered and defined),
	// DomainStarted (QEMU runs the guest).
	Name string `json:"name"`
	// Time is when the step ended.
	Time metav1.MicroTime `json:"time"`
	// Milliseconds is how long the step took.
	Milliseconds int64 `json:"milliseconds"`
}

// VolumeStatus says where a volume's disk is in the launcher pod.
type VolumeStatus struct {
	// Name is the volume's name.
	Name string `json:"name"`
	// ClaimName is the PVC behind the volume, for PVCs and containerDisks.
	//
	// +optional
	ClaimName string `json:"claimName,omitempty"`
	// VolumeMode is Filesystem or Block, for PVC-backed volumes.
	//
	// +optional
	VolumeMode *corev1.PersistentVolumeMode `json:"volumeMode,omitempty"`
	// Path is the disk image file (Filesystem) or block device (Block)
	// inside the launcher pod; empty for volumes the launcher builds itself
	// (cloudInitNoCloud).
	//
	// +optional
	Path string `json:"path,omitempty"`
}

// DomainStatus is the domain's state as the node daemon last saw it.
type DomainStatus struct {
	// State is the domain's state.
	State DomainState `json:"state"`
	// Reason is why the domain is in its state, as a CamelCase word made
	// from libvirt's event or state reason, e.g. "PausedByUser", "IOError",
	// "Shutdown" or "Crashed"; "Unknown" for a code podvirt has no word for.
	//
	// +optional
	Reason string `json:"reason,omitempty"`
	// Message is a human-readable detail, e.g. QEMU's last error.
	//
	// +optional
	Message string `json:"message,omitempty"`
	// LastTransitionTime is when State last changed.
	//
	// +optional
	LastTransitionTime metav1.Time `json:"lastTransitionTime,omitempty"`
	// GuestAgentConnected says the guest's agent (qemu-guest-agent) is
	// connected; the controller shows it as the AgentConnected condition.
	//
	// +optional
	GuestAgentConnected bool `json:"guestAgentConnected,omitempty"`
}

// VirtualMachineInstanceNetworkInterface is a guest NIC as observed.
type VirtualMachineInstanceNetworkInterface struct {
	// Name is the interface's name in the spec.
	//
	// +optional
	Name string `json:"name,omitempty"`
	// IP is the primary address.
	//
	// +optional
	IP string `json:"ipAddress,omitempty"`
	// IPs are all addresses, primary first.
	//
	// +optional
	// +listType=atomic
	IPs []string `json:"ipAddresses,omitempty"`
	// MAC is the guest NIC's MAC address.
	//
	// +optional
	MAC string `json:"mac,omitempty"`
	// InterfaceName is the NIC's name inside the guest, when known.
	//
	// +optional
	InterfaceName string `json:"interfaceName,omitempty"`
}

// GuestOSInfo is what the guest reports about its OS.
type GuestOSInfo struct {
	// +optional
	Name string `json:"name,omitempty"`
	// +optional
	ID string `json:"id,omitempty"`
	// +optional
	Version string `json:"version,omitempty"`
	// +optional
	KernelRelease string `json:"kernelRelease,omitempty"`
	// +optional
	PrettyName string `json:"prettyName,omitempty"`
}
