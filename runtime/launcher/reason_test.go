package launcher

import (
	"regexp"
	"testing"

	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// word is what a metav1.Condition accepts as a reason, without digits: the
// controller copies a paused domain's reason into the Paused condition, and
// a reason is never a libvirt code.
var word = regexp.MustCompile(`^[A-Za-z]([A-Za-z_,:]*[A-Za-z_])?$`)

func TestEventReasons(t *testing.T) {
	for _, tc := range []struct {
		event  libvirt.DomainEventType
		detail int
		want   string
	}{
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_PAUSED), v1.DomainReasonPausedByUser},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED), "Migration"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR), "IOError"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_WATCHDOG), "Watchdog"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_RESTORED), "Restored"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT), "FromSnapshot"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_API_ERROR), "APIError"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY), "Postcopy"},
		{libvirt.DOMAIN_EVENT_SUSPENDED, int(libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED), "PostcopyFailed"},
		{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED), "Unpaused"},
		{libvirt.DOMAIN_EVENT_RESUMED, int(libvirt.DOMAIN_EVENT_RESUMED_MIGRATED), "Migrated"},
		{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_BOOTED), "Booted"},
		{libvirt.DOMAIN_EVENT_STARTED, int(libvirt.DOMAIN_EVENT_STARTED_RESTORED), "Restored"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN), "Shutdown"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_DESTROYED), "Destroyed"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_CRASHED), "Crashed"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_MIGRATED), "Migrated"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_SAVED), "Saved"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FAILED), "Failed"},
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT), "FromSnapshot"},
		{libvirt.DOMAIN_EVENT_SHUTDOWN, int(libvirt.DOMAIN_EVENT_SHUTDOWN_GUEST), "GuestShutdown"},
		{libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_PANICKED), "Panicked"},
		{libvirt.DOMAIN_EVENT_CRASHED, int(libvirt.DOMAIN_EVENT_CRASHED_CRASHLOADED), "CrashLoaded"},
		{libvirt.DOMAIN_EVENT_PMSUSPENDED, int(libvirt.DOMAIN_EVENT_PMSUSPENDED_MEMORY), "PMSuspended"},
		// Details are numbered per event type: the same number means
		// something else under another event.
		{libvirt.DOMAIN_EVENT_STOPPED, int(libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR), "Crashed"},
		// Codes this launcher has no word for.
		{libvirt.DOMAIN_EVENT_SUSPENDED, 1000, v1.DomainReasonUnknown},
		{libvirt.DomainEventType(1000), 0, v1.DomainReasonUnknown},
	} {
		if got := eventReason(tc.event, tc.detail); got != tc.want {
			t.Errorf("event %d detail %d → %q, want %q", tc.event, tc.detail, got, tc.want)
		}
	}
}

func TestStateReasons(t *testing.T) {
	for _, tc := range []struct {
		state  libvirt.DomainState
		reason int
		want   string
	}{
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_USER), v1.DomainReasonPausedByUser},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_IOERROR), "IOError"},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_MIGRATION), "Migration"},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_WATCHDOG), "Watchdog"},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_API_ERROR), "APIError"},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_STARTING_UP), "StartingUp"},
		{libvirt.DOMAIN_PAUSED, int(libvirt.DOMAIN_PAUSED_UNKNOWN), v1.DomainReasonUnknown},
		{libvirt.DOMAIN_RUNNING, int(libvirt.DOMAIN_RUNNING_BOOTED), "Booted"},
		{libvirt.DOMAIN_RUNNING, int(libvirt.DOMAIN_RUNNING_UNPAUSED), "Unpaused"},
		{libvirt.DOMAIN_SHUTOFF, int(libvirt.DOMAIN_SHUTOFF_SHUTDOWN), "Shutdown"},
		{libvirt.DOMAIN_SHUTOFF, int(libvirt.DOMAIN_SHUTOFF_DESTROYED), "Destroyed"},
		{libvirt.DOMAIN_SHUTOFF, int(libvirt.DOMAIN_SHUTOFF_FAILED), "Failed"},
		{libvirt.DOMAIN_SHUTOFF, int(libvirt.DOMAIN_SHUTOFF_DAEMON), "KilledByDaemon"},
		{libvirt.DOMAIN_CRASHED, int(libvirt.DOMAIN_CRASHED_PANICKED), "Panicked"},
		{libvirt.DOMAIN_PMSUSPENDED, int(libvirt.DOMAIN_PMSUSPENDED_UNKNOWN), "PMSuspended"},
		{libvirt.DOMAIN_NOSTATE, int(libvirt.DOMAIN_NOSTATE_UNKNOWN), v1.DomainReasonUnknown},
		{libvirt.DOMAIN_PAUSED, 1000, v1.DomainReasonUnknown},
	} {
		if got := stateReason(tc.state, tc.reason); got != tc.want {
			t.Errorf("state %d reason %d → %q, want %q", tc.state, tc.reason, got, tc.want)
		}
	}
}

// TestReasonsAreWords: whatever libvirt sends, past the codes this libvirt
// knows too, the reason is a word.
func TestReasonsAreWords(t *testing.T) {
	for ev := libvirt.DOMAIN_EVENT_DEFINED; ev <= libvirt.DOMAIN_EVENT_CRASHED+1; ev++ {
		for detail := range 16 {
			if r := eventReason(ev, detail); !word.MatchString(r) {
				t.Errorf("event %d detail %d → %q, not a word", ev, detail, r)
			}
		}
	}
	for s := libvirt.DOMAIN_NOSTATE; s <= libvirt.DOMAIN_PMSUSPENDED+1; s++ {
		for reason := range 20 {
			if r := stateReason(s, reason); !word.MatchString(r) {
				t.Errorf("state %d reason %d → %q, not a word", s, reason, r)
			}
		}
	}
}
