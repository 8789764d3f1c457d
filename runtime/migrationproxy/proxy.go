// Package migrationproxy carries a live migration's connections between two
// launcher pods over one TCP port. libvirt and QEMU on each side only ever
// see unix sockets at the same paths (the libvirt daemon's peer-to-peer
// connection, QEMU's migration stream, the NBD server of the disks):
// on the source they are Source's listeners, on the target Target dials
// the real ones. So neither libvirtd nor QEMU listens on the network, and
// every connection the target accepts must present the migration's token.
package migrationproxy

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"
)

// TokenSize is the length of a migration's token.
const TokenSize = 32

// NewToken returns a fresh random token.
func NewToken() ([]byte, error) {
	t := make([]byte, TokenSize)
	if _, err := rand.Read(t); err != nil {
		return nil, err
	}
	return t, nil
}

// Channels are what a migration carries, by the index sent in each
// connection's header.
type Channel byte

// The channels of a migration.
const (
	Libvirt   Channel = iota // source libvirtd → target libvirtd (peer to peer)
	Migration                // QEMU's migration stream
	Disks                    // NBD: the disks' data
	numChannels
)

func (c Channel) String() string {
	switch c {
	case Libvirt:
		return "libvirt"
	case Migration:
		return "migration"
	case Disks:
		return "disks"
	}
	return fmt.Sprintf("channel %d", c)
}

// SocketName is the file name of a channel's unix socket.
func (c Channel) SocketName() string { return c.String() + ".sock" }

// headerTimeout bounds how long a connection may take to say who it is.
const headerTimeout = 10 * time.Second

// Target accepts a migration's connections and passes each to the unix
// socket of its channel.
type Target struct {
	l       net.Listener
	token   []byte
	dial    [numChannels]string
	bytes   atomic.Int64
	wg      sync.WaitGroup
	conns   connSet
	refused atomic.Int64
}

// ListenTarget listens on addr (host:port; port 0 picks one) for
// connections with token, passing channel c's to the unix socket at
// sockets[c].
func ListenTarget(addr string, token []byte, sockets map[Channel]string) (*Target, error) {
	if len(token) != TokenSize {
		return nil, fmt.Errorf("migration proxy: token of %d bytes, want %d", len(token), TokenSize)
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("migration proxy: listen on %s: %w", addr, err)
	}
	t := &Target{l: l, token: append([]byte(nil), token...)}
	for c, p := range sockets {
		if c >= numChannels {
			_ = l.Close()
			return nil, fmt.Errorf("migration proxy: unknown %s", c)
		}
		t.dial[c] = p
	}
	t.wg.Add(1)
	go t.serve()
	return t, nil
}

// Addr is where the target listens.
func (t *Target) Addr() string { return t.l.Addr().String() }

// Bytes is how many bytes crossed so far, both ways.
func (t *Target) Bytes() int64 { return t.bytes.Load() }

// Refused counts connections turned away (bad token or channel).
func (t *Target) Refused() int64 { return t.refused.Load() }

func (t *Target) serve() {
	defer t.wg.Done()
	for {
		c, err := t.l.Accept()
		if err != nil {
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.handle(c)
		}()
	}
}

func (t *Target) handle(c net.Conn) {
	if !t.conns.track(c) {
		return
	}
	defer t.conns.untrack(c)
	hdr := make([]byte, TokenSize+1)
	_ = c.SetReadDeadline(time.Now().Add(headerTimeout))
	if _, err := io.ReadFull(c, hdr); err != nil {
		t.refused.Add(1)
		return
	}
	_ = c.SetReadDeadline(time.Time{})
	ch := Channel(hdr[TokenSize])
	if subtle.ConstantTimeCompare(hdr[:TokenSize], t.token) != 1 || ch >= numChannels || t.dial[ch] == "" {
		t.refused.Add(1)
		slog.Warn("migration proxy: refused a connection", "from", c.RemoteAddr())
		return
	}
	u, err := net.DialTimeout("unix", t.dial[ch], headerTimeout)
	if err != nil {
		slog.Warn("migration proxy: dial", "channel", ch, "err", err)
		return
	}
	if !t.conns.track(u) {
		return
	}
	defer t.conns.untrack(u)
	pipe(c, u, &t.bytes)
}

// StopAccepting closes the listener; the connections already carried go
// on until their ends close them (the source libvirtd still finishes the
// migration's handshake over its connection after the domain has arrived).
func (t *Target) StopAccepting() error {
	err := t.l.Close()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Close stops listening and cuts every connection.
func (t *Target) Close() error {
	t.conns.closeAll()
	err := t.l.Close()
	t.wg.Wait()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// Source listens on one unix socket per channel in a directory and carries
// each connection to the target.
type Source struct {
	dir    string
	target string
	token  []byte
	ls     []net.Listener
	bytes  atomic.Int64
	wg     sync.WaitGroup
	conns  connSet
}

// ListenSource makes dir/<channel>.sock for every channel, each carried to
// target (host:port) with token.
func ListenSource(dir, target string, token []byte) (*Source, error) {
	if len(token) != TokenSize {
		return nil, fmt.Errorf("migration proxy: token of %d bytes, want %d", len(token), TokenSize)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("migration proxy: %w", err)
	}
	s := &Source{dir: dir, target: target, token: append([]byte(nil), token...)}
	for c := range numChannels {
		p := filepath.Join(dir, c.SocketName())
		_ = os.Remove(p)
		l, err := net.Listen("unix", p)
		if err != nil {
			_ = s.Close()
			return nil, fmt.Errorf("migration proxy: listen on %s: %w", p, err)
		}
		s.ls = append(s.ls, l)
		s.wg.Add(1)
		go s.serve(l, c)
	}
	return s, nil
}

// Bytes is how many bytes crossed so far, both ways.
func (s *Source) Bytes() int64 { return s.bytes.Load() }

func (s *Source) serve(l net.Listener, ch Channel) {
	defer s.wg.Done()
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c, ch)
		}()
	}
}

func (s *Source) handle(c net.Conn, ch Channel) {
	if !s.conns.track(c) {
		return
	}
	defer s.conns.untrack(c)
	ctx, cancel := context.WithTimeout(context.Background(), headerTimeout)
	defer cancel()
	var d net.Dialer
	r, err := d.DialContext(ctx, "tcp", s.target)
	if err != nil {
		slog.Warn("migration proxy: dial the target", "target", s.target, "channel", ch, "err", err)
		return
	}
	if !s.conns.track(r) {
		return
	}
	defer s.conns.untrack(r)
	if _, err := r.Write(append(append([]byte(nil), s.token...), byte(ch))); err != nil {
		return
	}
	pipe(c, r, &s.bytes)
}

// Close stops listening, cuts every connection and removes the sockets.
func (s *Source) Close() error {
	s.conns.closeAll()
	var errs []error
	for _, l := range s.ls {
		if err := l.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
			errs = append(errs, err)
		}
	}
	s.wg.Wait()
	return errors.Join(errs...)
}

// connSet is the open connections of a proxy, cut all at once when it closes.
type connSet struct {
	mu     sync.Mutex
	m      map[net.Conn]struct{}
	closed bool
}

// track adds c, or closes it when the set is closed already.
func (cs *connSet) track(c net.Conn) bool {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.closed {
		_ = c.Close()
		return false
	}
	if cs.m == nil {
		cs.m = map[net.Conn]struct{}{}
	}
	cs.m[c] = struct{}{}
	return true
}

// untrack closes c and forgets it.
func (cs *connSet) untrack(c net.Conn) {
	cs.mu.Lock()
	delete(cs.m, c)
	cs.mu.Unlock()
	_ = c.Close()
}

// closeAll closes every connection and every one tracked after.
func (cs *connSet) closeAll() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.closed = true
	for c := range cs.m {
		_ = c.Close()
	}
}

// pipe copies both ways until either side ends, counting bytes.
func pipe(a, b net.Conn, n *atomic.Int64) {
	done := make(chan struct{}, 2)
	cp := func(dst, src net.Conn) {
		m, _ := io.Copy(dst, src)
		n.Add(m)
		// Half-close so the peer sees EOF and can finish its side.
		if cw, ok := dst.(interface{ CloseWrite() error }); ok {
			_ = cw.CloseWrite()
		}
		done <- struct{}{}
	}
	go cp(a, b)
	go cp(b, a)
	<-done
	<-done
}
