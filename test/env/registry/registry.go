// Package registry runs a real OCI registry process (Debian's
// docker-registry, distribution v2.8) on loopback for tests, the demo and
// benchmarks: optionally with TLS from a CA of its own and htpasswd users,
// and it pushes images into it with go-containerregistry.
package registry

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"golang.org/x/crypto/bcrypt"

	"github.com/podvirt/podvirt/test/harness/pidproc"
)

// Binary is the registry executable Debian's docker-registry package installs.
const Binary = "/usr/bin/docker-registry"

// Options configures one registry process.
type Options struct {
	// Dir holds the registry's storage, config, certificates and log.
	Dir string
	// Host is the address it listens on; default 127.0.0.1.
	Host string
	// Port is the port; 0 takes the one this Dir's registry had before
	// (so a rerun keeps its address), else a free one.
	Port int
	// TLS serves HTTPS with a certificate for Host from a CA made for this
	// registry (CACertPEM).
	TLS bool
	// Users, when set, turns on htpasswd authentication.
	Users map[string]string
	// Detach lets the process outlive this one (the demo's registries stay
	// up until `make down`, which stops every process whose command line
	// names the cluster dir, so put Dir under it). A later Start on the same
	// Dir takes such a process over instead of starting another.
	Detach bool
}

// Registry is a running registry process.
type Registry struct {
	// Addr is host:port, as an image reference names the registry.
	Addr string
	// CACertPEM is the CA that signed the serving certificate (TLS only).
	CACertPEM []byte
	opts      Options
	config    string
	log       string

	mu   sync.Mutex
	cmd  *exec.Cmd
	done chan struct{}
	// adopted is the pid of a registry an earlier Start on this Dir left
	// running, which this one took over (it is not our child: no cmd).
	adopted int
}

// The files a registry's Dir keeps beside its storage, so a later Start on
// the same Dir finds the process and address of an earlier one.
const (
	pidFile     = "registry.pid"
	addressFile = "address"
	caFile      = "ca.crt"
)

// Start runs a registry and waits until it answers /v2/.
func Start(ctx context.Context, opts Options) (*Registry, error) {
	if _, err := os.Stat(Binary); err != nil {
		return nil, fmt.Errorf("registry: %s is missing: run `make deps` (Debian package docker-registry)", Binary)
	}
	if opts.Dir == "" {
		return nil, errors.New("registry: Options.Dir is empty: give it a directory for storage and config")
	}
	if opts.Host == "" {
		opts.Host = "127.0.0.1"
	}
	if opts.Port == 0 {
		opts.Port = previousPort(opts.Dir, opts.Host)
	}
	if opts.Port == 0 {
		p, err := freePort(opts.Host)
		if err != nil {
			return nil, err
		}
		opts.Port = p
	}
	if err := os.MkdirAll(filepath.Join(opts.Dir, "storage"), 0o755); err != nil {
		return nil, err
	}
	r := &Registry{
		Addr:   net.JoinHostPort(opts.Host, strconv.Itoa(opts.Port)),
		opts:   opts,
		config: filepath.Join(opts.Dir, "config.yml"),
		log:    filepath.Join(opts.Dir, "registry.log"),
	}
	if pid, ok := r.leftRunning(); ok {
		if err := r.adopt(ctx, pid); err == nil {
			return r, nil
		}
		// It does not answer as this registry: replace it.
		r.stopLocked(syscall.SIGKILL)
	}
	if err := r.writeConfig(); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(opts.Dir, addressFile), []byte(r.Addr), 0o644); err != nil {
		return nil, err
	}
	if err := r.Restart(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

// previousPort is the port an earlier registry on dir listened on, if it
// was on host; 0 if none.
func previousPort(dir, host string) int {
	b, err := os.ReadFile(filepath.Join(dir, addressFile))
	if err != nil {
		return 0
	}
	h, p, err := net.SplitHostPort(strings.TrimSpace(string(b)))
	if err != nil || h != host {
		return 0
	}
	port, _ := strconv.Atoi(p)
	return port
}

// leftRunning finds a registry process an earlier Start on this Dir left
// running: the recorded pid, alive, running Binary with this config.
func (r *Registry) leftRunning() (int, bool) {
	pid, ok := pidproc.Recorded(filepath.Join(r.opts.Dir, pidFile), Binary)
	if !ok {
		return 0, false
	}
	cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	return pid, bytes.Contains(cmdline, []byte(r.config))
}

// adopt takes over the running registry pid if it serves at r.Addr.
func (r *Registry) adopt(ctx context.Context, pid int) error {
	r.adopted = pid
	if r.opts.TLS {
		ca, err := os.ReadFile(filepath.Join(r.opts.Dir, caFile))
		if err != nil {
			return err
		}
		r.CACertPEM = ca
	}
	return r.ping(ctx)
}

func (r *Registry) writeConfig() error {
	cfg := fmt.Sprintf(`version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: %s
  delete:
    enabled: true
http:
  addr: %s
`, filepath.Join(r.opts.Dir, "storage"), r.Addr)
	if r.opts.TLS {
		cert, key, ca, err := serving(r.opts.Host)
		if err != nil {
			return fmt.Errorf("registry %s: certificate: %w", r.Addr, err)
		}
		certPath, keyPath := filepath.Join(r.opts.Dir, "tls.crt"), filepath.Join(r.opts.Dir, "tls.key")
		if err := os.WriteFile(certPath, cert, 0o644); err != nil {
			return err
		}
		if err := os.WriteFile(keyPath, key, 0o600); err != nil {
			return err
		}
		r.CACertPEM = ca
		if err := os.WriteFile(filepath.Join(r.opts.Dir, caFile), ca, 0o644); err != nil {
			return err
		}
		cfg += fmt.Sprintf("  tls:\n    certificate: %s\n    key: %s\n", certPath, keyPath)
	}
	if len(r.opts.Users) > 0 {
		var htpasswd bytes.Buffer
		for user, password := range r.opts.Users {
			hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
			if err != nil {
				return err
			}
			fmt.Fprintf(&htpasswd, "%s:%s\n", user, hash)
		}
		path := filepath.Join(r.opts.Dir, "htpasswd")
		if err := os.WriteFile(path, htpasswd.Bytes(), 0o600); err != nil {
			return err
		}
		cfg += fmt.Sprintf("auth:\n  htpasswd:\n    realm: podvirt-test\n    path: %s\n", path)
	}
	return os.WriteFile(r.config, []byte(cfg), 0o644)
}

// Restart starts the process again after Kill or Stop (same port, same
// storage), and waits until it serves.
func (r *Registry) Restart(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.cmd != nil || r.adopted != 0 {
		return fmt.Errorf("registry %s: already running", r.Addr)
	}
	log, err := os.OpenFile(r.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	cmd := exec.Command(Binary, "serve", r.config)
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if r.opts.Detach {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	}
	if err := cmd.Start(); err != nil {
		log.Close()
		return fmt.Errorf("registry %s: starting %s: %w", r.Addr, Binary, err)
	}
	if err := pidproc.Write(filepath.Join(r.opts.Dir, pidFile), cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		log.Close()
		return err
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); log.Close(); close(done) }()
	r.cmd, r.done = cmd, done
	deadline := time.Now().Add(30 * time.Second)
	for {
		if err := r.ping(ctx); err == nil {
			return nil
		} else if time.Now().After(deadline) {
			r.stopLocked(syscall.SIGKILL)
			logs, _ := os.ReadFile(r.log)
			return fmt.Errorf("registry %s: not serving after 30s: %w; log:\n%s", r.Addr, err, logs)
		}
		select {
		case <-done:
			r.cmd = nil
			logs, _ := os.ReadFile(r.log)
			return fmt.Errorf("registry %s exited at start; log:\n%s", r.Addr, logs)
		case <-ctx.Done():
			r.stopLocked(syscall.SIGKILL)
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// ping asks /v2/; 200 or 401 (auth on) means it serves.
func (r *Registry) ping(ctx context.Context) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, r.URL()+"/v2/", nil)
	if err != nil {
		return err
	}
	resp, err := r.client().Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusUnauthorized {
		return fmt.Errorf("GET /v2/: %s", resp.Status)
	}
	return nil
}

// URL is the registry's base URL.
func (r *Registry) URL() string {
	if r.opts.TLS {
		return "https://" + r.Addr
	}
	return "http://" + r.Addr
}

// Transport trusts the registry's CA.
func (r *Registry) Transport() http.RoundTripper {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if r.opts.TLS {
		pool := x509.NewCertPool()
		pool.AppendCertsFromPEM(r.CACertPEM)
		t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	return t
}

func (r *Registry) client() *http.Client {
	return &http.Client{Transport: r.Transport(), Timeout: 5 * time.Second}
}

// Push writes img to repo:tag (e.g. "os/guest:1") and returns the full
// reference by digest.
func (r *Registry) Push(ctx context.Context, repoTag string, img v1.Image) (string, error) {
	var opts []name.Option
	if !r.opts.TLS {
		opts = append(opts, name.Insecure)
	}
	ref, err := name.ParseReference(r.Addr+"/"+repoTag, opts...)
	if err != nil {
		return "", fmt.Errorf("registry %s: reference %q: %w", r.Addr, repoTag, err)
	}
	auth := authn.Anonymous
	for user, password := range r.opts.Users {
		auth = &authn.Basic{Username: user, Password: password}
		break
	}
	if err := remote.Write(ref, img, remote.WithContext(ctx), remote.WithTransport(r.Transport()), remote.WithAuth(auth)); err != nil {
		return "", fmt.Errorf("pushing %s: %w", ref, err)
	}
	digest, err := img.Digest()
	if err != nil {
		return "", err
	}
	return ref.Context().Digest(digest.String()).String(), nil
}

// Kill stops the process at once (SIGKILL), as a crashed mirror would.
func (r *Registry) Kill() { r.mu.Lock(); defer r.mu.Unlock(); r.stopLocked(syscall.SIGKILL) }

// Stop stops the process (SIGTERM) and waits for it.
func (r *Registry) Stop() { r.mu.Lock(); defer r.mu.Unlock(); r.stopLocked(syscall.SIGTERM) }

func (r *Registry) stopLocked(sig syscall.Signal) {
	if r.adopted != 0 {
		// Not our child: found and stopped by pid.
		_ = pidproc.Stop(r.adopted, sig, 10*time.Second)
		r.adopted = 0
		return
	}
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(sig)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
}

func freePort(host string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return 0, fmt.Errorf("registry: finding a free port on %s: %w", host, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// serving makes a CA and a certificate for host signed by it, PEM-encoded.
func serving(host string) (cert, key, ca []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "podvirt test registry CA"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	leafKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	if ip := net.ParseIP(host); ip != nil {
		leaf.IPAddresses = []net.IP{ip}
	} else {
		leaf.DNSNames = []string{host}
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, caCert, &leafKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(leafKey)
	if err != nil {
		return nil, nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: leafDER}),
		pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}
