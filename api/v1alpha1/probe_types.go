package v1alpha1

import corev1 "k8s.io/api/core/v1"

// Probe checks the guest, as KubeVirt's: a TCP connect or an HTTP GET to
// a guest port through the pod network (the port must be forwarded:
// listed in the pod interface's ports, or every port when none are
// listed), or a command run, or a ping, through QEMU's guest agent. The
// launcher runs it where the domain runs, so it follows the VM through a
// migration. The host fields of tcpSocket and httpGet are ignored: the
// probe always reaches the guest.
//
// +kubebuilder:validation:XValidation:rule="[has(self.exec), has(self.httpGet), has(self.tcpSocket), has(self.guestAgentPing)].filter(x, x).size() == 1",message="a probe needs exactly one of exec, httpGet, tcpSocket and guestAgentPing",reason=FieldValueInvalid
type Probe struct {
	// Exec runs a command in the guest through QEMU's guest agent
	// (guest-exec); exit status 0 passes.
	//
	// +optional
	Exec *corev1.ExecAction `json:"exec,omitempty"`
	// HTTPGet passes on a status from 200 to 399.
	//
	// +optional
	HTTPGet *corev1.HTTPGetAction `json:"httpGet,omitempty"`
	// TCPSocket passes when the guest port accepts a connection.
	//
	// +optional
	TCPSocket *corev1.TCPSocketAction `json:"tcpSocket,omitempty"`
	// GuestAgentPing passes when QEMU's guest agent answers.
	//
	// +optional
	GuestAgentPing *GuestAgentPing `json:"guestAgentPing,omitempty"`

	// InitialDelaySeconds is how long after the guest starts running the
	// first probe waits. Default 0.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	InitialDelaySeconds int32 `json:"initialDelaySeconds,omitempty"`
	// TimeoutSeconds bounds one probe. Default 1.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=600
	TimeoutSeconds int32 `json:"timeoutSeconds,omitempty"`
	// PeriodSeconds is how often the probe runs. Default 10.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=3600
	PeriodSeconds int32 `json:"periodSeconds,omitempty"`
	// SuccessThreshold is how many passes in a row make a failed probe
	// pass again. Default 1 (and always 1 for liveness).
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	SuccessThreshold int32 `json:"successThreshold,omitempty"`
	// FailureThreshold is how many failures in a row make the probe fail.
	// Default 3.
	//
	// +optional
	// +kubebuilder:validation:Minimum=0
	// +kubebuilder:validation:Maximum=100
	FailureThreshold int32 `json:"failureThreshold,omitempty"`
}

// GuestAgentPing pings QEMU's guest agent.
type GuestAgentPing struct{}

// Probe defaults, as Kubernetes'.
const (
	DefaultProbeTimeoutSeconds   = 1
	DefaultProbePeriodSeconds    = 10
	DefaultProbeSuccessThreshold = 1
	DefaultProbeFailureThreshold = 3
)

// ProbeStatus is the readiness probe's verdict, as the launcher last saw
// it.
type ProbeStatus struct {
	// Ready is whether the probe passes.
	Ready bool `json:"ready"`
	// Message is why it does not (its last failure).
	//
	// +optional
	Message string `json:"message,omitempty"`
}
