package controller

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

func TestObserve(t *testing.T) {
	now := metav1.Now()
	pod := func(phase corev1.PodPhase, deleting bool) *corev1.Pod {
		p := &corev1.Pod{Status: corev1.PodStatus{Phase: phase}}
		if deleting {
			p.DeletionTimestamp = &now
		}
		return p
	}
	for _, tc := range []struct {
		name   string
		pod    *corev1.Pod
		domain v1alpha1.DomainState
		want   v1alpha1.VirtualMachineInstancePhase
		reason string
	}{
		{"pod pending", pod(corev1.PodPending, false), "", v1alpha1.Scheduling, ""},
		{"pod running, no report", pod(corev1.PodRunning, false), "", v1alpha1.Scheduled, ""},
		{"pod running, domain starting", pod(corev1.PodRunning, false), v1alpha1.DomainStarting, v1alpha1.Scheduled, ""},
		{"domain running", pod(corev1.PodRunning, false), v1alpha1.DomainRunning, v1alpha1.Running, ""},
		{"domain paused", pod(corev1.PodRunning, false), v1alpha1.DomainPaused, v1alpha1.Running, ""},
		{"domain running, pod still pending", pod(corev1.PodPending, false), v1alpha1.DomainRunning, v1alpha1.Scheduling, ""},
		{"guest shut down", pod(corev1.PodRunning, false), v1alpha1.DomainShutdown, v1alpha1.Succeeded, ReasonDomainShutdown},
		{"domain crashed", pod(corev1.PodRunning, false), v1alpha1.DomainCrashed, v1alpha1.Failed, ReasonDomainCrashed},
		{"launcher exited 0", pod(corev1.PodSucceeded, false), v1alpha1.DomainRunning, v1alpha1.Succeeded, ReasonPodSucceeded},
		{"launcher failed", pod(corev1.PodFailed, false), v1alpha1.DomainRunning, v1alpha1.Failed, ReasonPodFailed},
		{"pod being deleted", pod(corev1.PodRunning, true), v1alpha1.DomainRunning, v1alpha1.Failed, ReasonPodDeleted},
		{"pod gone", nil, v1alpha1.DomainRunning, v1alpha1.Failed, ReasonPodDeleted},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmi := &v1alpha1.VirtualMachineInstance{}
			if tc.domain != "" {
				vmi.Status.Domain = &v1alpha1.DomainStatus{State: tc.domain}
			}
			got := observe(vmi, tc.pod)
			if got.phase != tc.want || got.reason != tc.reason {
				t.Fatalf("got %s (%s), want %s (%s)", got.phase, got.reason, tc.want, tc.reason)
			}
		})
	}
}

func TestAdvance(t *testing.T) {
	for _, tc := range []struct {
		from, to, want v1alpha1.VirtualMachineInstancePhase
	}{
		{v1alpha1.Pending, v1alpha1.Scheduling, v1alpha1.Scheduling},
		{v1alpha1.Running, v1alpha1.Scheduled, v1alpha1.Running},  // never back
		{v1alpha1.Scheduling, v1alpha1.Running, v1alpha1.Running}, // may skip
		{v1alpha1.Failed, v1alpha1.Running, v1alpha1.Failed},      // final stays
		{v1alpha1.Succeeded, v1alpha1.Failed, v1alpha1.Succeeded}, // final stays
		{v1alpha1.Scheduled, v1alpha1.Failed, v1alpha1.Failed},
	} {
		if got := advance(tc.from, tc.to); got != tc.want {
			t.Errorf("%s → %s gave %s, want %s", tc.from, tc.to, got, tc.want)
		}
	}
}

func TestPausedConditions(t *testing.T) {
	readyPod := &corev1.Pod{Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{
		{Type: corev1.PodReady, Status: corev1.ConditionTrue},
	}}}
	for _, tc := range []struct {
		name      string
		phase     v1alpha1.VirtualMachineInstancePhase
		state     v1alpha1.DomainState
		reason    string // status.domain.reason
		annotated bool   // podvirt.io/paused=true
		// wantPaused is the Paused condition's reason, "" for none.
		wantPaused string
		wantReady  metav1.ConditionStatus
		// wantMessage is part of Ready's message.
		wantMessage string
	}{
		{"running", v1alpha1.Running, v1alpha1.DomainRunning, "Booted", false, "", metav1.ConditionTrue, ""},
		{"paused on request", v1alpha1.Running, v1alpha1.DomainPaused, "PausedByUser", true, "PausedByUser", metav1.ConditionFalse, "resume it with `podvirtctl unpause vmi v`"},
		{"paused by an I/O error", v1alpha1.Running, v1alpha1.DomainPaused, "IOError", false, "IOError", metav1.ConditionFalse, "the node daemon resumes it"},
		{"I/O error while the VMI asks to be paused", v1alpha1.Running, v1alpha1.DomainPaused, "IOError", true, "IOError", metav1.ConditionFalse, "podvirtctl unpause vmi v"},
		{"older launcher's event numbers", v1alpha1.Running, v1alpha1.DomainPaused, "event 3 detail 0", true, "PausedByUser", metav1.ConditionFalse, "podvirtctl unpause"},
		{"no word, not asked for", v1alpha1.Running, v1alpha1.DomainPaused, "", false, "Unknown", metav1.ConditionFalse, "paused (Unknown)"},
		{"unknown while asked for", v1alpha1.Running, v1alpha1.DomainPaused, "Unknown", true, "PausedByUser", metav1.ConditionFalse, "podvirtctl unpause"},
		{"finished", v1alpha1.Failed, v1alpha1.DomainPaused, "PausedByUser", true, "", metav1.ConditionFalse, "finished"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			vmi := &v1alpha1.VirtualMachineInstance{}
			vmi.Name = "v"
			if tc.annotated {
				vmi.Annotations = map[string]string{v1alpha1.PausedAnnotation: "true"}
			}
			vmi.Status.Phase = tc.phase
			vmi.Status.Domain = &v1alpha1.DomainStatus{State: tc.state, Reason: tc.reason}
			// A Paused condition left from before must go when the guest
			// is no longer paused.
			vmi.Status.Conditions = []metav1.Condition{{Type: ConditionPaused, Status: metav1.ConditionTrue, Reason: "PausedByUser"}}
			setConditions(vmi, readyPod)

			paused := meta.FindStatusCondition(vmi.Status.Conditions, ConditionPaused)
			switch {
			case tc.wantPaused == "" && paused != nil:
				t.Errorf("Paused condition %+v, want none", paused)
			case tc.wantPaused != "" && (paused == nil || paused.Status != metav1.ConditionTrue || paused.Reason != tc.wantPaused):
				t.Errorf("Paused condition %+v, want True with reason %s", paused, tc.wantPaused)
			}
			ready := meta.FindStatusCondition(vmi.Status.Conditions, ConditionReady)
			if ready == nil || ready.Status != tc.wantReady || !strings.Contains(ready.Message, tc.wantMessage) {
				t.Fatalf("Ready condition %+v, want %s with a message containing %q", ready, tc.wantReady, tc.wantMessage)
			}
			if tc.wantPaused != "" && ready.Reason != ReasonPaused {
				t.Errorf("Ready reason %s, want %s", ready.Reason, ReasonPaused)
			}
		})
	}
}

// TestAgentConnectedCondition: AgentConnected is True while the node
// daemon says the guest agent is connected, and absent otherwise.
func TestAgentConnectedCondition(t *testing.T) {
	vmi := &v1alpha1.VirtualMachineInstance{}
	vmi.Status.Phase = v1alpha1.Running
	vmi.Status.Domain = &v1alpha1.DomainStatus{State: v1alpha1.DomainRunning, GuestAgentConnected: true}
	setConditions(vmi, nil)
	if c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionAgentConnected); c == nil || c.Status != metav1.ConditionTrue {
		t.Errorf("with the agent connected: %+v, want AgentConnected True", c)
	}
	vmi.Status.Domain.GuestAgentConnected = false
	setConditions(vmi, nil)
	if c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionAgentConnected); c != nil {
		t.Errorf("with the agent gone: %+v, want no AgentConnected condition", c)
	}
}
