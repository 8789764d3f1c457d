package handler

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdclient"
	"github.com/podvirt/podvirt/runtime/vmimetrics"
)

// session is the handler's connection to one launcher: it follows the
// launcher's status through Watch and remembers the last one, and whether
// the launcher went away before its domain ended.
type session struct {
	key    string // the VMI's namespace/name
	uid    string // the VMI's UID
	socket string
	log    logr.Logger
	client launchercmd.CommandClient
	conn   *grpc.ClientConn
	cancel context.CancelFunc
	done   chan struct{} // closed when the watch has ended
	// opened is when the launcher first answered.
	opened time.Time

	mu   sync.Mutex // guards the fields below
	last *launchercmd.StatusResponse
	// lost says why the launcher went away while its domain was not
	// finished; empty while it is there (or ended cleanly).
	lost      string
	startSent bool
}

// openSession connects to the launcher at socket and follows its status
// in the background; notify is called after every change.
func openSession(log logr.Logger, key, uid, socket string, notify func()) (*session, error) {
	client, conn, err := cmdclient.Dial(socket)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &session{key: key, uid: uid, socket: socket, log: log, client: client, conn: conn, cancel: cancel, done: make(chan struct{})}
	// The first status proves a launcher answers on the socket.
	first, err := s.status(ctx)
	if err != nil {
		cancel()
		_ = conn.Close()
		return nil, err
	}
	s.last, s.opened = first, time.Now()
	go s.watch(ctx, notify)
	return s, nil
}

func (s *session) status(ctx context.Context) (*launchercmd.StatusResponse, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	st, err := s.client.Status(ctx, &launchercmd.StatusRequest{})
	if err != nil {
		return nil, fmt.Errorf("launcher %s: status: %w", s.socket, err)
	}
	return st, nil
}

// watch follows the launcher until its stream ends, then decides whether
// it ended with its domain or was lost.
func (s *session) watch(ctx context.Context, notify func()) {
	defer close(s.done)
	err := s.follow(ctx, notify)
	if ctx.Err() != nil {
		return // closed by the handler
	}
	s.mu.Lock()
	final := s.last != nil && finished(s.last.DomainState())
	if !final {
		state := s.last.GetState()
		if state == "" {
			state = "not started"
		}
		s.lost = fmt.Sprintf("the launcher went away (command socket %s: %v) while the domain was %s", s.socket, err, state)
	}
	s.mu.Unlock()
	s.log.Info("launcher session ended", "vmi-uid", s.uid, "lost", !final, "err", err)
	notify()
}

func (s *session) follow(ctx context.Context, notify func()) error {
	stream, err := s.client.Watch(ctx, &launchercmd.WatchRequest{})
	if err != nil {
		return err
	}
	for {
		st, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return errors.New("the launcher closed the status stream")
		}
		if err != nil {
			return err
		}
		s.mu.Lock()
		s.last = st
		s.mu.Unlock()
		notify()
	}
}

// snapshot returns the last status and why the launcher was lost.
func (s *session) snapshot() (*launchercmd.StatusResponse, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.last, s.lost
}

// ended reports whether the watch is over (the launcher is gone).
func (s *session) ended() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

func (s *session) close() {
	s.cancel()
	<-s.done
	_ = s.conn.Close()
}

func finished(state v1.DomainState) bool {
	return state == v1.DomainShutdown || state == v1.DomainCrashed
}

// sessions are the open sessions, by command socket (one per launcher pod;
// a VMI has two while it migrates).
type sessions struct {
	mu    sync.Mutex
	m     map[string]*session
	gauge prometheus.Gauge // set to the number of open sessions
}

func (ss *sessions) get(socket string) *session {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	return ss.m[socket]
}

func (ss *sessions) put(s *session) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.m == nil {
		ss.m = map[string]*session{}
	}
	ss.m[s.socket] = s
	ss.gauge.Set(float64(len(ss.m)))
}

// drop closes and forgets the session on socket, if any.
func (ss *sessions) drop(socket string) {
	ss.mu.Lock()
	s := ss.m[socket]
	delete(ss.m, socket)
	ss.gauge.Set(float64(len(ss.m)))
	ss.mu.Unlock()
	if s != nil {
		s.close()
	}
}

// dropVMI drops the sessions of the VMI namespace/name key but those on
// the sockets in keep.
func (ss *sessions) dropVMI(key string, keep map[string]bool) {
	ss.mu.Lock()
	var drop []string
	for socket, s := range ss.m {
		if s.key == key && !keep[socket] {
			drop = append(drop, socket)
		}
	}
	ss.mu.Unlock()
	for _, socket := range drop {
		ss.drop(socket)
	}
}

// Launchers lists the launchers whose domain runs or is paused, for the
// VMI metrics: the others have no stats to give.
func (ss *sessions) Launchers() []vmimetrics.Launcher {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	out := make([]vmimetrics.Launcher, 0, len(ss.m))
	seen := map[string]bool{} // a VMI's two launchers both run for a moment of its migration
	for _, s := range ss.m {
		last, lost := s.snapshot()
		if st := last.DomainState(); lost != "" || (st != v1.DomainRunning && st != v1.DomainPaused) || seen[s.key] {
			continue
		}
		seen[s.key] = true
		namespace, name, _ := strings.Cut(s.key, "/")
		out = append(out, vmimetrics.Launcher{Namespace: namespace, Name: name, Client: s.client})
	}
	return out
}

func (ss *sessions) closeAll() {
	ss.mu.Lock()
	var keys []string
	for k := range ss.m {
		keys = append(keys, k)
	}
	ss.mu.Unlock()
	for _, k := range keys {
		ss.drop(k)
	}
}
