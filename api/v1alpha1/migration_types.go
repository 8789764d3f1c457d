package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// VirtualMachineInstanceMigration moves a running VMI to another launcher
// pod, live: on another node (its node-local disks follow, only what the
// VM wrote crosses) or on the same one. Deleting it while it runs cancels
// it; the VMI then keeps running where it was.
//
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=vmim;vmims,categories=all;podvirt
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="VMI",type=string,JSONPath=`.spec.vmiName`
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.status.sourceNode`
// +kubebuilder:printcolumn:name="Target",type=string,JSONPath=`.status.targetNode`
// +kubebuilder:printcolumn:name="Memory",type=string,JSONPath=`.status.memoryTransferred`,priority=0
// +kubebuilder:printcolumn:name="Disk",type=string,JSONPath=`.status.diskTransferred`
// +kubebuilder:printcolumn:name="Downtime",type=string,JSONPath=`.status.downtime`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
// +kubebuilder:printcolumn:name="Message",type=string,JSONPath=`.status.message`,priority=1
type VirtualMachineInstanceMigration struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec   VirtualMachineInstanceMigrationSpec   `json:"spec"`
	Status VirtualMachineInstanceMigrationStatus `json:"status,omitempty"`
}

// VirtualMachineInstanceMigrationList is a list of migrations.
//
// +kubebuilder:object:root=true
type VirtualMachineInstanceMigrationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []VirtualMachineInstanceMigration `json:"items"`
}

// VirtualMachineInstanceMigrationSpec names the VMI and, optionally, where to.
//
// +kubebuilder:validation:XValidation:rule="self == oldSelf",message="a migration's spec cannot change; delete it and create another"
type VirtualMachineInstanceMigrationSpec struct {
	// VMIName is the VMI to move, in the migration's namespace.
	//
	// +kubebuilder:validation:MinLength=1
	VMIName string `json:"vmiName"`

	// TargetNode is the node to move to; it may be the VMI's own node
	// (e.g. to move it onto a new launcher image). Empty: the scheduler
	// picks any other node.
	//
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
}

// MigrationPhase is where a migration is.
//
// +kubebuilder:validation:Enum=Pending;Scheduling;PreparingTarget;Running;Succeeded;Failed
type MigrationPhase string

// Migration phases.
const (
	// MigrationPending: accepted, nothing made yet.
	MigrationPending MigrationPhase = "Pending"
	// MigrationScheduling: the target pod and its disks are being made.
	MigrationScheduling MigrationPhase = "Scheduling"
	// MigrationPreparingTarget: the target pod runs; its launcher gets
	// ready to receive.
	MigrationPreparingTarget MigrationPhase = "PreparingTarget"
	// MigrationRunning: memory and disks are crossing.
	MigrationRunning MigrationPhase = "Running"
	// MigrationSucceeded: the VMI runs in the target pod.
	MigrationSucceeded MigrationPhase = "Succeeded"
	// MigrationFailed: the VMI runs where it was; the target is gone.
	MigrationFailed MigrationPhase = "Failed"
)

// IsFinal reports whether the migration is over.
func (p MigrationPhase) IsFinal() bool { return p == MigrationSucceeded || p == MigrationFailed }

// VirtualMachineInstanceMigrationStatus tells the migration's story.
type VirtualMachineInstanceMigrationStatus struct {
	// +optional
	Phase MigrationPhase `json:"phase,omitempty"`
	// PhaseTransitionTimestamps are when each phase began.
	//
	// +optional
	// +listType=atomic
	PhaseTransitionTimestamps []MigrationPhaseTransitionTimestamp `json:"phaseTransitionTimestamps,omitempty"`
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// +optional
	SourcePod string `json:"sourcePod,omitempty"`
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// +optional
	TargetPod string `json:"targetPod,omitempty"`
	// Claims pairs each disk's claim on the source with the one made for
	// it on the target. On success the VM and VMI use the target claims
	// and the source claims are deleted; on failure the target claims are.
	//
	// +optional
	// +listType=atomic
	Claims []MigrationClaim `json:"claims,omitempty"`
	// MemoryTransferred and DiskTransferred are how much crossed, e.g.
	// "97.1 MiB".
	//
	// +optional
	MemoryTransferred string `json:"memoryTransferred,omitempty"`
	// +optional
	DiskTransferred string `json:"diskTransferred,omitempty"`
	// MemoryBytes and DiskBytes are the same in bytes.
	//
	// +optional
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// +optional
	DiskBytes int64 `json:"diskBytes,omitempty"`
	// Downtime is how long the guest was paused at the switch, e.g. "215ms".
	//
	// +optional
	Downtime string `json:"downtime,omitempty"`
	// Message says why it failed, or what it waits for.
	//
	// +optional
	Message string `json:"message,omitempty"`
}

// MigrationPhaseTransitionTimestamp is when a migration entered a phase.
type MigrationPhaseTransitionTimestamp struct {
	Phase                    MigrationPhase `json:"phase"`
	PhaseTransitionTimestamp metav1.Time    `json:"phaseTransitionTimestamp"`
}

// MigrationClaim is a disk's claim on each side.
type MigrationClaim struct {
	Volume string `json:"volume"`
	Source string `json:"source"`
	Target string `json:"target"`
}

// MigrationInFlight is the VMI's migration while it runs (it has not
// ended), or nil.
func (vmi *VirtualMachineInstance) MigrationInFlight() *MigrationState {
	if ms := vmi.Status.MigrationState; ms != nil && ms.EndTimestamp == nil {
		return ms
	}
	return nil
}

// MigrationState is a VMI's migration in flight (or its last one), which the
// controller and the two node daemons coordinate through.
//
// Who writes what: the controller writes the identity, nodes and pods and
// AbortRequested; the target node daemon TargetAddress, TargetToken,
// TargetCertificateSHA256 and TargetDomain once its launcher listens; the source node daemon the rest.
type MigrationState struct {
	MigrationUID types.UID `json:"migrationUID"`
	// +optional
	SourceNode string `json:"sourceNode,omitempty"`
	// +optional
	SourcePod string `json:"sourcePod,omitempty"`
	// +optional
	TargetNode string `json:"targetNode,omitempty"`
	// +optional
	TargetPod string `json:"targetPod,omitempty"`
	// TargetAddress is the target launcher's migration proxy (host:port)
	// and TargetToken (base64) the secret it checks.
	//
	// +optional
	TargetAddress string `json:"targetAddress,omitempty"`
	// +optional
	TargetToken string `json:"targetToken,omitempty"`
	// TargetCertificateSHA256 (base64) is the digest of the TLS
	// certificate the target's proxy made for this migration; the source
	// connects to no other.
	//
	// +optional
	TargetCertificateSHA256 string `json:"targetCertificateSHA256,omitempty"`
	// TargetDomain is the domain XML the target launcher rendered for its pod.
	//
	// +optional
	TargetDomain string `json:"targetDomain,omitempty"`
	// +optional
	StartTimestamp *metav1.Time `json:"startTimestamp,omitempty"`
	// +optional
	EndTimestamp *metav1.Time `json:"endTimestamp,omitempty"`
	// +optional
	Completed bool `json:"completed,omitempty"`
	// +optional
	Failed bool `json:"failed,omitempty"`
	// +optional
	FailureReason string `json:"failureReason,omitempty"`
	// AbortRequested asks the source to cancel.
	//
	// +optional
	AbortRequested bool `json:"abortRequested,omitempty"`
	// +optional
	MemoryBytes int64 `json:"memoryBytes,omitempty"`
	// +optional
	MemoryTotal int64 `json:"memoryTotal,omitempty"`
	// +optional
	DiskBytes int64 `json:"diskBytes,omitempty"`
	// +optional
	DiskTotal int64 `json:"diskTotal,omitempty"`
	// DowntimeMilliseconds is how long the guest was paused at the switch.
	//
	// +optional
	DowntimeMilliseconds int64 `json:"downtimeMilliseconds,omitempty"`
}
