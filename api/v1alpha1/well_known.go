package v1alpha1

import (
	"fmt"
	"path"
)

// Extended resources the node daemon's device plugin advertises, one per
// device node the launcher needs. The launcher pod requests 1 of each, so it
// gets the devices without being privileged.
const (
	// KVMDevice gives the pod /dev/kvm.
	KVMDevice = "devices.podvirt.io/kvm"
	// TunDevice gives the pod /dev/net/tun.
	TunDevice = "devices.podvirt.io/tun"
	// VhostNetDevice gives the pod /dev/vhost-net.
	VhostNetDevice = "devices.podvirt.io/vhost-net"
)

// Labels the controller puts on launcher pods, VMIs and PVCs.
const (
	// AppLabel marks launcher pods: podvirt.io/app=launcher.
	AppLabel = "podvirt.io/app"
	// AppLauncher is the AppLabel value of launcher pods.
	AppLauncher = "launcher"
	// CreatedByLabel is the UID of the VMI a launcher pod belongs to.
	CreatedByLabel = "podvirt.io/created-by"
	// VMINameLabel is the name of the VMI a launcher pod belongs to.
	VMINameLabel = "podvirt.io/vmi"
	// VMNameLabel is the name of the VM a VMI, disk-template PVC or
	// containerDisk PVC belongs to.
	VMNameLabel = "podvirt.io/vm"
)

// CSIDriverName is podvirt's CSI driver.
const CSIDriverName = "disk.podvirt.io"

// MigrationLabel on a migration's target pod and claims is the migration's name.
const MigrationLabel = "podvirt.io/migration"

// EvacuationLabel on a migration the controller made to empty a drained
// node is that node's name.
const EvacuationLabel = "podvirt.io/evacuation"

// Annotations.
const (
	// DiskSourceAnnotation on a PVC is the image the CSI driver fills it
	// with: docker://registry/repo:tag or https://host/disk.qcow2.
	DiskSourceAnnotation = "disk.podvirt.io/source"
	// DiskChecksumAnnotation on a PVC is the expected checksum of the
	// source image, e.g. sha256:<hex>.
	DiskChecksumAnnotation = "disk.podvirt.io/checksum"
	// DiskBlankAnnotation "true" on a PVC asks the CSI driver for an empty
	// disk even when its StorageClass names a default source (a live
	// migration's target of a disk that is not an overlay).
	DiskBlankAnnotation = "disk.podvirt.io/blank"
	// VolumeContextDigest and VolumeContextOverlay are keys of a
	// disk.podvirt.io PV's volumeAttributes: the digest of the image the
	// disk was made from, and "true" when the disk is a qcow2 overlay on
	// that image (a migration then copies only the overlay).
	VolumeContextDigest  = "digest"
	VolumeContextOverlay = "overlay"
	// VolumeContextSource is the image the disk was made from.
	VolumeContextSource = "source"
	// DiskNameAnnotation on a PVC a migration made is the name of the
	// disk's first claim, which later migrations name theirs after.
	DiskNameAnnotation = "podvirt.io/disk-name"
	// ImportPhaseAnnotation on a PVC is how filling it from its source
	// goes (a DiskImportPhase). The CSI driver writes it, as CDI writes
	// its claims' import state, so the controller (and kubectl) see it
	// without reading events.
	ImportPhaseAnnotation = "disk.podvirt.io/import-phase"
	// ImportProgressAnnotation on a PVC is the share of the image that has
	// arrived, as "42.0%", or "" while the image's size is unknown. It
	// keeps its last value while the import is Retrying or Failed.
	ImportProgressAnnotation = "disk.podvirt.io/import-progress"
	// ImportMirrorAnnotation on a PVC is where the image's bytes come from
	// while it is Importing: a registry host, or the https URL.
	ImportMirrorAnnotation = "disk.podvirt.io/import-mirror"
	// ImportErrorAnnotation on a PVC says why its import is Failed (final:
	// the message says what to fix) or Retrying (the last attempt's
	// error), in at most ImportErrorMaxLength bytes.
	ImportErrorAnnotation = "disk.podvirt.io/import-error"
	// MultusNetworksAnnotation lists a pod's Multus networks.
	MultusNetworksAnnotation = "k8s.v1.cni.cncf.io/networks"
	// MultusNetworkStatusAnnotation is where Multus reports the pod's
	// attachments (interface names, IPs, MACs).
	MultusNetworkStatusAnnotation = "k8s.v1.cni.cncf.io/network-status"
	// RenameToAnnotation on a stopped VM asks the controller to rename it
	// (podvirtctl rename writes it): the controller makes the VM of the new
	// name, gives it the disks, and deletes this one. One write starts it,
	// so an interrupted client leaves either nothing done or a rename the
	// controller finishes.
	RenameToAnnotation = "podvirt.io/rename-to"
	// RenamedFromAnnotation on a VM a rename made is the old name; the VM
	// stays inert (Renaming) until the old VM is gone.
	RenamedFromAnnotation = "podvirt.io/renamed-from"
	// VMIConditionAgentConnected is the VMI condition that is True while
	// the guest agent is connected (absent otherwise, as in KubeVirt).
	VMIConditionAgentConnected = "AgentConnected"
	// SnapshotInProgressAnnotation and RestoreInProgressAnnotation on a VM
	// name the VirtualMachineSnapshot or VirtualMachineRestore that holds
	// it: the VM does not start, and makes no disk-template claims, until
	// the controller removes them.
	SnapshotInProgressAnnotation = "podvirt.io/snapshot-in-progress"
	RestoreInProgressAnnotation  = "podvirt.io/restore-in-progress"
	// RestoredByAnnotation on a PVC or VM a restore made is the UID of
	// that VirtualMachineRestore.
	RestoredByAnnotation = "podvirt.io/restored-by"
	// PausedAnnotation on a VMI, set to "true", asks the node daemon to
	// pause the guest; removing it resumes the guest. podvirtctl
	// pause/unpause set it: there is no aggregated API server to carry a
	// pause subresource, and the spec stays the user's.
	PausedAnnotation = "podvirt.io/paused"
	// L2NetworkAnnotation on a Service, "namespace/name" or "name" (in the
	// Service's namespace) of a NetworkAttachmentDefinition, makes it an
	// L2 Service: the controller keeps its EndpointSlices, holding the
	// addresses on that network of the VMIs L2SelectorAnnotation picks.
	L2NetworkAnnotation = "podvirt.io/l2-network"
	// L2SelectorAnnotation on an L2 Service is a label selector over VMIs
	// in the Service's namespace, e.g. "app=web,tier in (front)". It
	// stands in for spec.selector, which the Service must not have:
	// Kubernetes' EndpointSlice controller would fill slices with the
	// launcher pods' addresses, which carry the VMI's labels.
	L2SelectorAnnotation = "podvirt.io/l2-selector"
)

// ImportErrorMaxLength bounds ImportErrorAnnotation: a longer message is
// cut, ending in "…".
const ImportErrorMaxLength = 1024

// DiskImportPhase is the ImportPhaseAnnotation of a PVC the CSI driver
// fills from an image. A PVC without it has not reached the driver yet
// (with WaitForFirstConsumer, not before its pod is scheduled), or needs
// no import.
type DiskImportPhase string

// Import phases.
const (
	// ImportPending: the import stopped before the end (the driver was
	// stopping) and resumes, from where it was, on the provisioner's next
	// call.
	ImportPending DiskImportPhase = "Pending"
	// ImportImporting: the image is being fetched (ImportProgressAnnotation,
	// ImportMirrorAnnotation) or converted into the volume.
	ImportImporting DiskImportPhase = "Importing"
	// ImportRetrying: the last attempt failed in a way that may heal (a
	// registry unreachable, credentials missing); the provisioner calls
	// again. ImportErrorAnnotation says why.
	ImportRetrying DiskImportPhase = "Retrying"
	// ImportSucceeded: the volume holds the image.
	ImportSucceeded DiskImportPhase = "Succeeded"
	// ImportFailed: the import cannot succeed as the claim asks (a bad
	// source or checksum, an image larger than the claim, a source the
	// StorageClass does not allow). ImportErrorAnnotation says why and
	// what to fix; the driver does not try the same source again.
	ImportFailed DiskImportPhase = "Failed"
)

// InFlight reports whether an import in phase p has yet to end.
func (p DiskImportPhase) InFlight() bool {
	return p == ImportPending || p == ImportImporting || p == ImportRetrying
}

// EndpointSliceManagedBy is the endpointslice.kubernetes.io/managed-by
// value of the EndpointSlices the controller keeps for L2 Services. A label
// value has no "/", so it is written like Kubernetes' own
// endpointslice-controller.k8s.io.
const EndpointSliceManagedBy = "controller.podvirt.io"

// Finalizers.
const (
	// VMIFinalizer keeps a VMI until its launcher pod is gone or finished.
	VMIFinalizer = "podvirt.io/launcher-cleanup"
	// VMFinalizer keeps a VM until its VMI is gone and its disks are
	// retained or deleted as its DiskRetentionPolicy says.
	VMFinalizer = "podvirt.io/vm-cleanup"
)

// The launcher pod's layout: what the controller mounts where, so the
// launcher finds it.
const (
	// LauncherContainerName is the launcher pod's container that runs the
	// launcher (libvirtd and QEMU).
	LauncherContainerName = "compute"
	// DiskDir holds one directory per Filesystem-mode volume (the disk is
	// DiskDir/<volume>/disk.img) and one device node per Block-mode
	// volume (DiskDir/<volume>.dev).
	DiskDir = "/var/run/podvirt/disks"
	// DiskImageName is the disk image file on a Filesystem-mode volume.
	DiskImageName = "disk.img"
	// SocketDir is an emptyDir holding the launcher's unix socket; the
	// node daemon reaches it through the kubelet's pod volume directory.
	SocketDir = "/var/run/podvirt/sockets"
	// SocketVolumeName is the name of that emptyDir in the pod spec.
	SocketVolumeName = "podvirt-sockets"
	// PrivateDir is an emptyDir for the launcher's own files (libvirt
	// state, the cloud-init seed image).
	PrivateDir = "/var/run/podvirt/private"
	// PrivateVolumeName is the name of that emptyDir in the pod spec.
	PrivateVolumeName = "podvirt-private"
	// SecretDir holds the Secrets the guest gets, one directory each, named
	// by AccessCredentialMount and CloudInitSecretMount.
	SecretDir = "/var/run/podvirt/secrets" //nolint:gosec // a directory, not a credential
)

// AccessCredentialMount is the directory under SecretDir holding the
// Secret of spec.accessCredentials[i].
func AccessCredentialMount(i int) string {
	return fmt.Sprintf("access-credential-%d", i)
}

// Cloud-init data a Secret may hold (CloudInitSecretMount).
const (
	CloudInitUserData    = "userdata"
	CloudInitNetworkData = "networkdata"
)

// CloudInitSecretMount is the directory under SecretDir holding the Secret
// with the cloud-init data of kind (CloudInitUserData,
// CloudInitNetworkData).
func CloudInitSecretMount(kind string) string {
	return "cloud-init-" + kind
}

// FilesystemDiskPath is the disk image of volume on a Filesystem-mode PVC,
// inside the launcher pod.
func FilesystemDiskPath(volume string) string {
	return path.Join(DiskDir, volume, DiskImageName)
}

// BlockDiskPath is the device node of volume on a Block-mode PVC, inside
// the launcher pod.
func BlockDiskPath(volume string) string {
	return path.Join(DiskDir, volume+".dev")
}

// DefaultPodNetwork names the pod network (and its interface) a VM gets
// when it lists none, as KubeVirt's.
const DefaultPodNetwork = "default"
