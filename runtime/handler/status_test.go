package handler

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// TestObserve: what the handler writes for each launcher report.
func TestObserve(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	t1 := metav1.NewTime(t0.Add(time.Minute))
	running := &launchercmd.StatusResponse{State: "Running", Reason: "Booted", Interfaces: []*launchercmd.Interface{
		{Network: "l2", Mac: "02:00:00:00:00:01", Ip: "10.1.2.3/24", Acked: true},
		{Network: "raw", Mac: "02:00:00:00:00:02"},
	}}
	for _, tc := range []struct {
		name      string
		last      *launchercmd.StatusResponse
		lost      string
		cur       *v1.DomainStatus
		wantState v1.DomainState
		reason    string
		when      metav1.Time
		message   string
		readiness *v1.ProbeStatus
	}{
		{name: "waiting for Start", last: &launchercmd.StatusResponse{}},
		{name: "first Running", last: running, wantState: v1.DomainRunning, reason: "Booted", when: t1},
		{name: "still Running keeps the time", last: running, cur: &v1.DomainStatus{State: v1.DomainRunning, LastTransitionTime: t0}, wantState: v1.DomainRunning, reason: "Booted", when: t0},
		{name: "Running to Paused", last: &launchercmd.StatusResponse{State: "Paused", Reason: "PausedByUser"}, cur: &v1.DomainStatus{State: v1.DomainRunning, LastTransitionTime: t0}, wantState: v1.DomainPaused, reason: "PausedByUser", when: t1},
		{name: "guest powered off", last: &launchercmd.StatusResponse{State: "Shutdown", Reason: "Shutdown"}, wantState: v1.DomainShutdown, reason: "Shutdown", when: t1},
		{name: "launcher lost", last: running, lost: "the launcher went away", wantState: v1.DomainCrashed, reason: ReasonLauncherLost, when: t1, message: "the launcher went away"},
		{name: "readiness probe failing", last: &launchercmd.StatusResponse{State: "Running", Reason: "Booted", Readiness: launchercmd.NotReady, ReadinessMessage: "readiness probe: GET / on guest port 80: 503"},
			wantState: v1.DomainRunning, reason: "Booted", when: t1, readiness: &v1.ProbeStatus{Message: "readiness probe: GET / on guest port 80: 503"}},
		{name: "readiness probe passing", last: &launchercmd.StatusResponse{State: "Running", Reason: "Booted", Readiness: launchercmd.Ready},
			wantState: v1.DomainRunning, reason: "Booted", when: t1, readiness: &v1.ProbeStatus{Ready: true}},
		{name: "liveness probe failed", last: &launchercmd.StatusResponse{State: "Crashed", Reason: "LivenessProbeFailed", Message: "liveness probe: exit status 1"},
			wantState: v1.DomainCrashed, reason: "LivenessProbeFailed", when: t1, message: "liveness probe: exit status 1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			o := observe(tc.last, tc.lost, tc.cur, t1)
			if tc.wantState == "" {
				if o.Domain != nil {
					t.Fatalf("domain %+v before Start, want none", o.Domain)
				}
				return
			}
			if o.Domain == nil || o.Domain.State != tc.wantState || o.Domain.Reason != tc.reason || !o.Domain.LastTransitionTime.Equal(&tc.when) || o.Domain.Message != tc.message {
				t.Fatalf("domain %+v, want %s/%s at %s message %q", o.Domain, tc.wantState, tc.reason, tc.when, tc.message)
			}
			if (o.Readiness == nil) != (tc.readiness == nil) || (o.Readiness != nil && *o.Readiness != *tc.readiness) {
				t.Fatalf("readiness %+v, want %+v", o.Readiness, tc.readiness)
			}
			if len(tc.last.GetInterfaces()) > 0 {
				want := []v1.VirtualMachineInstanceNetworkInterface{
					{Name: "l2", MAC: "02:00:00:00:00:01", IP: "10.1.2.3", IPs: []string{"10.1.2.3"}},
					{Name: "raw", MAC: "02:00:00:00:00:02"},
				}
				if len(o.Interfaces) != 2 || o.Interfaces[0].IP != want[0].IP || o.Interfaces[0].MAC != want[0].MAC || o.Interfaces[1].IP != "" || o.Interfaces[1].Name != "raw" {
					t.Fatalf("interfaces %+v, want %+v", o.Interfaces, want)
				}
			}
		})
	}
}
