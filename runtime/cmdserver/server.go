// Package cmdserver is the launcher's command server: the gRPC service of
// contracts/launchercmd on a unix socket at <socket dir>/<vmi-uid>.sock, through which the
// node daemon starts the domain, follows and reads its status, pauses,
// resumes and shuts it down, and attaches to its serial console.
package cmdserver

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// Domain is what the server needs of the launcher (runtime/launcher's
// Launcher).
type Domain interface {
	State() (v1.DomainState, string)
	WaitState(ctx context.Context, s v1.DomainState) error
	Changed() <-chan struct{}
	Pause() error
	Resume() error
	Shutdown(ctx context.Context, grace time.Duration) (graceful bool, err error)
	Console() (io.ReadWriteCloser, error)
	Interfaces() []Interface
	// Health is what the launcher knows of the guest beyond its state.
	Health() Health
	// Stats reads the domain's counters; disks and NICs are named by
	// their VMI names.
	Stats() (*launchercmd.DomainStatsResponse, error)
	// Migrate moves the running domain live to a prepared target,
	// reporting progress; cancelling ctx aborts it.
	Migrate(ctx context.Context, req *launchercmd.MigrateRequest, progress func(*launchercmd.MigrationProgress)) (*launchercmd.MigrationProgress, error)
	// SnapshotDisks switches disks to new overlays for an online
	// snapshot, with the guest frozen or paused meanwhile.
	SnapshotDisks(ctx context.Context, req *launchercmd.SnapshotDisksRequest) (*launchercmd.SnapshotDisksResponse, error)
	Done() <-chan struct{}
}

// PrepareFunc readies the launcher to receive vmi by live migration,
// listening on listen. It returns what the source needs and wait, which
// returns the domain once it has arrived (or why it did not).
type PrepareFunc func(ctx context.Context, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks, listen string) (
	resp *launchercmd.PrepareMigrationResponse, wait func(context.Context) (Domain, Config, error), err error)

// Interface is one guest NIC as the launcher knows it from its DHCP
// leases.
type Interface struct {
	// Network is the VMI network (and interface) name.
	Network string
	// MAC is the guest's MAC.
	MAC net.HardwareAddr
	// Addr is the address the lease gives the guest; invalid for an
	// L2-only network (no lease: the guest brings its own).
	Addr netip.Prefix
	// Acked is whether the launcher's DHCP server has acknowledged the
	// lease to the guest at least once.
	Acked bool
}

// Health is what the launcher knows of the guest beyond its state: its
// probes' verdicts and how it runs worse than asked.
type Health struct {
	// Message details the state (why the launcher stopped the guest).
	Message string
	// Readiness is "" (no probe, or no verdict yet), or
	// launchercmd.Ready or NotReady; ReadinessMessage says why NotReady.
	Readiness, ReadinessMessage string
	// Warnings are set once the domain started.
	Warnings []string
	// GuestAgent says the guest agent is connected; OSInfo is what it
	// said of the guest's OS (nil before it answered).
	GuestAgent bool
	OSInfo     *launchercmd.GuestOSInfo
	// Startup is when the launcher reached each step of its start.
	Startup Startup
}

// Startup is the launcher's side of a VMI's start; a zero time is a step
// not reached.
type Startup struct {
	LauncherStarted, LibvirtdReady, DomainDefined, DomainStarted time.Time
}

// proto is s as StartupTimes, nil when no step was reached.
func (s Startup) proto() *launchercmd.StartupTimes {
	if s == (Startup{}) {
		return nil
	}
	ms := func(t time.Time) int64 {
		if t.IsZero() {
			return 0
		}
		return t.UnixMilli()
	}
	return &launchercmd.StartupTimes{LauncherStartedUnixMs: ms(s.LauncherStarted), LibvirtdReadyUnixMs: ms(s.LibvirtdReady),
		DomainDefinedUnixMs: ms(s.DomainDefined), DomainStartedUnixMs: ms(s.DomainStarted)}
}

// Config says which VMI the server speaks for.
type Config struct {
	// VMI is namespace/name, for status and error messages.
	VMI string
	// UID is the VMI's UID: the socket is named after it.
	UID string
	// DomainName is the libvirt domain's name.
	DomainName string
	// Grace is the VMI's termination grace period, used by Shutdown.
	Grace time.Duration
}

// StartFunc renders vmi as a domain and starts it, with the CNI results
// of the pod's L2 attachments (nil when there are none). It returns the
// running domain and the server's Config for it.
type StartFunc func(ctx context.Context, vmi *v1.VirtualMachineInstance, networks *launchercmd.Networks) (Domain, Config, error)

// statusPoll is how often Watch looks for changes no lifecycle event
// announces (a DHCP lease acknowledged).
const statusPoll = 2 * time.Second

// Server serves the Command service for one domain.
type Server struct {
	launchercmd.UnimplementedCommandServer

	startFn   StartFunc
	prepareFn PrepareFunc
	startMu   sync.Mutex // serializes Start and PrepareMigration
	prepared  *launchercmd.PrepareMigrationResponse
	// incomingFailed is closed when a prepared migration did not arrive.
	incomingFailed chan struct{}
	incomingErr    error

	mu      sync.Mutex // guards d, cfg, started
	d       Domain     // nil until started
	cfg     Config
	started chan struct{} // closed once d is set

	shutdownMu   sync.Mutex
	shutdownDone chan struct{} // set by the first Shutdown, closed when it has finished
	// Set before shutdownDone is closed.
	shutdownGraceful bool
	shutdownState    string
	shutdownErr      error

	grpc *grpc.Server
	path string
}

// New returns a server for d, a domain already started.
func New(d Domain, cfg Config) *Server {
	s := &Server{d: d, cfg: cfg, started: make(chan struct{})}
	close(s.started)
	s.grpc = grpc.NewServer()
	launchercmd.RegisterCommandServer(s.grpc, s)
	return s
}

// NewWaiting returns a server for the VMI with uid whose domain does not
// exist yet: the first Start call runs start.
func NewWaiting(uid string, start StartFunc) *Server {
	s := &Server{startFn: start, cfg: Config{UID: uid}, started: make(chan struct{}), incomingFailed: make(chan struct{})}
	s.grpc = grpc.NewServer()
	launchercmd.RegisterCommandServer(s.grpc, s)
	return s
}

// AcceptMigrations lets a waiting server receive its domain by live
// migration (PrepareMigration) instead of Start.
func (s *Server) AcceptMigrations(prepare PrepareFunc) { s.prepareFn = prepare }

// IncomingFailed is closed when a prepared incoming migration failed; Err
// says why. The launcher has nothing to run then.
func (s *Server) IncomingFailed() <-chan struct{} { return s.incomingFailed }

// IncomingErr is why the incoming migration failed.
func (s *Server) IncomingErr() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.incomingErr
}

// Started is closed once the domain has been started.
func (s *Server) Started() <-chan struct{} { return s.started }

// Config is the server's configuration: the UID alone until Start.
func (s *Server) Config() Config {
	_, cfg := s.domain()
	return cfg
}

// domain returns the domain (nil before Start) and the config.
func (s *Server) domain() (Domain, Config) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.d, s.cfg
}

// startedDomain returns the domain, or FailedPrecondition while there is none.
func (s *Server) startedDomain(op string) (Domain, error) {
	d, _ := s.domain()
	if d == nil {
		return nil, s.errorf(codes.FailedPrecondition, op, "domain is not started (the launcher waits for the node daemon's Start)")
	}
	return d, nil
}

// Listen opens the socket at path, replacing a stale one (from an
// earlier launcher in the same pod); the directory is created if needed.
// Only the owner (root: the node daemon) may connect.
func Listen(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("command socket: %w", err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("command socket: removing stale %s: %w", path, err)
	}
	lis, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("command socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		_ = lis.Close()
		return nil, fmt.Errorf("command socket: %w", err)
	}
	return lis, nil
}

// ListenAndServe listens at path and serves in the background until
// Stop, which removes the socket.
func (s *Server) ListenAndServe(path string) error {
	lis, err := Listen(path)
	if err != nil {
		return err
	}
	s.path = path
	go func() { _ = s.grpc.Serve(lis) }()
	return nil
}

// Serve serves on lis until Stop.
func (s *Server) Serve(lis net.Listener) error { return s.grpc.Serve(lis) }

// Stop stops serving: it lets unary calls finish for up to timeout, then
// cuts every connection (console streams included), and removes the
// socket ListenAndServe opened.
func (s *Server) Stop(timeout time.Duration) error {
	done := make(chan struct{})
	go func() {
		s.grpc.GracefulStop()
		close(done)
	}()
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		s.grpc.Stop()
		<-done
	}
	if s.path != "" {
		if err := os.Remove(s.path); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("command socket: %w", err)
		}
	}
	return nil
}

// decodeVMI reads a request's VMI (which must be the one this launcher
// serves) and its networks.
func (s *Server) decodeVMI(op string, vmiJSON, networksJSON []byte) (*v1.VirtualMachineInstance, *launchercmd.Networks, error) {
	vmi := &v1.VirtualMachineInstance{}
	if err := json.Unmarshal(vmiJSON, vmi); err != nil {
		return nil, nil, s.errorf(codes.InvalidArgument, op, "decoding the VMI: %v", err)
	}
	_, cfg := s.domain()
	if string(vmi.UID) != cfg.UID {
		return nil, nil, s.errorf(codes.InvalidArgument, op, "VMI %s/%s has UID %q, this launcher serves %q", vmi.Namespace, vmi.Name, vmi.UID, cfg.UID)
	}
	var networks *launchercmd.Networks
	if len(networksJSON) > 0 {
		networks = &launchercmd.Networks{}
		if err := json.Unmarshal(networksJSON, networks); err != nil {
			return nil, nil, s.errorf(codes.InvalidArgument, op, "decoding the network status: %v", err)
		}
	}
	return vmi, networks, nil
}

// Start renders the VMI and starts its domain, once.
func (s *Server) Start(ctx context.Context, req *launchercmd.StartRequest) (*launchercmd.StatusResponse, error) {
	vmi, networks, err := s.decodeVMI("start", req.GetVmi(), req.GetNetworks())
	if err != nil {
		return nil, err
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if d, _ := s.domain(); d == nil {
		if s.startFn == nil {
			return nil, s.errorf(codes.FailedPrecondition, "start", "this launcher was started with its VMI and cannot start another")
		}
		if s.prepared != nil {
			return nil, s.errorf(codes.FailedPrecondition, "start", "this launcher waits for its domain to arrive by migration")
		}
		d, cfg, err := s.startFn(ctx, vmi, networks)
		if err != nil {
			return nil, s.errorf(codes.Internal, "start", "%v", err)
		}
		cfg.UID = string(vmi.UID)
		s.mu.Lock()
		s.d, s.cfg = d, cfg
		close(s.started)
		s.mu.Unlock()
	}
	return s.status(), nil
}

// PrepareMigration readies the launcher to receive its domain by live
// migration, once; calling it again answers the same.
func (s *Server) PrepareMigration(ctx context.Context, req *launchercmd.PrepareMigrationRequest) (*launchercmd.PrepareMigrationResponse, error) {
	vmi, networks, err := s.decodeVMI("prepare migration", req.GetVmi(), req.GetNetworks())
	if err != nil {
		return nil, err
	}
	s.startMu.Lock()
	defer s.startMu.Unlock()
	if s.prepared != nil {
		return s.prepared, nil
	}
	if d, _ := s.domain(); d != nil || s.prepareFn == nil {
		return nil, s.errorf(codes.FailedPrecondition, "prepare migration", "this launcher runs its domain already, or cannot receive one")
	}
	resp, wait, err := s.prepareFn(ctx, vmi, networks, req.GetListenAddress())
	if err != nil {
		return nil, s.errorf(codes.Internal, "prepare migration", "%v", err)
	}
	s.prepared = resp
	arrival := context.WithoutCancel(ctx) // the domain arrives after this call has returned
	go func() {
		d, cfg, err := wait(arrival)
		s.mu.Lock()
		defer s.mu.Unlock()
		if err != nil {
			s.incomingErr = err
			close(s.incomingFailed)
			return
		}
		cfg.UID = string(vmi.UID)
		s.d, s.cfg = d, cfg
		close(s.started)
	}()
	return resp, nil
}

// Migrate moves the running domain to a prepared target, streaming progress.
func (s *Server) Migrate(req *launchercmd.MigrateRequest, stream launchercmd.Command_MigrateServer) error {
	d, err := s.startedDomain("migrate")
	if err != nil {
		return err
	}
	if st, _ := d.State(); st != v1.DomainRunning && st != v1.DomainPaused {
		return s.errorf(codes.FailedPrecondition, "migrate", "domain is %s", st)
	}
	ctx := stream.Context()
	last, err := d.Migrate(ctx, req, func(p *launchercmd.MigrationProgress) { _ = stream.Send(p) })
	if err != nil {
		if ctx.Err() != nil {
			return s.ctxError(ctx, "migrate", err)
		}
		return s.errorf(codes.Internal, "migrate", "%v", err)
	}
	last.Done = true
	return stream.Send(last)
}

// Status reports the domain's state and interfaces.
func (s *Server) Status(context.Context, *launchercmd.StatusRequest) (*launchercmd.StatusResponse, error) {
	return s.status(), nil
}

func (s *Server) status() *launchercmd.StatusResponse {
	d, cfg := s.domain()
	resp := &launchercmd.StatusResponse{Vmi: cfg.VMI, Uid: cfg.UID, Domain: cfg.DomainName}
	if d == nil {
		return resp
	}
	st, reason := d.State()
	resp.State, resp.Reason = string(st), reason
	h := d.Health()
	resp.Message, resp.Readiness, resp.ReadinessMessage, resp.Warnings = h.Message, h.Readiness, h.ReadinessMessage, h.Warnings
	resp.GuestAgentConnected, resp.GuestOsInfo = h.GuestAgent, h.OSInfo
	resp.Startup = h.Startup.proto()
	for _, i := range d.Interfaces() {
		pi := &launchercmd.Interface{Network: i.Network, Mac: i.MAC.String(), Acked: i.Acked}
		if i.Addr.IsValid() {
			pi.Ip = i.Addr.String()
		}
		resp.Interfaces = append(resp.Interfaces, pi)
	}
	return resp
}

// Watch sends the status whenever it changes, and ends after the domain
// is gone.
func (s *Server) Watch(_ *launchercmd.WatchRequest, stream launchercmd.Command_WatchServer) error {
	ctx := stream.Context()
	tick := time.NewTicker(statusPoll)
	defer tick.Stop()
	var last *launchercmd.StatusResponse
	for {
		// Take the change channel before reading the status, so no change
		// falls between the two.
		d, _ := s.domain()
		var changed, done <-chan struct{} = s.started, nil
		if d != nil {
			changed, done = d.Changed(), d.Done()
		}
		cur := s.status()
		if last == nil || !proto.Equal(cur, last) {
			if err := stream.Send(cur); err != nil {
				return err
			}
			last = cur
		}
		if done != nil && isClosed(done) {
			return nil
		}
		select {
		case <-changed:
		case <-done:
		case <-tick.C:
		case <-ctx.Done():
			return s.ctxError(ctx, "watch", ctx.Err())
		}
	}
}

func isClosed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// Pause suspends a Running guest and waits until it is Paused.
func (s *Server) Pause(ctx context.Context, _ *launchercmd.PauseRequest) (*launchercmd.PauseResponse, error) {
	d, err := s.startedDomain("pause")
	if err != nil {
		return nil, err
	}
	if err := s.transition(ctx, d, "pause", v1.DomainRunning, v1.DomainPaused, d.Pause); err != nil {
		return nil, err
	}
	return &launchercmd.PauseResponse{}, nil
}

// Resume runs a Paused guest again and waits until it is Running.
func (s *Server) Resume(ctx context.Context, _ *launchercmd.ResumeRequest) (*launchercmd.ResumeResponse, error) {
	d, err := s.startedDomain("resume")
	if err != nil {
		return nil, err
	}
	if err := s.transition(ctx, d, "resume", v1.DomainPaused, v1.DomainRunning, d.Resume); err != nil {
		return nil, err
	}
	return &launchercmd.ResumeResponse{}, nil
}

func (s *Server) transition(ctx context.Context, d Domain, op string, from, to v1.DomainState, do func() error) error {
	if err := s.require(d, op, from); err != nil {
		return err
	}
	if err := do(); err != nil {
		return s.errorf(codes.Internal, op, "%v", err)
	}
	if err := d.WaitState(ctx, to); err != nil {
		return s.ctxError(ctx, op, err)
	}
	return nil
}

// require fails with FailedPrecondition unless the domain is in state want.
func (s *Server) require(d Domain, op string, want v1.DomainState) error {
	if st, _ := d.State(); st != want {
		return s.errorf(codes.FailedPrecondition, op, "domain is %s", stateName(st))
	}
	return nil
}

func stateName(st v1.DomainState) string {
	if st == "" {
		return "not started"
	}
	return string(st)
}

// DomainStats reads the counters of a Running or Paused domain.
func (s *Server) DomainStats(context.Context, *launchercmd.DomainStatsRequest) (*launchercmd.DomainStatsResponse, error) {
	d, err := s.startedDomain("domain stats")
	if err != nil {
		return nil, err
	}
	if st, _ := d.State(); st != v1.DomainRunning && st != v1.DomainPaused {
		return nil, s.errorf(codes.FailedPrecondition, "domain stats", "domain is %s", stateName(st))
	}
	stats, err := d.Stats()
	if err != nil {
		return nil, s.errorf(codes.Internal, "domain stats", "%v", err)
	}
	return stats, nil
}

// SnapshotDisks switches the running domain's disks to new overlays for
// an online snapshot.
func (s *Server) SnapshotDisks(ctx context.Context, req *launchercmd.SnapshotDisksRequest) (*launchercmd.SnapshotDisksResponse, error) {
	d, err := s.startedDomain("snapshot disks")
	if err != nil {
		return nil, err
	}
	if st, _ := d.State(); st != v1.DomainRunning && st != v1.DomainPaused {
		return nil, s.errorf(codes.FailedPrecondition, "snapshot disks", "domain is %s", stateName(st))
	}
	resp, err := d.SnapshotDisks(ctx, req)
	if err != nil {
		return nil, s.errorf(codes.Internal, "snapshot disks", "%v", err)
	}
	return resp, nil
}

// Shutdown shuts the guest down (ACPI, then destroy after the grace
// period). Concurrent calls share one shutdown; it goes on even if the
// caller hangs up.
func (s *Server) Shutdown(ctx context.Context, _ *launchercmd.ShutdownRequest) (*launchercmd.ShutdownResponse, error) {
	d, err := s.startedDomain("shutdown")
	if err != nil {
		return nil, err
	}
	s.shutdownMu.Lock()
	started := s.shutdownDone != nil
	if !started {
		switch st, _ := d.State(); st {
		case v1.DomainShutdown, v1.DomainCrashed, "":
			s.shutdownMu.Unlock()
			return nil, s.errorf(codes.FailedPrecondition, "shutdown", "domain is %s", stateName(st))
		}
		s.shutdownDone = make(chan struct{})
		// The shutdown goes on when this caller hangs up.
		go s.shutdown(context.WithoutCancel(ctx), d, s.shutdownDone)
	}
	done := s.shutdownDone
	s.shutdownMu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
		return nil, s.ctxError(ctx, "shutdown", ctx.Err())
	}
	if s.shutdownErr != nil {
		return nil, s.shutdownErr
	}
	return &launchercmd.ShutdownResponse{Graceful: s.shutdownGraceful, State: s.shutdownState}, nil
}

// shutdown runs the one shutdown and closes done when it is over. ctx
// is never canceled: canceling it would destroy the domain at once.
func (s *Server) shutdown(ctx context.Context, d Domain, done chan struct{}) {
	defer close(done)
	_, cfg := s.domain()
	graceful, err := d.Shutdown(ctx, cfg.Grace)
	if err != nil {
		s.shutdownErr = s.errorf(codes.Internal, "shutdown", "%v", err)
		return
	}
	st, _ := d.State()
	s.shutdownGraceful, s.shutdownState = graceful, string(st)
}

// consoleChunk is the most the server sends in one message.
const consoleChunk = 32 << 10

// Console relays the serial console. The handler goroutine alone sends;
// one goroutine reads the console, one receives from the client.
func (s *Server) Console(stream launchercmd.Command_ConsoleServer) error {
	ctx := stream.Context()
	d, err := s.startedDomain("console")
	if err != nil {
		return err
	}
	c, err := d.Console()
	if err != nil {
		if st, _ := d.State(); st != v1.DomainRunning && st != v1.DomainPaused {
			return s.errorf(codes.FailedPrecondition, "console", "domain is %s: %v", stateName(st), err)
		}
		return s.errorf(codes.Internal, "console", "%v", err)
	}
	defer c.Close()

	quit := make(chan struct{})
	defer close(quit)
	out := make(chan []byte)
	readErr := make(chan error, 1)
	go func() {
		for {
			buf := make([]byte, consoleChunk)
			n, err := c.Read(buf)
			if n > 0 {
				select {
				case out <- buf[:n]:
				case <-quit:
					return
				}
			}
			if err != nil {
				readErr <- err
				return
			}
		}
	}()
	recvErr := make(chan error, 1)
	go func() {
		for {
			m, err := stream.Recv()
			if err != nil {
				recvErr <- err
				return
			}
			if len(m.GetData()) == 0 {
				continue
			}
			if _, err := c.Write(m.GetData()); err != nil {
				recvErr <- s.errorf(codes.Unavailable, "console", "writing to the console: %v", err)
				return
			}
		}
	}()
	for {
		select {
		case b := <-out:
			if err := stream.Send(&launchercmd.ConsoleData{Data: b}); err != nil {
				return err
			}
		case err := <-readErr:
			if errors.Is(err, io.EOF) {
				return nil // the domain is gone
			}
			select {
			case <-d.Done():
				return nil
			default:
			}
			return s.errorf(codes.Unavailable, "console", "reading the console: %v", err)
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil // the client closed its side
			}
			return err
		case <-d.Done():
			return nil
		case <-ctx.Done():
			return s.ctxError(ctx, "console", ctx.Err())
		}
	}
}

func (s *Server) errorf(code codes.Code, op, format string, args ...any) error {
	_, cfg := s.domain()
	who := cfg.VMI
	if who == "" {
		who = "uid " + cfg.UID
	}
	return status.Errorf(code, "%s vmi %s: %s", op, who, fmt.Sprintf(format, args...))
}

// ctxError is err as a status: the caller's deadline or cancellation when
// ctx is done, Internal otherwise.
func (s *Server) ctxError(ctx context.Context, op string, err error) error {
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded):
		return s.errorf(codes.DeadlineExceeded, op, "%v", err)
	case ctx.Err() != nil:
		return s.errorf(codes.Canceled, op, "%v", err)
	}
	return s.errorf(codes.Internal, op, "%v", err)
}
