package handler

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// TestStartupSteps: the milestones in order, each timed from the one
// before; one not reached is left out, and a clock that stepped back
// counts 0, not a negative time.
func TestStartupSteps(t *testing.T) {
	created := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	at := func(ms int) time.Time { return created.Add(time.Duration(ms) * time.Millisecond) }
	vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{CreationTimestamp: metav1.NewTime(created)}}
	pod := &corev1.Pod{Status: corev1.PodStatus{Conditions: []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: metav1.NewTime(at(1000))},
	}}}
	times := &launchercmd.StartupTimes{
		LauncherStartedUnixMs: at(2500).UnixMilli(),
		LibvirtdReadyUnixMs:   at(2550).UnixMilli(),
		// DomainDefined not reached (a launcher that did not say).
		DomainStartedUnixMs: at(3000).UnixMilli(),
	}
	got := startupSteps(vmi, pod, at(2540), times) // connected "before" libvirtd: a clock step
	want := []struct {
		name string
		ms   int64
	}{{"Scheduled", 1000}, {"LauncherStarted", 1500}, {"LibvirtdReady", 50}, {"NodeDaemonConnected", 0}, {"DomainStarted", 460}}
	if len(got) != len(want) {
		t.Fatalf("steps %+v, want %v", got, want)
	}
	for i, w := range want {
		if got[i].Name != w.name || got[i].Milliseconds != w.ms {
			t.Errorf("step %d: %s %d ms, want %s %d ms", i, got[i].Name, got[i].Milliseconds, w.name, w.ms)
		}
	}
}
