package cmdserver

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdclient"
)

// fakeDomain is a Domain whose state the test sets.
type fakeDomain struct {
	mu         sync.Mutex
	state      v1.DomainState
	reason     string
	watch      chan struct{}
	done       chan struct{}
	pauseErr   error
	stuck      bool // Pause and Resume succeed but the state never changes
	consoleErr error
	opened     chan net.Conn // the guest's end of each console opened
	ifaces     []Interface
	stats      *launchercmd.DomainStatsResponse
	statsErr   error

	release       chan struct{} // Shutdown waits for it when set
	shutdownCalls int
	grace         time.Duration
}

func newFake(st v1.DomainState) *fakeDomain {
	return &fakeDomain{state: st, reason: "test", watch: make(chan struct{}), done: make(chan struct{}), opened: make(chan net.Conn, 10)}
}

func (f *fakeDomain) set(st v1.DomainState) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.state = st
	close(f.watch)
	f.watch = make(chan struct{})
	if st == v1.DomainShutdown || st == v1.DomainCrashed {
		select {
		case <-f.done:
		default:
			close(f.done)
		}
	}
}

func (f *fakeDomain) State() (v1.DomainState, string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.state, f.reason
}

func (f *fakeDomain) WaitState(ctx context.Context, s v1.DomainState) error {
	for {
		f.mu.Lock()
		cur, w := f.state, f.watch
		f.mu.Unlock()
		if cur == s {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-w:
		}
	}
}

func (f *fakeDomain) Pause() error {
	if f.pauseErr != nil {
		return f.pauseErr
	}
	if !f.stuck {
		f.set(v1.DomainPaused)
	}
	return nil
}

func (f *fakeDomain) Resume() error {
	f.set(v1.DomainRunning)
	return nil
}

func (f *fakeDomain) Shutdown(ctx context.Context, grace time.Duration) (bool, error) {
	f.mu.Lock()
	f.shutdownCalls++
	f.grace = grace
	release := f.release
	f.mu.Unlock()
	if release != nil {
		select {
		case <-release:
		case <-ctx.Done():
			return false, errors.New("shutdown context canceled")
		}
	}
	f.set(v1.DomainShutdown)
	return true, nil
}

func (f *fakeDomain) Console() (io.ReadWriteCloser, error) {
	if f.consoleErr != nil {
		return nil, f.consoleErr
	}
	a, b := net.Pipe()
	f.opened <- b
	return a, nil
}

func (f *fakeDomain) Changed() <-chan struct{} {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.watch
}

func (f *fakeDomain) Interfaces() []Interface { return f.ifaces }
func (f *fakeDomain) Health() Health          { return Health{} }
func (f *fakeDomain) Done() <-chan struct{}   { return f.done }

func (f *fakeDomain) Stats() (*launchercmd.DomainStatsResponse, error) { return f.stats, f.statsErr }

func (f *fakeDomain) Migrate(context.Context, *launchercmd.MigrateRequest, func(*launchercmd.MigrationProgress)) (*launchercmd.MigrationProgress, error) {
	return nil, errors.New("the fake domain does not migrate")
}

func (f *fakeDomain) SnapshotDisks(context.Context, *launchercmd.SnapshotDisksRequest) (*launchercmd.SnapshotDisksResponse, error) {
	return nil, errors.New("the fake domain has no disks")
}

// serve runs a server for d on a socket in a temp dir and returns a
// client of it.
func serve(t *testing.T, d Domain) (launchercmd.CommandClient, string) {
	t.Helper()
	path := launchercmd.SocketPath(t.TempDir(), "uid-1")
	s := New(d, Config{VMI: "test/vm", UID: "uid-1", DomainName: "test_vm", Grace: 42 * time.Second})
	if err := s.ListenAndServe(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Stop(5 * time.Second); err != nil {
			t.Error(err)
		}
	})
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return c, path
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func wantStatus(t *testing.T, err error, code codes.Code, msg string) {
	t.Helper()
	st, ok := status.FromError(err)
	if !ok || st.Code() != code || st.Message() != msg {
		t.Fatalf("got error %v, want %s %q", err, code, msg)
	}
}

func TestStatus(t *testing.T) {
	f := newFake(v1.DomainRunning)
	mac, _ := net.ParseMAC("02:00:00:00:00:01")
	f.ifaces = []Interface{
		{Network: "net1", MAC: mac, Addr: netip.MustParsePrefix("10.0.0.5/24"), Acked: true},
		{Network: "l2", MAC: mac},
	}
	c, _ := serve(t, f)
	resp, err := c.Status(ctxT(t), &launchercmd.StatusRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetVmi() != "test/vm" || resp.GetUid() != "uid-1" || resp.GetDomain() != "test_vm" || resp.GetState() != "Running" || resp.GetReason() != "test" {
		t.Fatalf("status %v", resp)
	}
	ifs := resp.GetInterfaces()
	if len(ifs) != 2 ||
		ifs[0].GetNetwork() != "net1" || ifs[0].GetMac() != "02:00:00:00:00:01" || ifs[0].GetIp() != "10.0.0.5/24" || !ifs[0].GetAcked() ||
		ifs[1].GetNetwork() != "l2" || ifs[1].GetIp() != "" || ifs[1].GetAcked() {
		t.Fatalf("interfaces %v", ifs)
	}
}

func TestDomainStats(t *testing.T) {
	f := newFake(v1.DomainRunning)
	f.stats = &launchercmd.DomainStatsResponse{
		CpuTimeNs: proto.Uint64(5e9),
		Disks:     []*launchercmd.DiskStats{{Name: "root", Device: "vda", ReadBytes: proto.Uint64(4096)}},
	}
	c, _ := serve(t, f)
	resp, err := c.DomainStats(ctxT(t), &launchercmd.DomainStatsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(resp, f.stats) {
		t.Fatalf("stats %v, want %v", resp, f.stats)
	}

	f.statsErr = errors.New("domain test_vm: stats: boom")
	_, err = c.DomainStats(ctxT(t), &launchercmd.DomainStatsRequest{})
	wantStatus(t, err, codes.Internal, "domain stats vmi test/vm: domain test_vm: stats: boom")

	f.set(v1.DomainShutdown)
	_, err = c.DomainStats(ctxT(t), &launchercmd.DomainStatsRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "domain stats vmi test/vm: domain is Shutdown")
}

func TestPauseResume(t *testing.T) {
	f := newFake(v1.DomainRunning)
	c, _ := serve(t, f)
	ctx := ctxT(t)
	if _, err := c.Pause(ctx, &launchercmd.PauseRequest{}); err != nil {
		t.Fatal(err)
	}
	if resp, err := c.Status(ctx, &launchercmd.StatusRequest{}); err != nil || resp.GetState() != "Paused" {
		t.Fatalf("status after pause: %v %v", resp, err)
	}
	_, err := c.Pause(ctx, &launchercmd.PauseRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "pause vmi test/vm: domain is Paused")
	if _, err := c.Resume(ctx, &launchercmd.ResumeRequest{}); err != nil {
		t.Fatal(err)
	}
	_, err = c.Resume(ctx, &launchercmd.ResumeRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "resume vmi test/vm: domain is Running")
}

func TestErrors(t *testing.T) {
	t.Run("pause-shutdown", func(t *testing.T) {
		c, _ := serve(t, newFake(v1.DomainShutdown))
		_, err := c.Pause(ctxT(t), &launchercmd.PauseRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "pause vmi test/vm: domain is Shutdown")
	})
	t.Run("pause-libvirt", func(t *testing.T) {
		f := newFake(v1.DomainRunning)
		f.pauseErr = errors.New("domain test_vm: pause: boom")
		c, _ := serve(t, f)
		_, err := c.Pause(ctxT(t), &launchercmd.PauseRequest{})
		wantStatus(t, err, codes.Internal, "pause vmi test/vm: domain test_vm: pause: boom")
	})
	t.Run("pause-deadline", func(t *testing.T) {
		f := newFake(v1.DomainRunning)
		f.stuck = true
		c, _ := serve(t, f)
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		defer cancel()
		_, err := c.Pause(ctx, &launchercmd.PauseRequest{})
		if status.Code(err) != codes.DeadlineExceeded {
			t.Fatalf("got %v, want DeadlineExceeded", err)
		}
	})
	t.Run("resume-not-started", func(t *testing.T) {
		c, _ := serve(t, newFake(""))
		_, err := c.Resume(ctxT(t), &launchercmd.ResumeRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "resume vmi test/vm: domain is not started")
	})
	t.Run("shutdown-crashed", func(t *testing.T) {
		c, _ := serve(t, newFake(v1.DomainCrashed))
		_, err := c.Shutdown(ctxT(t), &launchercmd.ShutdownRequest{})
		wantStatus(t, err, codes.FailedPrecondition, "shutdown vmi test/vm: domain is Crashed")
	})
	t.Run("console-shutdown", func(t *testing.T) {
		f := newFake(v1.DomainShutdown)
		f.consoleErr = errors.New("domain test_vm: open console: no domain")
		c, _ := serve(t, f)
		s, err := c.Console(ctxT(t))
		if err != nil {
			t.Fatal(err)
		}
		_, err = s.Recv()
		wantStatus(t, err, codes.FailedPrecondition, "console vmi test/vm: domain is Shutdown: domain test_vm: open console: no domain")
	})
}

// TestShutdown: concurrent calls share one shutdown with the configured
// grace period, which goes on when a caller hangs up.
func TestShutdown(t *testing.T) {
	f := newFake(v1.DomainRunning)
	f.release = make(chan struct{})
	c, _ := serve(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
	defer cancel()
	_, err := c.Shutdown(ctx, &launchercmd.ShutdownRequest{})
	if status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("got %v, want DeadlineExceeded", err)
	}
	type result struct {
		resp *launchercmd.ShutdownResponse
		err  error
	}
	results := make(chan result, 2)
	for range 2 {
		go func() {
			resp, err := c.Shutdown(ctxT(t), &launchercmd.ShutdownRequest{})
			results <- result{resp, err}
		}()
	}
	close(f.release)
	for range 2 {
		r := <-results
		if r.err != nil || !r.resp.GetGraceful() || r.resp.GetState() != "Shutdown" {
			t.Fatalf("shutdown: %v %v", r.resp, r.err)
		}
	}
	f.mu.Lock()
	calls, grace := f.shutdownCalls, f.grace
	f.mu.Unlock()
	if calls != 1 || grace != 42*time.Second {
		t.Fatalf("launcher Shutdown called %d times with grace %s, want once with 42s", calls, grace)
	}
	_, err = c.Shutdown(ctxT(t), &launchercmd.ShutdownRequest{})
	if err != nil {
		t.Fatalf("shutdown after shutdown: %v", err)
	}
}

func TestConsole(t *testing.T) {
	f := newFake(v1.DomainRunning)
	c, _ := serve(t, f)
	ctx := ctxT(t)
	s, err := c.Console(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Send(&launchercmd.ConsoleData{Data: []byte("ls\n")}); err != nil {
		t.Fatal(err)
	}
	var guest net.Conn
	select {
	case guest = <-f.opened:
	case <-ctx.Done():
		t.Fatal("console not opened")
	}
	_ = guest.SetDeadline(time.Now().Add(10 * time.Second))
	buf := make([]byte, 3)
	if _, err := io.ReadFull(guest, buf); err != nil || string(buf) != "ls\n" {
		t.Fatalf("guest read %q %v", buf, err)
	}
	if _, err := guest.Write([]byte("bin etc\n")); err != nil {
		t.Fatal(err)
	}
	var got strings.Builder
	for got.String() != "bin etc\n" {
		m, err := s.Recv()
		if err != nil {
			t.Fatalf("recv after %q: %v", got.String(), err)
		}
		got.Write(m.GetData())
	}
	// Closing the client side closes the console.
	if err := s.CloseSend(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("recv after CloseSend: %v, want EOF", err)
	}
	if _, err := guest.Read(buf); !errors.Is(err, io.EOF) {
		t.Fatalf("guest read after CloseSend: %v, want EOF", err)
	}

	// A second console ends when the domain goes.
	s2, err := c.Console(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if err := s2.Send(&launchercmd.ConsoleData{Data: []byte("x")}); err != nil {
		t.Fatal(err)
	}
	f.set(v1.DomainShutdown)
	if _, err := s2.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("recv after the domain went: %v, want EOF", err)
	}
}

func TestSocket(t *testing.T) {
	if got, want := launchercmd.SocketPath("", "abc"), filepath.Join(v1.SocketDir, "abc.sock"); got != want {
		t.Fatalf("SocketPath %s, want %s", got, want)
	}
	dir := filepath.Join(t.TempDir(), "sockets")
	path := launchercmd.SocketPath(dir, "uid-2")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, nil, 0o644); err != nil { // stale
		t.Fatal(err)
	}
	s := New(newFake(v1.DomainRunning), Config{VMI: "test/vm"})
	if err := s.ListenAndServe(path); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket %v %v", fi, err)
	}
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if _, err := c.Status(ctxT(t), &launchercmd.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	if err := s.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket left after Stop: %v", err)
	}
}

// TestStartWatch: a waiting server answers Status and Watch before Start,
// refuses other commands, starts once for its own UID only, and Watch
// follows the domain until it is gone.
func TestStartWatch(t *testing.T) {
	f := newFake(v1.DomainStarting)
	var starts int
	var gotNets *launchercmd.Networks
	s := NewWaiting("uid-1", func(_ context.Context, vmi *v1.VirtualMachineInstance, nets *launchercmd.Networks) (Domain, Config, error) {
		starts++
		gotNets = nets
		return f, Config{VMI: vmi.Namespace + "/" + vmi.Name, DomainName: "test_vm", Grace: time.Second}, nil
	})
	path := launchercmd.SocketPath(t.TempDir(), "uid-1")
	if err := s.ListenAndServe(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(5 * time.Second) })
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	ctx := ctxT(t)

	resp, err := c.Status(ctx, &launchercmd.StatusRequest{})
	if err != nil || resp.GetState() != "" || resp.GetUid() != "uid-1" {
		t.Fatalf("status before start: %v %v", resp, err)
	}
	_, err = c.Pause(ctx, &launchercmd.PauseRequest{})
	wantStatus(t, err, codes.FailedPrecondition, "pause vmi uid uid-1: domain is not started (the launcher waits for the node daemon's Start)")

	w, err := c.Watch(ctx, &launchercmd.WatchRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if st, err := w.Recv(); err != nil || st.GetState() != "" {
		t.Fatalf("first watch status: %v %v", st, err)
	}

	_, err = c.Start(ctx, &launchercmd.StartRequest{Vmi: []byte(`{"metadata":{"namespace":"test","name":"vm","uid":"uid-2"}}`)})
	wantStatus(t, err, codes.InvalidArgument, `start vmi uid uid-1: VMI test/vm has UID "uid-2", this launcher serves "uid-1"`)
	vmi := []byte(`{"metadata":{"namespace":"test","name":"vm","uid":"uid-1"}}`)
	nets := []byte(`{"networks":[{"name":"l2","result":{"cniVersion":"1.1.0"}}]}`)
	for range 2 {
		resp, err := c.Start(ctx, &launchercmd.StartRequest{Vmi: vmi, Networks: nets})
		if err != nil || resp.GetState() != "Starting" || resp.GetVmi() != "test/vm" || resp.GetDomain() != "test_vm" {
			t.Fatalf("start: %v %v", resp, err)
		}
	}
	if starts != 1 || gotNets == nil || len(gotNets.Attachments) != 1 || gotNets.Attachments[0].Name != "l2" {
		t.Fatalf("start func ran %d times with networks %+v, want once with l2", starts, gotNets)
	}
	select {
	case <-s.Started():
	default:
		t.Fatal("Started not closed after Start")
	}

	want := []string{"Starting", "Running", "Shutdown"}
	for i, state := range want {
		if i > 0 {
			f.set(v1.DomainState(state))
		}
		st, err := w.Recv()
		if err != nil || st.GetState() != state {
			t.Fatalf("watch status %d: %v %v, want %s", i, st, err, state)
		}
	}
	if st, err := w.Recv(); !errors.Is(err, io.EOF) {
		t.Fatalf("watch after the domain is gone: %v %v, want the end of the stream", st, err)
	}
}

// TestDialLongPath: the node reaches a pod's socket by a path longer than
// a socket address may be (the kubelet's emptyDir path).
func TestDialLongPath(t *testing.T) {
	f := newFake(v1.DomainRunning)
	short := t.TempDir()
	s := New(f, Config{VMI: "test/vm", UID: "uid-1"})
	if err := s.ListenAndServe(launchercmd.SocketPath(short, "uid-1")); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(5 * time.Second) })
	long := filepath.Join(t.TempDir(), "pods", strings.Repeat("0123456789abcdef", 5), "volumes", "kubernetes.io~empty-dir")
	if err := os.MkdirAll(long, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(long, v1.SocketVolumeName)
	if err := os.Symlink(short, link); err != nil {
		t.Fatal(err)
	}
	path := launchercmd.SocketPath(link, "uid-1")
	if len(path) <= 108 {
		t.Fatalf("path %s is short enough for a plain socket address", path)
	}
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	if resp, err := c.Status(ctxT(t), &launchercmd.StatusRequest{}); err != nil || resp.GetState() != "Running" {
		t.Fatalf("status over %d-byte path: %v %v", len(path), resp, err)
	}
}
