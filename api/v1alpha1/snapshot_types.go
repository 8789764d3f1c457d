package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Snapshots live in podvirt.io with the VMs they copy, not in a group of
// their own as KubeVirt's snapshot.kubevirt.io: one group is one set of
// RBAC rules and one `kubectl api-resources --api-group=podvirt.io`, and
// podvirt has no snapshot API versioned apart from its VMs.

// VirtualMachineSnapshot is a VM's spec and disks at one moment. Each disk
// is a CSI VolumeSnapshot; on podvirt's own volumes it costs O(1), whatever
// the disk holds: the disk is frozen where it is and the VM goes on in a
// new overlay. It outlives its VM; deleting it deletes its content.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmsnapshot;vmsnapshots;vmsnap,categories=all;podvirt
// +kubebuilder:printcolumn:name="SourceKind",type=string,JSONPath=`.spec.source.kind`
// +kubebuilder:printcolumn:name="SourceName",type=string,JSONPath=`.spec.source.name`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="ReadyToUse",type=boolean,JSONPath=`.status.readyToUse`
// +kubebuilder:printcolumn:name="CreationTime",type=date,JSONPath=`.status.creationTime`
// +kubebuilder:printcolumn:name="Indications",type=string,JSONPath=`.status.indications`,priority=1
// +kubebuilder:printcolumn:name="Error",type=string,JSONPath=`.status.error.message`
type VirtualMachineSnapshot struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSnapshotSpec   `json:"spec"`
	Status VirtualMachineSnapshotStatus `json:"status,omitempty"`
}

// VirtualMachineSnapshotList is a list of VM snapshots.
//
// +kubebuilder:object:root=true
type VirtualMachineSnapshotList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineSnapshot `json:"items"`
}

// VirtualMachineSnapshotSpec names the VM and how long the snapshot may
// take.
//
// +kubebuilder:validation:XValidation:rule="self.source == oldSelf.source",message="a snapshot's source cannot change; delete it and create another"
type VirtualMachineSnapshotSpec struct {
	// Source is the VM to snapshot, in the snapshot's namespace (apiGroup
	// podvirt.io, kind VirtualMachine).
	Source corev1.TypedLocalObjectReference `json:"source"`

	// FailureDeadline is how long the snapshot may take before it fails
	// and lets the VM go; 5m when unset.
	//
	// +optional
	FailureDeadline *metav1.Duration `json:"failureDeadline,omitempty"`

	// IncludeMemory saves a running VM's memory and device state with its
	// disks: restored into its VM (same MACs), the guest resumes where it
	// was instead of booting. It is kept on the node beside the first
	// disk, about the size of the guest's memory.
	//
	// +optional
	IncludeMemory bool `json:"includeMemory,omitempty"`
}

// SnapshotPhase is where a snapshot or restore is.
//
// +kubebuilder:validation:Enum=InProgress;Succeeded;Failed
type SnapshotPhase string

// Snapshot phases.
const (
	SnapshotInProgress SnapshotPhase = "InProgress"
	SnapshotSucceeded  SnapshotPhase = "Succeeded"
	SnapshotFailed     SnapshotPhase = "Failed"
)

// Indication says how a snapshot was taken.
type Indication string

// Indications, as in KubeVirt.
const (
	// IndicationOnline: the VM ran while its snapshot was taken.
	IndicationOnline Indication = "Online"
	// IndicationOffline: the VM was stopped; the disks were at rest.
	IndicationOffline Indication = "Offline"
	// IndicationGuestAgent / IndicationNoGuestAgent: the guest agent
	// answered, or did not.
	IndicationGuestAgent   Indication = "GuestAgent"
	IndicationNoGuestAgent Indication = "NoGuestAgent"
	// IndicationQuiesced: the guest's filesystems were frozen for the
	// snapshot (application-consistent as far as they go).
	IndicationQuiesced Indication = "Quiesced"
	// IndicationPaused: the guest was paused for the snapshot instead
	// (crash-consistent across its disks).
	IndicationPaused Indication = "Paused"
	// IndicationMemoryIncluded: the guest's memory was saved too.
	IndicationMemoryIncluded Indication = "MemoryIncluded"
)

// VirtualMachineSnapshotStatus tells the snapshot's story.
type VirtualMachineSnapshotStatus struct {
	// SourceUID is the UID of the VM the snapshot was taken of.
	//
	// +optional
	SourceUID *types.UID `json:"sourceUID,omitempty"`
	// VirtualMachineSnapshotContentName holds the VM spec and the disks'
	// VolumeSnapshots.
	//
	// +optional
	VirtualMachineSnapshotContentName string `json:"virtualMachineSnapshotContentName,omitempty"`
	// CreationTime is when the VM was captured, once it was.
	//
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// +optional
	Phase SnapshotPhase `json:"phase,omitempty"`
	// ReadyToUse is true once every disk's VolumeSnapshot is ready.
	//
	// +optional
	ReadyToUse *bool `json:"readyToUse,omitempty"`
	// Indications say how the snapshot was taken.
	//
	// +optional
	// +listType=set
	Indications []Indication `json:"indications,omitempty"`
	// Error says why the snapshot failed, or what it waits for.
	//
	// +optional
	Error *SnapshotError `json:"error,omitempty"`
}

// SnapshotError is what went wrong, and when.
type SnapshotError struct {
	// +optional
	Time *metav1.Time `json:"time,omitempty"`
	// +optional
	Message string `json:"message,omitempty"`
}

// VirtualMachineSnapshotContent is what a snapshot holds: the VM as it was
// and one VolumeSnapshot per disk. Its snapshot owns it.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmsnapshotcontent;vmsnapshotcontents,categories=podvirt
// +kubebuilder:printcolumn:name="ReadyToUse",type=boolean,JSONPath=`.status.readyToUse`
// +kubebuilder:printcolumn:name="CreationTime",type=date,JSONPath=`.status.creationTime`
// +kubebuilder:printcolumn:name="Error",type=string,JSONPath=`.status.error.message`
type VirtualMachineSnapshotContent struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSnapshotContentSpec   `json:"spec"`
	Status VirtualMachineSnapshotContentStatus `json:"status,omitempty"`
}

// VirtualMachineSnapshotContentList is a list of snapshot contents.
//
// +kubebuilder:object:root=true
type VirtualMachineSnapshotContentList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineSnapshotContent `json:"items"`
}

// VirtualMachineSnapshotContentSpec is the VM and its disks' snapshots.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a snapshot's content cannot change"
type VirtualMachineSnapshotContentSpec struct {
	// VirtualMachineSnapshotName is the snapshot this is the content of.
	VirtualMachineSnapshotName string `json:"virtualMachineSnapshotName"`
	// Source is the VM as it was.
	Source SnapshotSourceVM `json:"source"`
	// VolumeBackups are the VM's PVC disks, each with its VolumeSnapshot.
	//
	// +optional
	// +listType=atomic
	VolumeBackups []VolumeBackup `json:"volumeBackups,omitempty"`
}

// SnapshotSourceVM is a VM as a snapshot keeps it: its name, labels,
// annotations and spec.
type SnapshotSourceVM struct {
	Name string `json:"name"`
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// +optional
	Annotations map[string]string  `json:"annotations,omitempty"`
	Spec        VirtualMachineSpec `json:"spec"`
}

// VolumeBackup is one disk of a snapshot.
type VolumeBackup struct {
	// VolumeName is the VM volume.
	VolumeName string `json:"volumeName"`
	// PersistentVolumeClaim is the claim the disk was, as it was.
	PersistentVolumeClaim PersistentVolumeClaimBackup `json:"persistentVolumeClaim"`
	// VolumeSnapshotName is the VolumeSnapshot holding the disk.
	VolumeSnapshotName string `json:"volumeSnapshotName"`
	// Node is where the disk and its snapshot are: node-local volumes are
	// restored there.
	//
	// +optional
	Node string `json:"node,omitempty"`
}

// PersistentVolumeClaimBackup is a claim's name, labels, annotations and
// spec.
type PersistentVolumeClaimBackup struct {
	Name string `json:"name"`
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// +optional
	Annotations map[string]string                `json:"annotations,omitempty"`
	Spec        corev1.PersistentVolumeClaimSpec `json:"spec"`
}

// VirtualMachineSnapshotContentStatus is whether the disks' snapshots are
// ready.
type VirtualMachineSnapshotContentStatus struct {
	// +optional
	ReadyToUse *bool `json:"readyToUse,omitempty"`
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// +optional
	Error *SnapshotError `json:"error,omitempty"`
	// VolumeSnapshotStatus is each VolumeSnapshot's state.
	//
	// +optional
	// +listType=atomic
	VolumeSnapshotStatus []VolumeSnapshotStatus `json:"volumeSnapshotStatus,omitempty"`
}

// VolumeSnapshotStatus is one VolumeSnapshot's state.
type VolumeSnapshotStatus struct {
	VolumeSnapshotName string `json:"volumeSnapshotName"`
	// +optional
	ReadyToUse *bool `json:"readyToUse,omitempty"`
	// +optional
	CreationTime *metav1.Time `json:"creationTime,omitempty"`
	// +optional
	Error *SnapshotError `json:"error,omitempty"`
}

// VirtualMachineRestore brings a snapshot back: into its own VM, which
// must be stopped (its disks are replaced, its spec set back), or as a new
// VM of another name (new claims, new MACs and addresses while the source
// VM still holds its own). Either way each disk is a new overlay on the
// snapshot's frozen layer: O(1).
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmrestore;vmrestores,categories=all;podvirt
// +kubebuilder:printcolumn:name="TargetKind",type=string,JSONPath=`.spec.target.kind`
// +kubebuilder:printcolumn:name="TargetName",type=string,JSONPath=`.spec.target.name`
// +kubebuilder:printcolumn:name="Snapshot",type=string,JSONPath=`.spec.virtualMachineSnapshotName`
// +kubebuilder:printcolumn:name="Complete",type=boolean,JSONPath=`.status.complete`
// +kubebuilder:printcolumn:name="RestoreTime",type=date,JSONPath=`.status.restoreTime`
// +kubebuilder:printcolumn:name="Error",type=string,JSONPath=`.status.error.message`
type VirtualMachineRestore struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineRestoreSpec   `json:"spec"`
	Status VirtualMachineRestoreStatus `json:"status,omitempty"`
}

// VirtualMachineRestoreList is a list of restores.
//
// +kubebuilder:object:root=true
type VirtualMachineRestoreList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineRestore `json:"items"`
}

// VirtualMachineRestoreSpec names the snapshot and the VM to restore into.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a restore's spec cannot change; delete it and create another"
type VirtualMachineRestoreSpec struct {
	// Target is the VM to restore into (apiGroup podvirt.io, kind
	// VirtualMachine): the snapshot's own VM, stopped, or a name no VM has.
	Target corev1.TypedLocalObjectReference `json:"target"`
	// VirtualMachineSnapshotName is the snapshot, in the same namespace.
	//
	// +kubebuilder:validation:MinLength=1
	VirtualMachineSnapshotName string `json:"virtualMachineSnapshotName"`
}

// VirtualMachineRestoreStatus tells the restore's story.
type VirtualMachineRestoreStatus struct {
	// Complete is true once the target VM has its disks and spec back.
	//
	// +optional
	Complete *bool `json:"complete,omitempty"`
	// +optional
	RestoreTime *metav1.Time `json:"restoreTime,omitempty"`
	// Restores are the claims made, one per disk.
	//
	// +optional
	// +listType=atomic
	Restores []VolumeRestore `json:"restores,omitempty"`
	// Error says why the restore failed, or what it waits for.
	//
	// +optional
	Error *SnapshotError `json:"error,omitempty"`
}

// VolumeRestore is a disk brought back.
type VolumeRestore struct {
	VolumeName                string `json:"volumeName"`
	PersistentVolumeClaimName string `json:"persistentVolumeClaimName"`
	VolumeSnapshotName        string `json:"volumeSnapshotName"`
}

// SnapshotState is an online snapshot of a running VMI's disks: each named
// disk switches to a new overlay, and its current image becomes the named
// layer (contracts/diskmeta Layers), which the disk's VolumeSnapshot then
// keeps. The guest's filesystems are frozen through its agent for the
// switch, or the guest is paused when the agent does not answer in time.
//
// Who writes what: the controller writes SnapshotUID, Layers and
// FreezeTimeoutMilliseconds; the node daemon the rest, once it is done.
type SnapshotState struct {
	SnapshotUID types.UID `json:"snapshotUID"`
	// Layers maps each VMI volume to snapshot to the layer its disk
	// becomes.
	Layers map[string]string `json:"layers"`
	// FreezeTimeoutMilliseconds bounds the wait for the guest agent to
	// freeze the filesystems before the guest is paused instead.
	//
	// +optional
	FreezeTimeoutMilliseconds int64 `json:"freezeTimeoutMilliseconds,omitempty"`
	// MemoryVolume, when set, is the volume beside whose disk the guest's
	// memory is saved with the disks (an includeMemory snapshot).
	//
	// +optional
	MemoryVolume string `json:"memoryVolume,omitempty"`

	// Completed is set when the disks are switched, Error when they could
	// not be (the guest then runs on as before).
	//
	// +optional
	Completed bool `json:"completed,omitempty"`
	// +optional
	Error string `json:"error,omitempty"`
	// GuestAgent says the guest agent answered; Quiesced that it froze the
	// filesystems; Paused that the guest was paused instead.
	//
	// +optional
	GuestAgent bool `json:"guestAgent,omitempty"`
	// +optional
	Quiesced bool `json:"quiesced,omitempty"`
	// +optional
	Paused bool `json:"paused,omitempty"`
	// AgentError says why the agent did not freeze the filesystems.
	//
	// +optional
	AgentError string `json:"agentError,omitempty"`
	// MemorySaved says the guest's memory was saved with the disks.
	//
	// +optional
	MemorySaved bool `json:"memorySaved,omitempty"`
	// FrozenMilliseconds is how long the guest was frozen or paused.
	//
	// +optional
	FrozenMilliseconds int64 `json:"frozenMilliseconds,omitempty"`
}
