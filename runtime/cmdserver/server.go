// Package cmdserver is the launcher's command server: the gRPC service of
// cmdpb on a unix socket at <socket dir>/<vmi-uid>.sock, through which the
// node daemon reads the domain's status, pauses, resumes and shuts it
// down, and attaches to its serial console.
package cmdserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/cmdserver/cmdpb"
	"github.com/podvirt/podvirt/runtime/launcher"
)

// Domain is what the server needs of the launcher (*launcher.Launcher).
type Domain interface {
	State() (launcher.State, string)
	WaitState(ctx context.Context, s launcher.State) error
	Pause() error
	Resume() error
	Shutdown(ctx context.Context, grace time.Duration) (graceful bool, err error)
	Console() (io.ReadWriteCloser, error)
	Interfaces() []launcher.Interface
	Done() <-chan struct{}
}

var _ Domain = (*launcher.Launcher)(nil)

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

// SocketPath is the command socket of the VMI with uid in dir (empty:
// v1alpha1.SocketDir).
func SocketPath(dir, uid string) string {
	if dir == "" {
		dir = v1.SocketDir
	}
	return filepath.Join(dir, uid+".sock")
}

// Server serves the Command service for one domain.
type Server struct {
	cmdpb.UnimplementedCommandServer
	d   Domain
	cfg Config

	shutdownMu   sync.Mutex
	shutdownDone chan struct{} // set by the first Shutdown, closed when it has finished
	// Set before shutdownDone is closed.
	shutdownGraceful bool
	shutdownState    string
	shutdownErr      error

	grpc *grpc.Server
	path string
}

// New returns a server for d.
func New(d Domain, cfg Config) *Server {
	s := &Server{d: d, cfg: cfg}
	s.grpc = grpc.NewServer()
	cmdpb.RegisterCommandServer(s.grpc, s)
	return s
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

// Dial connects to the command socket at path.
func Dial(path string) (cmdpb.CommandClient, *grpc.ClientConn, error) {
	cc, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, nil, fmt.Errorf("command socket %s: %w", path, err)
	}
	return cmdpb.NewCommandClient(cc), cc, nil
}

// Status reports the domain's state and interfaces.
func (s *Server) Status(context.Context, *cmdpb.StatusRequest) (*cmdpb.StatusResponse, error) {
	st, reason := s.d.State()
	resp := &cmdpb.StatusResponse{Vmi: s.cfg.VMI, Uid: s.cfg.UID, Domain: s.cfg.DomainName, State: string(st), Reason: reason}
	for _, i := range s.d.Interfaces() {
		pi := &cmdpb.Interface{Network: i.Network, Mac: i.MAC.String(), Acked: i.Acked}
		if i.Addr.IsValid() {
			pi.Ip = i.Addr.String()
		}
		resp.Interfaces = append(resp.Interfaces, pi)
	}
	return resp, nil
}

// Pause suspends a Running guest and waits until it is Paused.
func (s *Server) Pause(ctx context.Context, _ *cmdpb.PauseRequest) (*cmdpb.PauseResponse, error) {
	if err := s.transition(ctx, "pause", launcher.StateRunning, launcher.StatePaused, s.d.Pause); err != nil {
		return nil, err
	}
	return &cmdpb.PauseResponse{}, nil
}

// Resume runs a Paused guest again and waits until it is Running.
func (s *Server) Resume(ctx context.Context, _ *cmdpb.ResumeRequest) (*cmdpb.ResumeResponse, error) {
	if err := s.transition(ctx, "resume", launcher.StatePaused, launcher.StateRunning, s.d.Resume); err != nil {
		return nil, err
	}
	return &cmdpb.ResumeResponse{}, nil
}

func (s *Server) transition(ctx context.Context, op string, from, to launcher.State, do func() error) error {
	if err := s.require(op, from); err != nil {
		return err
	}
	if err := do(); err != nil {
		return s.errorf(codes.Internal, op, "%v", err)
	}
	if err := s.d.WaitState(ctx, to); err != nil {
		return s.ctxError(ctx, op, err)
	}
	return nil
}

// require fails with FailedPrecondition unless the domain is in state want.
func (s *Server) require(op string, want launcher.State) error {
	if st, _ := s.d.State(); st != want {
		return s.errorf(codes.FailedPrecondition, op, "domain is %s", stateName(st))
	}
	return nil
}

func stateName(st launcher.State) string {
	if st == "" {
		return "not started"
	}
	return string(st)
}

// Shutdown shuts the guest down (ACPI, then destroy after the grace
// period). Concurrent calls share one shutdown; it goes on even if the
// caller hangs up.
func (s *Server) Shutdown(ctx context.Context, _ *cmdpb.ShutdownRequest) (*cmdpb.ShutdownResponse, error) {
	s.shutdownMu.Lock()
	started := s.shutdownDone != nil
	if !started {
		switch st, _ := s.d.State(); st {
		case launcher.StateShutdown, launcher.StateCrashed, "":
			s.shutdownMu.Unlock()
			return nil, s.errorf(codes.FailedPrecondition, "shutdown", "domain is %s", stateName(st))
		}
		s.shutdownDone = make(chan struct{})
		// The shutdown goes on when this caller hangs up.
		go s.shutdown(context.WithoutCancel(ctx), s.shutdownDone)
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
	return &cmdpb.ShutdownResponse{Graceful: s.shutdownGraceful, State: s.shutdownState}, nil
}

// shutdown runs the one shutdown and closes done when it is over. ctx
// is never canceled: canceling it would destroy the domain at once.
func (s *Server) shutdown(ctx context.Context, done chan struct{}) {
	defer close(done)
	graceful, err := s.d.Shutdown(ctx, s.cfg.Grace)
	if err != nil {
		s.shutdownErr = s.errorf(codes.Internal, "shutdown", "%v", err)
		return
	}
	st, _ := s.d.State()
	s.shutdownGraceful, s.shutdownState = graceful, string(st)
}

// consoleChunk is the most the server sends in one message.
const consoleChunk = 32 << 10

// Console relays the serial console. The handler goroutine alone sends;
// one goroutine reads the console, one receives from the client.
func (s *Server) Console(stream cmdpb.Command_ConsoleServer) error {
	ctx := stream.Context()
	c, err := s.d.Console()
	if err != nil {
		if st, _ := s.d.State(); st != launcher.StateRunning && st != launcher.StatePaused {
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
			if err := stream.Send(&cmdpb.ConsoleData{Data: b}); err != nil {
				return err
			}
		case err := <-readErr:
			if errors.Is(err, io.EOF) {
				return nil // the domain is gone
			}
			select {
			case <-s.d.Done():
				return nil
			default:
			}
			return s.errorf(codes.Unavailable, "console", "reading the console: %v", err)
		case err := <-recvErr:
			if errors.Is(err, io.EOF) {
				return nil // the client closed its side
			}
			return err
		case <-s.d.Done():
			return nil
		case <-ctx.Done():
			return s.ctxError(ctx, "console", ctx.Err())
		}
	}
}

func (s *Server) errorf(code codes.Code, op, format string, args ...any) error {
	return status.Errorf(code, "%s vmi %s: %s", op, s.cfg.VMI, fmt.Sprintf(format, args...))
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
