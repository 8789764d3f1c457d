package v1alpha1

import (
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// VirtualMachine is a VM that outlives its runs: the controller keeps
// VirtualMachineInstances for it according to its run strategy, and makes
// its disks from disk templates.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vm;vms,categories=all;podvirt
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Status",type=string,JSONPath=`.status.printableStatus`
// +kubebuilder:printcolumn:name="Ready",type=boolean,JSONPath=`.status.ready`
// +kubebuilder:printcolumn:name="Node",type=string,JSONPath=`.status.nodeName`
// +kubebuilder:printcolumn:name="IP",type=string,JSONPath=`.status.ipAddress`
// +kubebuilder:printcolumn:name="RestartRequired",type=string,JSONPath=`.status.conditions[?(@.type=="RestartRequired")].status`,priority=1
// +kubebuilder:printcolumn:name="Display Name",type=string,JSONPath=`.spec.displayName`
type VirtualMachine struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineSpec   `json:"spec"`
	Status VirtualMachineStatus `json:"status,omitempty"`
}

// VirtualMachineList is a list of VirtualMachines.
//
// +kubebuilder:object:root=true
type VirtualMachineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachine `json:"items"`
}

// RunStrategy says when the controller keeps a VMI running for a VM.
//
// +kubebuilder:validation:Enum=Always;RerunOnFailure;Manual;Halted;Once
type RunStrategy string

// Run strategies, with KubeVirt's meaning.
const (
	// RunStrategyAlways keeps a VMI running: a VMI that ends, however it
	// ends, is replaced.
	RunStrategyAlways RunStrategy = "Always"
	// RunStrategyRerunOnFailure replaces a VMI that Failed; one that
	// Succeeded (the guest shut down) stays stopped.
	RunStrategyRerunOnFailure RunStrategy = "RerunOnFailure"
	// RunStrategyManual never starts or stops a VMI on its own: only the
	// user's start/stop requests (status.stateChangeRequests) do.
	RunStrategyManual RunStrategy = "Manual"
	// RunStrategyHalted keeps no VMI: a running one is stopped.
	RunStrategyHalted RunStrategy = "Halted"
	// RunStrategyOnce runs a VMI once and never replaces it when it ends.
	RunStrategyOnce RunStrategy = "Once"
)

// DiskRetentionPolicy says what happens to disk-template PVCs when their VM
// is deleted.
//
// +kubebuilder:validation:Enum=Retain;Delete
type DiskRetentionPolicy string

// Disk retention policies.
const (
	// DiskRetain keeps the PVCs: a new VM can use their data by naming them
	// (a volume's persistentVolumeClaim, or a disk template of the same
	// name).
	DiskRetain DiskRetentionPolicy = "Retain"
	// DiskDelete deletes the PVCs with the VM.
	DiskDelete DiskRetentionPolicy = "Delete"
)

// VirtualMachineSpec is the desired state of a VM.
//
// +kubebuilder:validation:XValidation:rule="!has(self.diskTemplates) || self.diskTemplates.all(t, self.diskTemplates.exists_one(u, u.metadata.name == t.metadata.name))",message="diskTemplates need unique metadata.name: each is the name of the PVC it makes",reason=FieldValueInvalid
type VirtualMachineSpec struct {
	// DisplayName is a label for people, free to change at any time (the
	// name is the VM's identity: podvirtctl rename changes that).
	//
	// +optional
	// +kubebuilder:validation:MaxLength=256
	DisplayName string `json:"displayName,omitempty"`

	// RunStrategy is when a VMI runs: Always, RerunOnFailure, Manual,
	// Halted or Once. Default Always.
	//
	// +optional
	// +kubebuilder:default=Always
	RunStrategy RunStrategy `json:"runStrategy,omitempty"`

	// Template is the VMI the VM runs.
	Template VirtualMachineInstanceTemplateSpec `json:"template"`

	// DiskTemplates are PVCs the controller creates for the VM (before its
	// first VMI), each named by its metadata.name; volumes use them as
	// persistentVolumeClaim sources. The image to fill a disk with is the
	// annotation disk.podvirt.io/source (docker://… or https://…), with an
	// optional disk.podvirt.io/checksum.
	//
	// +optional
	// +kubebuilder:validation:MaxItems=32
	// +listType=atomic
	DiskTemplates []DiskTemplate `json:"diskTemplates,omitempty"`

	// DiskRetentionPolicy is what happens to the disk-template PVCs when the
	// VM is deleted: Retain (the default) keeps them, Delete deletes them.
	//
	// +optional
	// +kubebuilder:default=Retain
	DiskRetentionPolicy DiskRetentionPolicy `json:"diskRetentionPolicy,omitempty"`
}

// VirtualMachineInstanceTemplateSpec is a VMI to create: its labels and
// annotations, and its spec.
type VirtualMachineInstanceTemplateSpec struct {
	// +optional
	ObjectMeta metav1.ObjectMeta `json:"metadata,omitempty"`
	// Spec is the VMI's spec.
	Spec VirtualMachineInstanceSpec `json:"spec"`
}

// DiskTemplate is a PVC the controller creates for a VM.
//
// +kubebuilder:validation:XValidation:rule="size(self.metadata.name) > 0",message="each diskTemplate needs metadata.name (the PVC's name)",reason=FieldValueRequired
// +kubebuilder:validation:XValidation:rule="!has(self.metadata.annotations) || !('disk.podvirt.io/source' in self.metadata.annotations) || ['docker://', 'http://', 'https://'].exists(p, self.metadata.annotations['disk.podvirt.io/source'].startsWith(p))",message="annotation disk.podvirt.io/source must start with docker://, https:// or http://",reason=FieldValueInvalid
type DiskTemplate struct {
	// ObjectMeta holds the PVC's name, labels and annotations
	// (disk.podvirt.io/source, disk.podvirt.io/checksum).
	ObjectMeta DiskTemplateMeta `json:"metadata"`
	// Spec is the PVC's spec.
	Spec corev1.PersistentVolumeClaimSpec `json:"spec"`
}

// DiskTemplateMeta is the metadata of a disk template's PVC.
type DiskTemplateMeta struct {
	// Name is the PVC's name.
	//
	// +kubebuilder:validation:MaxLength=253
	Name string `json:"name"`
	// Labels are the PVC's labels.
	//
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
	// Annotations are the PVC's annotations: disk.podvirt.io/source is the
	// image the disk is filled with, disk.podvirt.io/checksum its expected
	// digest.
	//
	// +optional
	Annotations map[string]string `json:"annotations,omitempty"`
}

// VirtualMachinePrintableStatus is a VM's state in one word, for people.
type VirtualMachinePrintableStatus string

// Printable statuses, as in KubeVirt.
const (
	PrintableStatusStopped VirtualMachinePrintableStatus = "Stopped"
	// PrintableStatusProvisioning: a disk of the VM is not ready yet: its
	// import runs (or retries), or its PVC waits for a volume. The
	// DisksReady condition says which and how far.
	PrintableStatusProvisioning VirtualMachinePrintableStatus = "Provisioning"
	PrintableStatusStarting     VirtualMachinePrintableStatus = "Starting"
	PrintableStatusRunning      VirtualMachinePrintableStatus = "Running"
	PrintableStatusPaused       VirtualMachinePrintableStatus = "Paused"
	// PrintableStatusMigrating: the VM moves live to another node.
	PrintableStatusMigrating   VirtualMachinePrintableStatus = "Migrating"
	PrintableStatusStopping    VirtualMachinePrintableStatus = "Stopping"
	PrintableStatusTerminating VirtualMachinePrintableStatus = "Terminating"
	// PrintableStatusRenaming: the VM was made by a rename and waits for
	// the VM of the old name to be gone.
	PrintableStatusRenaming           VirtualMachinePrintableStatus = "Renaming"
	PrintableStatusCrashLoopBackOff   VirtualMachinePrintableStatus = "CrashLoopBackOff"
	PrintableStatusFailed             VirtualMachinePrintableStatus = "Failed"
	PrintableStatusUnschedulable      VirtualMachinePrintableStatus = "ErrorUnschedulable"
	PrintableStatusPvcNotFound        VirtualMachinePrintableStatus = "ErrorPvcNotFound"
	PrintableStatusLauncherPodFailure VirtualMachinePrintableStatus = "ErrorLauncherPod"
	// PrintableStatusDiskImportFailure: a disk's import failed for good
	// (KubeVirt's DataVolumeError); the DisksReady condition copies the
	// PVC's disk.podvirt.io/import-error.
	PrintableStatusDiskImportFailure VirtualMachinePrintableStatus = "ErrorDiskImport"
	// PrintableStatusUnknown: the VMI's node is lost (see the Ready
	// condition), so what runs there is unknown.
	PrintableStatusUnknown VirtualMachinePrintableStatus = "Unknown"
)

// StateChangeAction is a user's request to start or stop a VM.
//
// +kubebuilder:validation:Enum=Start;Stop
type StateChangeAction string

// State change actions.
const (
	StartRequest StateChangeAction = "Start"
	StopRequest  StateChangeAction = "Stop"
)

// VirtualMachineStateChangeRequest is a start or stop request (what
// `podvirtctl start|stop|restart` writes). Start is honoured under Manual,
// and under RerunOnFailure and Once when no VMI is running; Stop deletes the
// running VMI under every strategy (Always and RerunOnFailure then start a
// new one: a restart).
type VirtualMachineStateChangeRequest struct {
	// Action is Start or Stop.
	Action StateChangeAction `json:"action"`
	// UID, for Stop, is the VMI to stop; a stale UID makes the request a
	// no-op.
	//
	// +optional
	UID *types.UID `json:"uid,omitempty"`
}

// VirtualMachineStatus is what the controller observes of a VM.
type VirtualMachineStatus struct {
	// PrintableStatus is the VM's state in one word.
	//
	// +optional
	PrintableStatus VirtualMachinePrintableStatus `json:"printableStatus,omitempty"`

	// Created is true while a VMI exists for the VM.
	//
	// +optional
	Created bool `json:"created,omitempty"`

	// Ready is true while the VM's VMI is Ready.
	//
	// +optional
	Ready bool `json:"ready,omitempty"`

	// NodeName is the node the VMI runs on.
	//
	// +optional
	NodeName string `json:"nodeName,omitempty"`

	// IP is the VMI's first interface's primary address.
	//
	// +optional
	IP string `json:"ipAddress,omitempty"`

	// ObservedGeneration is the spec generation this status is about.
	//
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`

	// RunStrategy is the run strategy in force.
	//
	// +optional
	RunStrategy RunStrategy `json:"runStrategy,omitempty"`

	// StateChangeRequests are pending start/stop requests, oldest first;
	// the controller removes each once acted on.
	//
	// +optional
	// +listType=atomic
	StateChangeRequests []VirtualMachineStateChangeRequest `json:"stateChangeRequests,omitempty"`

	// LastVMIUID is the UID of the last VMI the controller created.
	//
	// +optional
	LastVMIUID types.UID `json:"lastVMIUID,omitempty"`

	// StartFailure counts VMIs that failed in a row, and when the next may
	// start (crash-loop back-off under Always and RerunOnFailure).
	//
	// +optional
	StartFailure *VirtualMachineStartFailure `json:"startFailure,omitempty"`

	// DiskClaims are the PVCs made from diskTemplates.
	//
	// +optional
	// +listType=atomic
	DiskClaims []string `json:"diskClaims,omitempty"`

	// Conditions: Ready (the VMI is Ready), Failure (the controller cannot
	// do what the spec asks; the message says why), DisksReady (every disk
	// has its volume, or which import is under way or failed),
	// RestartRequired (the template changed since the VMI started; the
	// message names the fields).
	//
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// VirtualMachineStartFailure is the crash-loop back-off state of a VM.
type VirtualMachineStartFailure struct {
	// ConsecutiveFailCount is how many VMIs failed in a row.
	ConsecutiveFailCount int32 `json:"consecutiveFailCount"`
	// LastFailedVMIUID is the last VMI that failed.
	//
	// +optional
	LastFailedVMIUID types.UID `json:"lastFailedVMIUID,omitempty"`
	// RetryAfterTimestamp is when the next VMI may start.
	//
	// +optional
	RetryAfterTimestamp *metav1.Time `json:"retryAfterTimestamp,omitempty"`
}
