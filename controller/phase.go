package controller

import (
	"fmt"
	"regexp"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// VMI condition types and reasons the controller writes.
const (
	ConditionReady        = "Ready"
	ConditionPaused       = "Paused"
	ConditionPodScheduled = "PodScheduled"
	ConditionSynchronized = "Synchronized"
	// ConditionAgentConnected is True while the guest agent is connected;
	// absent otherwise, as in KubeVirt.
	ConditionAgentConnected = v1alpha1.VMIConditionAgentConnected
	ReasonAgentConnected    = "GuestAgentConnected"

	ReasonPodCreated         = "LauncherPodCreated"
	ReasonPodCreateFailed    = "FailedCreate"
	ReasonPVCNotFound        = "PVCNotFound"
	ReasonPodDeleted         = "LauncherPodDeleted"
	ReasonPodFailed          = "LauncherFailed"
	ReasonPodSucceeded       = "LauncherSucceeded"
	ReasonDomainCrashed      = "DomainCrashed"
	ReasonDomainShutdown     = "DomainShutdown"
	ReasonGuestNotRunning    = "GuestNotRunning"
	ReasonGuestRunning       = "GuestRunning"
	ReasonPaused             = "Paused"
	ReasonPodNotReady        = "LauncherPodNotReady"
	ReasonGuestNotReady      = "ReadinessProbeFailed"
	ReasonUnschedulable      = corev1.PodReasonUnschedulable
	ReasonVMIFinal           = "VMIFinished"
	ReasonWaitingForPod      = "WaitingForLauncherPod"
	ReasonNoLauncherPodFound = "NoLauncherPod"
	ReasonNodeUnreachable    = "NodeUnreachable"
)

// phaseRank orders the phases a VMI moves through; it never moves back.
var phaseRank = map[v1alpha1.VirtualMachineInstancePhase]int{
	v1alpha1.VMIPhaseUnset: 0,
	v1alpha1.Pending:       1,
	v1alpha1.Scheduling:    2,
	v1alpha1.Scheduled:     3,
	v1alpha1.Running:       4,
	v1alpha1.Succeeded:     5,
	v1alpha1.Failed:        5,
}

// observation is the VMI's next phase with its reason, derived from the
// launcher pod and the node daemon's report.
type observation struct {
	phase   v1alpha1.VirtualMachineInstancePhase
	reason  string
	message string
}

// observe derives the VMI's phase from its launcher pod (nil when the pod is
// gone) and status.domain (written by the node daemon).
func observe(vmi *v1alpha1.VirtualMachineInstance, pod *corev1.Pod) observation {
	domain := vmi.Status.Domain
	if pod == nil {
		return observation{v1alpha1.Failed, ReasonPodDeleted, "the launcher pod disappeared while the VMI was running"}
	}
	if domain != nil {
		switch domain.State {
		case v1alpha1.DomainCrashed:
			return observation{v1alpha1.Failed, ReasonDomainCrashed, joinMessage("the domain crashed", domain.Message)}
		case v1alpha1.DomainShutdown:
			return observation{v1alpha1.Succeeded, ReasonDomainShutdown, ""}
		}
	}
	switch pod.Status.Phase {
	case corev1.PodFailed:
		return observation{v1alpha1.Failed, ReasonPodFailed, joinMessage("the launcher pod failed", podMessage(pod))}
	case corev1.PodSucceeded:
		return observation{v1alpha1.Succeeded, ReasonPodSucceeded, ""}
	}
	if pod.DeletionTimestamp != nil {
		return observation{v1alpha1.Failed, ReasonPodDeleted, "the launcher pod was deleted while the VMI was running"}
	}
	switch pod.Status.Phase {
	case corev1.PodRunning:
		if domain != nil && (domain.State == v1alpha1.DomainRunning || domain.State == v1alpha1.DomainPaused) {
			return observation{phase: v1alpha1.Running}
		}
		return observation{phase: v1alpha1.Scheduled}
	default:
		return observation{phase: v1alpha1.Scheduling}
	}
}

// advance returns the phase a VMI in current moves to when next is
// observed: phases only move forward, and a final phase is kept. Unknown
// (its node is lost) is entered from any phase that is not final and left
// for whatever is observed once the node is back.
func advance(current, next v1alpha1.VirtualMachineInstancePhase) v1alpha1.VirtualMachineInstancePhase {
	switch {
	case current.IsFinal():
		return current
	case next == v1alpha1.Unknown || current == v1alpha1.Unknown:
		return next
	case phaseRank[next] < phaseRank[current]:
		return current
	}
	return next
}

func podMessage(pod *corev1.Pod) string {
	for _, cs := range pod.Status.ContainerStatuses {
		if t := cs.State.Terminated; t != nil && cs.Name == v1alpha1.LauncherContainerName {
			return joinMessage(fmt.Sprintf("launcher exited with code %d (%s)", t.ExitCode, t.Reason), t.Message)
		}
	}
	return joinMessage(pod.Status.Reason, pod.Status.Message)
}

func joinMessage(a, b string) string {
	switch {
	case a == "":
		return b
	case b == "":
		return a
	}
	return a + ": " + b
}

// podCondition returns pod's condition of type t, or nil.
func podCondition(pod *corev1.Pod, t corev1.PodConditionType) *corev1.PodCondition {
	if pod == nil {
		return nil
	}
	for i := range pod.Status.Conditions {
		if pod.Status.Conditions[i].Type == t {
			return &pod.Status.Conditions[i]
		}
	}
	return nil
}

// setConditions writes vmi's Ready, Paused, AgentConnected and
// PodScheduled conditions (vmiConditions) into its status, and removes
// Paused once the guest runs again and AgentConnected once the agent is
// gone: absent, as in KubeVirt, rather than False.
func setConditions(vmi *v1alpha1.VirtualMachineInstance, pod *corev1.Pod) {
	conds := vmiConditions(vmi, pod)
	for _, t := range []string{ConditionPaused, ConditionAgentConnected} {
		if meta.FindStatusCondition(conds, t) == nil {
			meta.RemoveStatusCondition(&vmi.Status.Conditions, t)
		}
	}
	for _, c := range conds {
		// Keeps the transition time of a condition whose status stayed.
		meta.SetStatusCondition(&vmi.Status.Conditions, c)
	}
}

// vmiConditions computes the Ready and PodScheduled conditions of vmi with
// launcher pod (nil when gone), and Paused while its guest is paused. The
// controller alone computes them, from the node daemon's status.domain.
func vmiConditions(vmi *v1alpha1.VirtualMachineInstance, pod *corev1.Pod) []metav1.Condition {
	phase, generation := vmi.Status.Phase, vmi.Generation
	var out []metav1.Condition
	if c := podCondition(pod, corev1.PodScheduled); c != nil {
		reason := c.Reason
		if reason == "" {
			reason = "Scheduled"
		}
		out = append(out, metav1.Condition{
			Type: ConditionPodScheduled, Status: metav1.ConditionStatus(c.Status),
			Reason: reason, Message: c.Message, ObservedGeneration: generation,
		})
	}
	paused := phase == v1alpha1.Running && vmi.Status.Domain != nil && vmi.Status.Domain.State == v1alpha1.DomainPaused
	var why string
	if paused {
		why = pausedReason(vmi)
		out = append(out, metav1.Condition{
			Type: ConditionPaused, Status: metav1.ConditionTrue,
			Reason: why, Message: pausedMessage(vmi, why), ObservedGeneration: generation,
		})
	}
	if phase == v1alpha1.Running && vmi.Status.Domain != nil && vmi.Status.Domain.GuestAgentConnected {
		out = append(out, metav1.Condition{
			Type: ConditionAgentConnected, Status: metav1.ConditionTrue, Reason: ReasonAgentConnected,
			Message: "the guest agent (qemu-guest-agent) answers", ObservedGeneration: generation,
		})
	}
	ready := metav1.Condition{Type: ConditionReady, Status: metav1.ConditionFalse, ObservedGeneration: generation}
	podReady := podCondition(pod, corev1.PodReady)
	switch {
	case phase.IsFinal():
		ready.Reason, ready.Message = ReasonVMIFinal, "the VMI has finished"
	case phase == v1alpha1.Unknown:
		ready.Reason, ready.Message = ReasonNodeUnreachable, vmi.Status.Message
	case phase != v1alpha1.Running:
		ready.Reason, ready.Message = ReasonGuestNotRunning, "the guest is not running yet"
	case paused && vmi.Annotations[v1alpha1.PausedAnnotation] == "true":
		ready.Reason = ReasonPaused
		ready.Message = fmt.Sprintf("the guest is paused: resume it with `podvirtctl unpause vmi %s`", vmi.Name)
	case paused:
		// The node daemon resumes a guest whose VMI does not ask to be
		// paused (runtime/handler's syncPause).
		ready.Reason = ReasonPaused
		ready.Message = fmt.Sprintf("the guest is paused (%s) though the VMI does not ask for it: the node daemon resumes it", why)
	case podReady == nil || podReady.Status != corev1.ConditionTrue:
		ready.Reason, ready.Message = ReasonPodNotReady, "the launcher pod is not ready"
	case vmi.Spec.ReadinessProbe != nil && (vmi.Status.Readiness == nil || !vmi.Status.Readiness.Ready):
		ready.Reason, ready.Message = ReasonGuestNotReady, "the readiness probe has not passed yet"
		if r := vmi.Status.Readiness; r != nil && r.Message != "" {
			ready.Message = r.Message
		}
	default:
		ready.Status, ready.Reason = metav1.ConditionTrue, ReasonGuestRunning
	}
	return append(out, ready)
}

// conditionReason is what the API server accepts as a condition's reason
// (metav1.Condition's pattern).
var conditionReason = regexp.MustCompile(`^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$`)

// pausedReason says why vmi's guest is paused: the launcher's word for
// libvirt's reason (PausedByUser, IOError, ...), which is the truth even
// when the VMI also asks to be paused. Without a word (Unknown, or an older
// launcher's event numbers, which the API server refuses as a reason) it is
// PausedByUser when the VMI asks to be paused, else Unknown.
func pausedReason(vmi *v1alpha1.VirtualMachineInstance) string {
	r := vmi.Status.Domain.Reason
	switch {
	case r != "" && r != v1alpha1.DomainReasonUnknown && len(r) <= 1024 && conditionReason.MatchString(r):
		return r
	case vmi.Annotations[v1alpha1.PausedAnnotation] == "true":
		return v1alpha1.DomainReasonPausedByUser
	}
	return v1alpha1.DomainReasonUnknown
}

func pausedMessage(vmi *v1alpha1.VirtualMachineInstance, reason string) string {
	msg := "libvirt paused the guest (" + reason + ")"
	if reason == v1alpha1.DomainReasonPausedByUser {
		msg = "the guest was paused on request"
	}
	return joinMessage(msg, vmi.Status.Domain.Message)
}
