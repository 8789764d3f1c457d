package controller

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
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
