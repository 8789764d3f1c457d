// Package launcher drives one VM's domain through a libvirt connection:
// define and start it, follow its lifecycle events, shut it down
// gracefully (ACPI, then destroy after the grace period), pause, resume,
// reboot, and stream its serial console. Done is closed when the domain
// is gone, which is when the launcher process exits.
//
// Run is the launcher process itself (podvirt-launcher only wires its
// flags to it): a private libvirtd, the command socket
// (runtime/cmdserver), and the domain rendered for this pod — disks with
// their declared formats, the taps podvirt-l2 made, DHCP on them.
package launcher

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/cmdserver"
)

// Event is one lifecycle change of the domain.
type Event struct {
	State  v1.DomainState
	Reason string
	Time   time.Time
}

var (
	eventLoopOnce sync.Once
	eventLoopErr  error
)

// startEventLoop runs libvirt's default event loop for the process; it
// must be registered before the first connection is opened.
func startEventLoop() error {
	eventLoopOnce.Do(func() {
		if eventLoopErr = libvirt.EventRegisterDefaultImpl(); eventLoopErr != nil {
			return
		}
		go func() {
			for {
				if err := libvirt.EventRunDefaultImpl(); err != nil {
					slog.Error("libvirt event loop", "err", err)
				}
			}
		}()
	})
	return eventLoopErr
}

// Launcher owns one domain.
type Launcher struct {
	conn *libvirt.Connect
	name string

	mu      sync.Mutex // guards the fields below
	dom     *libvirt.Domain
	state   v1.DomainState
	reason  string
	events  []Event
	watch   chan struct{} // closed and replaced on every event
	done    chan struct{}
	gone    bool
	cbID    int
	agentID int
	closed  bool
	started time.Time
	health  cmdserver.Health
	// snapshots are the online snapshots' outcomes, by their layers.
	snapshots map[string]SnapshotResult
	// stopReason, when set, is why the launcher destroyed the guest: its
	// end is a crash with that reason, not a shutdown.
	stopReason string

	dhcp dhcpServers // has its own lock

	// sockets is where this launcher's migrations put their unix sockets.
	sockets MigrationSockets
	// podNIC is the guest's pod network NIC (passt's), nil without one.
	podNIC *cmdserver.Interface
	// dialGuest, when set, replaces the dialer of tcpSocket and httpGet
	// probes.
	dialGuest dialFunc
}

// New connects to the libvirt daemon at uri for the domain called name.
func New(uri, name string) (*Launcher, error) {
	if err := startEventLoop(); err != nil {
		return nil, fmt.Errorf("libvirt event loop: %w", err)
	}
	conn, err := libvirt.NewConnect(uri)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", uri, err)
	}
	return &Launcher{conn: conn, name: name, watch: make(chan struct{}), done: make(chan struct{}), cbID: -1, agentID: -1}, nil
}

// follow registers for the domain's lifecycle events.
func (l *Launcher) follow() error {
	id, err := l.conn.DomainEventLifecycleRegister(nil, l.onLifecycle)
	if err != nil {
		return fmt.Errorf("domain %s: register events: %w", l.name, err)
	}
	agentID, err := l.conn.DomainEventAgentLifecycleRegister(nil, l.onAgent)
	if err != nil {
		_ = l.conn.DomainEventDeregister(id)
		return fmt.Errorf("domain %s: register guest agent events: %w", l.name, err)
	}
	l.mu.Lock()
	l.cbID, l.agentID = id, agentID
	l.mu.Unlock()
	return nil
}

// Start defines the domain from xml and starts it.
func (l *Launcher) Start(xml string) error {
	_, err := l.StartResumed(xml, "")
	return err
}

// StartResumed defines the domain from xml and starts it, resuming the
// guest from the saved memory state memory when it is set (a restored
// memory snapshot); resumed is false when the guest booted instead, the
// state being unusable (a warning says why).
func (l *Launcher) StartResumed(xml, memory string) (resumed bool, err error) {
	if err := l.follow(); err != nil {
		return false, err
	}
	if memory != "" {
		// The saved state is the VM's under the UUID of the VMI it was
		// taken from; libvirt resumes it only under that UUID.
		if withUUID, err := l.savedUUID(memory, xml); err == nil {
			xml = withUUID
		} else {
			l.warn(fmt.Sprintf("the snapshot's memory cannot be read (%v): the guest boots instead", err))
			memory = ""
		}
	}
	dom, err := l.conn.DomainDefineXML(xml)
	if err != nil {
		return false, fmt.Errorf("domain %s: define: %w", l.name, err)
	}
	l.mu.Lock()
	l.dom = dom
	l.started = time.Now()
	l.health.Startup.DomainDefined = l.started
	l.setLocked(v1.DomainStarting, "Defined")
	l.mu.Unlock()
	if memory != "" {
		if rerr := l.conn.DomainRestoreFlags(memory, xml, libvirt.DOMAIN_SAVE_RUNNING); rerr == nil {
			resumed = true
		} else {
			l.warn(fmt.Sprintf("the guest could not resume from the snapshot's memory (%v): it boots instead", rerr))
		}
	}
	if !resumed {
		if err := dom.Create(); err != nil {
			_ = dom.Undefine()
			return false, fmt.Errorf("domain %s: start: %w", l.name, err)
		}
	}
	l.mu.Lock()
	l.health.Startup.DomainStarted = time.Now()
	l.mu.Unlock()
	// The started event may have come before l.dom was set; read the state.
	if st, reason, err := dom.GetState(); err == nil {
		l.mu.Lock()
		if !l.gone {
			l.setLocked(stateOf(st), stateReason(st, reason))
		}
		l.mu.Unlock()
	}
	return resumed, nil
}

// stateOf is the podvirt domain state of a libvirt domain state.
func stateOf(s libvirt.DomainState) v1.DomainState {
	switch s {
	case libvirt.DOMAIN_RUNNING:
		return v1.DomainRunning
	case libvirt.DOMAIN_PAUSED, libvirt.DOMAIN_PMSUSPENDED:
		return v1.DomainPaused
	case libvirt.DOMAIN_CRASHED:
		return v1.DomainCrashed
	case libvirt.DOMAIN_SHUTOFF, libvirt.DOMAIN_SHUTDOWN:
		return v1.DomainShutdown
	}
	return v1.DomainStarting
}

func (l *Launcher) onLifecycle(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventLifecycle) {
	name, err := d.GetName()
	if err != nil || name != l.name {
		return
	}
	reason := eventReason(ev.Event, ev.Detail)
	l.mu.Lock()
	defer l.mu.Unlock()
	switch ev.Event {
	case libvirt.DOMAIN_EVENT_STARTED:
		if libvirt.DomainEventStartedDetailType(ev.Detail) == libvirt.DOMAIN_EVENT_STARTED_MIGRATED {
			// An incoming migration: paused here until it resumes.
			l.setLocked(v1.DomainStarting, reason)
			return
		}
		l.setLocked(v1.DomainRunning, reason)
	case libvirt.DOMAIN_EVENT_RESUMED:
		l.setLocked(v1.DomainRunning, reason)
	case libvirt.DOMAIN_EVENT_SUSPENDED:
		l.setLocked(v1.DomainPaused, reason)
	case libvirt.DOMAIN_EVENT_CRASHED:
		l.setLocked(v1.DomainCrashed, reason)
	case libvirt.DOMAIN_EVENT_STOPPED:
		st := v1.DomainShutdown
		switch libvirt.DomainEventStoppedDetailType(ev.Detail) {
		case libvirt.DOMAIN_EVENT_STOPPED_CRASHED, libvirt.DOMAIN_EVENT_STOPPED_FAILED:
			st = v1.DomainCrashed
		}
		if l.stopReason != "" {
			st, reason = v1.DomainCrashed, l.stopReason
		}
		l.setLocked(st, reason)
		l.goneLocked()
	case libvirt.DOMAIN_EVENT_UNDEFINED:
		l.goneLocked()
	}
}

func (l *Launcher) setLocked(s v1.DomainState, reason string) {
	l.state, l.reason = s, reason
	l.events = append(l.events, Event{State: s, Reason: reason, Time: time.Now()})
	l.notifyLocked()
}

// notifyLocked wakes whoever waits on Changed.
func (l *Launcher) notifyLocked() {
	close(l.watch)
	l.watch = make(chan struct{})
}

// Health returns what the probes found and the start's warnings.
func (l *Launcher) Health() cmdserver.Health {
	l.mu.Lock()
	defer l.mu.Unlock()
	h := l.health
	h.Warnings = append([]string(nil), h.Warnings...)
	return h
}

func (l *Launcher) setReadiness(verdict, message string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.health.Readiness != verdict || l.health.ReadinessMessage != message {
		l.health.Readiness, l.health.ReadinessMessage = verdict, message
		l.notifyLocked()
	}
}

// warn records something the user should know about how the domain runs.
func (l *Launcher) warn(msg string) {
	slog.Warn(msg, "domain", l.name)
	l.mu.Lock()
	defer l.mu.Unlock()
	l.health.Warnings = append(l.health.Warnings, msg)
	l.notifyLocked()
}

// stopFailed destroys a running guest that failed (its liveness probe),
// once: the domain ends Crashed with reason and message, and the VM's run
// strategy decides what comes next.
func (l *Launcher) stopFailed(reason, message string) {
	d, err := l.domain()
	if err != nil {
		return
	}
	l.mu.Lock()
	if l.stopReason != "" {
		l.mu.Unlock()
		return // stopped once already; a probe still failing says nothing new
	}
	l.stopReason, l.health.Message = reason, message
	l.mu.Unlock()
	slog.Warn("stopping the guest", "domain", l.name, "reason", reason, "message", message)
	if err := l.destroy(d); err != nil {
		slog.Error("stop the guest", "domain", l.name, "err", err)
	}
}

func (l *Launcher) goneLocked() {
	if !l.gone {
		l.gone = true
		close(l.done)
		l.notifyLocked()
	}
}

// Changed returns a channel that is closed at the next lifecycle change
// (a new state, or the domain going away).
func (l *Launcher) Changed() <-chan struct{} {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.watch
}

// Done is closed when the domain has stopped.
func (l *Launcher) Done() <-chan struct{} { return l.done }

// State returns the current state and what caused it.
func (l *Launcher) State() (v1.DomainState, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.state, l.reason
}

// Events returns the lifecycle changes so far.
func (l *Launcher) Events() []Event {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]Event(nil), l.events...)
}

// WaitState waits until the domain is in state s.
func (l *Launcher) WaitState(ctx context.Context, s v1.DomainState) error {
	for {
		l.mu.Lock()
		cur, w := l.state, l.watch
		l.mu.Unlock()
		if cur == s {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("domain %s: waiting for %s (now %s): %w", l.name, s, cur, ctx.Err())
		case <-w:
		}
	}
}

func (l *Launcher) domain() (*libvirt.Domain, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.dom == nil {
		return nil, fmt.Errorf("domain %s: not started", l.name)
	}
	return l.dom, nil
}

// Pause suspends the guest's vCPUs.
func (l *Launcher) Pause() error {
	d, err := l.domain()
	if err != nil {
		return err
	}
	if err := d.Suspend(); err != nil {
		return fmt.Errorf("domain %s: pause: %w", l.name, err)
	}
	return nil
}

// Resume runs a paused guest again.
func (l *Launcher) Resume() error {
	d, err := l.domain()
	if err != nil {
		return err
	}
	if err := d.Resume(); err != nil {
		return fmt.Errorf("domain %s: resume: %w", l.name, err)
	}
	return nil
}

// Reboot asks the guest to reboot (ACPI).
func (l *Launcher) Reboot() error {
	d, err := l.domain()
	if err != nil {
		return err
	}
	if err := d.Reboot(libvirt.DOMAIN_REBOOT_ACPI_POWER_BTN); err != nil {
		return fmt.Errorf("domain %s: reboot: %w", l.name, err)
	}
	return nil
}

// Shutdown presses the ACPI power button and waits up to grace for the
// guest to power off, then destroys the domain. It returns whether the
// guest went down by itself. ACPI presses are repeated: a guest still
// booting may miss the first.
func (l *Launcher) Shutdown(ctx context.Context, grace time.Duration) (graceful bool, err error) {
	d, err := l.domain()
	if err != nil {
		return false, err
	}
	deadline := time.NewTimer(grace)
	defer deadline.Stop()
	press := time.NewTicker(2 * time.Second)
	defer press.Stop()
	for {
		if err := d.ShutdownFlags(libvirt.DOMAIN_SHUTDOWN_ACPI_POWER_BTN); err != nil && !l.isGone() {
			slog.Warn("ACPI shutdown", "domain", l.name, "err", err)
		}
		select {
		case <-l.done:
			return true, nil
		case <-ctx.Done():
			return false, l.destroy(d)
		case <-deadline.C:
			return false, l.destroy(d)
		case <-press.C:
		}
	}
}

func (l *Launcher) isGone() bool {
	select {
	case <-l.done:
		return true
	default:
		return false
	}
}

func (l *Launcher) destroy(d *libvirt.Domain) error {
	if err := d.Destroy(); err != nil && !l.isGone() {
		return fmt.Errorf("domain %s: destroy: %w", l.name, err)
	}
	select {
	case <-l.done:
	case <-time.After(30 * time.Second):
		return fmt.Errorf("domain %s: no stop event 30s after destroy", l.name)
	}
	return nil
}

// Console opens the guest's serial console as a byte stream. Close it to
// let someone else attach; a new Console takes it over.
func (l *Launcher) Console() (io.ReadWriteCloser, error) {
	d, err := l.domain()
	if err != nil {
		return nil, err
	}
	st, err := l.conn.NewStream(0)
	if err != nil {
		return nil, fmt.Errorf("domain %s: console stream: %w", l.name, err)
	}
	if err := d.OpenConsole("", st, libvirt.DOMAIN_CONSOLE_FORCE); err != nil {
		_ = st.Free()
		return nil, fmt.Errorf("domain %s: open console: %w", l.name, err)
	}
	return &console{st: st}, nil
}

type console struct {
	st   *libvirt.Stream
	once sync.Once
}

func (c *console) Read(p []byte) (int, error) {
	n, err := c.st.Recv(p)
	if err != nil {
		return 0, err
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

func (c *console) Write(p []byte) (int, error) { return c.st.Send(p) }

func (c *console) Close() error {
	var err error
	c.once.Do(func() {
		err = c.st.Abort()
		_ = c.st.Free()
	})
	return err
}

// liveDefinition is the running domain's definition as libvirt has it now
// (disks' backing chains included).
func liveDefinition(d *libvirt.Domain) (*libvirtxml.Domain, error) {
	x, err := d.GetXMLDesc(0)
	if err != nil {
		return nil, fmt.Errorf("read the domain's XML: %w", err)
	}
	dom := &libvirtxml.Domain{}
	if err := dom.Unmarshal(x); err != nil {
		return nil, fmt.Errorf("parse the domain's XML: %w", err)
	}
	return dom, nil
}

// Close undefines the domain (destroying it if still running), stops the
// DHCP servers and closes the connection; closing again does nothing.
func (l *Launcher) Close() error {
	var errs []error
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	d, id, agentID := l.dom, l.cbID, l.agentID
	l.mu.Unlock()
	if d != nil {
		if active, err := d.IsActive(); err == nil && active {
			if err := d.Destroy(); err != nil {
				errs = append(errs, err)
			}
		}
		if err := d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_NVRAM); err != nil {
			var lerr libvirt.Error
			if !errors.As(err, &lerr) || lerr.Code != libvirt.ERR_NO_DOMAIN {
				errs = append(errs, err)
			}
		}
		_ = d.Free()
	}
	for _, cb := range []int{id, agentID} {
		if cb >= 0 {
			_ = l.conn.DomainEventDeregister(cb)
		}
	}
	if _, err := l.conn.Close(); err != nil {
		errs = append(errs, err)
	}
	errs = append(errs, l.stopDHCP())
	l.mu.Lock()
	l.goneLocked() // ends the probes of a domain that never came
	l.mu.Unlock()
	return errors.Join(errs...)
}

var _ cmdserver.Domain = (*Launcher)(nil)
