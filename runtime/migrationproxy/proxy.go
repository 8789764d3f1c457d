// Package migrationproxy carries a live migration's connections between two
// launcher pods over one TCP port. libvirt and QEMU on each side only ever
// see unix sockets at the same paths (the libvirt daemon's peer-to-peer
// connection, QEMU's migration stream, the NBD server of the disks):
// on the source they are Source's listeners, on the target Target dials
// the real ones. So neither libvirtd nor QEMU listens on the network, and
// every connection the target accepts must present the migration's token.
//
// The connections are TLS 1.3: the target serves a certificate made for
// this migration alone, and the source accepts only that certificate (its
// SHA-256, which reaches the source with the token), so guest memory and
// disk never cross in the clear and the token goes only to the target.
package migrationproxy

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
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

// certificate makes the target's certificate for one migration, and its
// SHA-256.
func certificate() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: "podvirt live migration"},
		NotBefore:    now.Add(-time.Minute),
		NotAfter:     now.Add(7 * 24 * time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	sum := sha256.Sum256(der)
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, sum[:], nil
}

// pinned is the source's TLS configuration: the target's certificate is
// trusted when it is the one whose SHA-256 is sum, and no other.
func pinned(sum []byte) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS13,
		// No CA vouches for a certificate made for one migration; the
		// pin below is the whole verification.
		InsecureSkipVerify: true, //nolint:gosec // verified by VerifyConnection
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("the target presented no certificate")
			}
			got := sha256.Sum256(cs.PeerCertificates[0].Raw)
			if subtle.ConstantTimeCompare(got[:], sum) != 1 {
				return errors.New("the target's certificate is not the one it announced for this migration")
			}
			return nil
		},
	}
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
	certSum []byte
	dial    [numChannels]string
	bytes   atomic.Int64
	wg      sync.WaitGroup
	conns   connSet
	refused atomic.Int64
}

// ListenTarget listens on addr (host:port; port 0 picks one), over TLS
// under a certificate of its own (CertificateSHA256), for connections with
// token, passing channel c's to the unix socket at sockets[c].
func ListenTarget(addr string, token []byte, sockets map[Channel]string) (*Target, error) {
	if len(token) != TokenSize {
		return nil, fmt.Errorf("migration proxy: token of %d bytes, want %d", len(token), TokenSize)
	}
	cert, sum, err := certificate()
	if err != nil {
		return nil, fmt.Errorf("migration proxy: make a certificate: %w", err)
	}
	l, err := tls.Listen("tcp", addr, &tls.Config{MinVersion: tls.VersionTLS13, Certificates: []tls.Certificate{cert}})
	if err != nil {
		return nil, fmt.Errorf("migration proxy: listen on %s: %w", addr, err)
	}
	t := &Target{l: l, token: append([]byte(nil), token...), certSum: sum}
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

// CertificateSHA256 is the digest of the target's certificate, which the
// source pins (ListenSource).
func (t *Target) CertificateSHA256() []byte { return append([]byte(nil), t.certSum...) }

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
	tls    *tls.Config
	ls     []net.Listener
	bytes  atomic.Int64
	wg     sync.WaitGroup
	conns  connSet
}

// ListenSource makes dir/<channel>.sock for every channel, each carried to
// target (host:port) with token, over TLS to the target whose certificate
// has the SHA-256 certSum.
func ListenSource(dir, target string, token, certSum []byte) (*Source, error) {
	if len(token) != TokenSize {
		return nil, fmt.Errorf("migration proxy: token of %d bytes, want %d", len(token), TokenSize)
	}
	if len(certSum) != sha256.Size {
		return nil, fmt.Errorf("migration proxy: the target's certificate digest has %d bytes, want %d (a SHA-256)", len(certSum), sha256.Size)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("migration proxy: %w", err)
	}
	s := &Source{dir: dir, target: target, token: append([]byte(nil), token...), tls: pinned(append([]byte(nil), certSum...))}
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
	d := tls.Dialer{Config: s.tls}
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
