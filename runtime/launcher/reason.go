package launcher

import (
	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// Words for libvirt's event details and state reasons, which are numbered
// per event type and per state.
var (
	startedReasons = map[libvirt.DomainEventStartedDetailType]string{
		libvirt.DOMAIN_EVENT_STARTED_BOOTED:        "Booted",
		libvirt.DOMAIN_EVENT_STARTED_MIGRATED:      "Migrated",
		libvirt.DOMAIN_EVENT_STARTED_RESTORED:      "Restored",
		libvirt.DOMAIN_EVENT_STARTED_FROM_SNAPSHOT: "FromSnapshot",
		libvirt.DOMAIN_EVENT_STARTED_WAKEUP:        "Wakeup",
		libvirt.DOMAIN_EVENT_STARTED_RECREATED:     "Recreated",
	}
	suspendedReasons = map[libvirt.DomainEventSuspendedDetailType]string{
		libvirt.DOMAIN_EVENT_SUSPENDED_PAUSED:          v1.DomainReasonPausedByUser,
		libvirt.DOMAIN_EVENT_SUSPENDED_MIGRATED:        "Migration",
		libvirt.DOMAIN_EVENT_SUSPENDED_IOERROR:         "IOError",
		libvirt.DOMAIN_EVENT_SUSPENDED_WATCHDOG:        "Watchdog",
		libvirt.DOMAIN_EVENT_SUSPENDED_RESTORED:        "Restored",
		libvirt.DOMAIN_EVENT_SUSPENDED_FROM_SNAPSHOT:   "FromSnapshot",
		libvirt.DOMAIN_EVENT_SUSPENDED_API_ERROR:       "APIError",
		libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY:        "Postcopy",
		libvirt.DOMAIN_EVENT_SUSPENDED_POSTCOPY_FAILED: "PostcopyFailed",
	}
	resumedReasons = map[libvirt.DomainEventResumedDetailType]string{
		libvirt.DOMAIN_EVENT_RESUMED_UNPAUSED:        "Unpaused",
		libvirt.DOMAIN_EVENT_RESUMED_MIGRATED:        "Migrated",
		libvirt.DOMAIN_EVENT_RESUMED_FROM_SNAPSHOT:   "FromSnapshot",
		libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY:        "Postcopy",
		libvirt.DOMAIN_EVENT_RESUMED_POSTCOPY_FAILED: "PostcopyFailed",
	}
	stoppedReasons = map[libvirt.DomainEventStoppedDetailType]string{
		libvirt.DOMAIN_EVENT_STOPPED_SHUTDOWN:      "Shutdown",
		libvirt.DOMAIN_EVENT_STOPPED_DESTROYED:     "Destroyed",
		libvirt.DOMAIN_EVENT_STOPPED_CRASHED:       "Crashed",
		libvirt.DOMAIN_EVENT_STOPPED_MIGRATED:      "Migrated",
		libvirt.DOMAIN_EVENT_STOPPED_SAVED:         "Saved",
		libvirt.DOMAIN_EVENT_STOPPED_FAILED:        "Failed",
		libvirt.DOMAIN_EVENT_STOPPED_FROM_SNAPSHOT: "FromSnapshot",
		libvirt.DOMAIN_EVENT_STOPPED_RECREATED:     "Recreated",
	}
	shutdownReasons = map[libvirt.DomainEventShutdownDetailType]string{
		libvirt.DOMAIN_EVENT_SHUTDOWN_FINISHED: "Shutdown",
		libvirt.DOMAIN_EVENT_SHUTDOWN_GUEST:    "GuestShutdown",
		libvirt.DOMAIN_EVENT_SHUTDOWN_HOST:     "HostShutdown",
	}
	pmSuspendedReasons = map[libvirt.DomainEventPMSuspendedDetailType]string{
		libvirt.DOMAIN_EVENT_PMSUSPENDED_MEMORY: "PMSuspended",
		libvirt.DOMAIN_EVENT_PMSUSPENDED_DISK:   "PMSuspendedToDisk",
	}
	crashedReasons = map[libvirt.DomainEventCrashedDetailType]string{
		libvirt.DOMAIN_EVENT_CRASHED_PANICKED:    "Panicked",
		libvirt.DOMAIN_EVENT_CRASHED_CRASHLOADED: "CrashLoaded",
	}
	runningStateReasons = map[libvirt.DomainRunningReason]string{
		libvirt.DOMAIN_RUNNING_BOOTED:             "Booted",
		libvirt.DOMAIN_RUNNING_MIGRATED:           "Migrated",
		libvirt.DOMAIN_RUNNING_RESTORED:           "Restored",
		libvirt.DOMAIN_RUNNING_FROM_SNAPSHOT:      "FromSnapshot",
		libvirt.DOMAIN_RUNNING_UNPAUSED:           "Unpaused",
		libvirt.DOMAIN_RUNNING_MIGRATION_CANCELED: "MigrationCanceled",
		libvirt.DOMAIN_RUNNING_SAVE_CANCELED:      "SaveCanceled",
		libvirt.DOMAIN_RUNNING_WAKEUP:             "Wakeup",
		libvirt.DOMAIN_RUNNING_CRASHED:            "Crashed",
		libvirt.DOMAIN_RUNNING_POSTCOPY:           "Postcopy",
		libvirt.DOMAIN_RUNNING_POSTCOPY_FAILED:    "PostcopyFailed",
	}
	pausedStateReasons = map[libvirt.DomainPausedReason]string{
		libvirt.DOMAIN_PAUSED_USER:            v1.DomainReasonPausedByUser,
		libvirt.DOMAIN_PAUSED_MIGRATION:       "Migration",
		libvirt.DOMAIN_PAUSED_SAVE:            "Save",
		libvirt.DOMAIN_PAUSED_DUMP:            "Dump",
		libvirt.DOMAIN_PAUSED_IOERROR:         "IOError",
		libvirt.DOMAIN_PAUSED_WATCHDOG:        "Watchdog",
		libvirt.DOMAIN_PAUSED_FROM_SNAPSHOT:   "FromSnapshot",
		libvirt.DOMAIN_PAUSED_SHUTTING_DOWN:   "ShuttingDown",
		libvirt.DOMAIN_PAUSED_SNAPSHOT:        "Snapshot",
		libvirt.DOMAIN_PAUSED_CRASHED:         "Crashed",
		libvirt.DOMAIN_PAUSED_STARTING_UP:     "StartingUp",
		libvirt.DOMAIN_PAUSED_POSTCOPY:        "Postcopy",
		libvirt.DOMAIN_PAUSED_POSTCOPY_FAILED: "PostcopyFailed",
		libvirt.DOMAIN_PAUSED_API_ERROR:       "APIError",
	}
	shutdownStateReasons = map[libvirt.DomainShutdownReason]string{
		libvirt.DOMAIN_SHUTDOWN_USER: "ShuttingDown",
	}
	shutoffStateReasons = map[libvirt.DomainShutoffReason]string{
		libvirt.DOMAIN_SHUTOFF_SHUTDOWN:      "Shutdown",
		libvirt.DOMAIN_SHUTOFF_DESTROYED:     "Destroyed",
		libvirt.DOMAIN_SHUTOFF_CRASHED:       "Crashed",
		libvirt.DOMAIN_SHUTOFF_MIGRATED:      "Migrated",
		libvirt.DOMAIN_SHUTOFF_SAVED:         "Saved",
		libvirt.DOMAIN_SHUTOFF_FAILED:        "Failed",
		libvirt.DOMAIN_SHUTOFF_FROM_SNAPSHOT: "FromSnapshot",
		libvirt.DOMAIN_SHUTOFF_DAEMON:        "KilledByDaemon",
	}
	crashedStateReasons = map[libvirt.DomainCrashedReason]string{
		libvirt.DOMAIN_CRASHED_PANICKED: "Panicked",
	}
)

// eventReason is the word for a lifecycle event's detail. Details are
// numbered per event type, so the type picks the table.
func eventReason(ev libvirt.DomainEventType, detail int) string {
	var r string
	switch ev {
	case libvirt.DOMAIN_EVENT_DEFINED:
		r = "Defined"
	case libvirt.DOMAIN_EVENT_UNDEFINED:
		r = "Undefined"
	case libvirt.DOMAIN_EVENT_STARTED:
		r = startedReasons[libvirt.DomainEventStartedDetailType(detail)]
	case libvirt.DOMAIN_EVENT_SUSPENDED:
		r = suspendedReasons[libvirt.DomainEventSuspendedDetailType(detail)]
	case libvirt.DOMAIN_EVENT_RESUMED:
		r = resumedReasons[libvirt.DomainEventResumedDetailType(detail)]
	case libvirt.DOMAIN_EVENT_STOPPED:
		r = stoppedReasons[libvirt.DomainEventStoppedDetailType(detail)]
	case libvirt.DOMAIN_EVENT_SHUTDOWN:
		r = shutdownReasons[libvirt.DomainEventShutdownDetailType(detail)]
	case libvirt.DOMAIN_EVENT_PMSUSPENDED:
		r = pmSuspendedReasons[libvirt.DomainEventPMSuspendedDetailType(detail)]
	case libvirt.DOMAIN_EVENT_CRASHED:
		r = crashedReasons[libvirt.DomainEventCrashedDetailType(detail)]
	}
	if r == "" {
		return v1.DomainReasonUnknown // a libvirt newer than this table
	}
	return r
}

// stateReason is the word for the reason virDomainGetState gives with a
// state. Reasons are numbered per state, so the state picks the table.
func stateReason(s libvirt.DomainState, reason int) string {
	var r string
	switch s {
	case libvirt.DOMAIN_RUNNING:
		r = runningStateReasons[libvirt.DomainRunningReason(reason)]
	case libvirt.DOMAIN_PAUSED:
		r = pausedStateReasons[libvirt.DomainPausedReason(reason)]
	case libvirt.DOMAIN_SHUTDOWN:
		r = shutdownStateReasons[libvirt.DomainShutdownReason(reason)]
	case libvirt.DOMAIN_SHUTOFF:
		r = shutoffStateReasons[libvirt.DomainShutoffReason(reason)]
	case libvirt.DOMAIN_CRASHED:
		r = crashedStateReasons[libvirt.DomainCrashedReason(reason)]
	case libvirt.DOMAIN_PMSUSPENDED:
		// Reported as Paused (stateOf): the word keeps the difference.
		r = "PMSuspended"
	}
	if r == "" {
		return v1.DomainReasonUnknown // *_UNKNOWN, or a libvirt newer than this table
	}
	return r
}
