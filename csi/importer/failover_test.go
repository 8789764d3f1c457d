package importer

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
)

// dyingProxy forwards TCP to a backend and dies (closes its listener and every
// connection) once it has sent limit bytes back to clients: a mirror killed mid-import.
type dyingProxy struct {
	l     net.Listener
	sent  atomic.Int64
	limit int64
	mu    sync.Mutex // guards conns and dead
	conns []net.Conn
	dead  bool
}

func startDyingProxy(t *testing.T, backend string, limit int64) *dyingProxy {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &dyingProxy{l: l, limit: limit}
	t.Cleanup(p.die)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			b, err := net.Dial("tcp", backend)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			if p.dead {
				p.mu.Unlock()
				c.Close()
				b.Close()
				return
			}
			p.conns = append(p.conns, c, b)
			p.mu.Unlock()
			go func() { _, _ = io.Copy(b, c) }()
			go p.pump(c, b)
		}
	}()
	return p
}

func (p *dyingProxy) pump(client, backend net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := backend.Read(buf)
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
			if p.sent.Add(int64(n)) >= p.limit {
				p.die()
				return
			}
		}
		if err != nil {
			client.Close()
			return
		}
	}
}

func (p *dyingProxy) die() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dead = true
	p.l.Close()
	for _, c := range p.conns {
		c.Close()
	}
}

func (p *dyingProxy) host() string { return p.l.Addr().String() }

// Three mirrors: the first is down, the second dies mid-download, the third finishes the
// blob from where the second stopped (Range) and the digest is right.
func TestMirrorFailover(t *testing.T) {
	ctx := testCtx(t, 3*time.Minute)
	work := t.TempDir()
	disk := makeQCOW2(t, work, "f.qcow2", "64M")
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x33 8M 16M", disk)
	img := containerDisk(t, true, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
	layers, _ := img.Layers()
	blobSize, _ := layers[0].Size()

	// mirror 1: nothing listens.
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	down := l.Addr().String()
	l.Close()
	// mirror 2: a registry behind a proxy that dies after a third of the blob.
	hostB, _ := inProcessRegistry(t)
	// mirror 3: healthy.
	hostC, counterC := inProcessRegistry(t)
	for _, h := range []string{hostB, hostC} {
		push(t, img, h+"/os/guest:1")
	}
	proxy := startDyingProxy(t, hostB, blobSize/3)

	reg := prometheus.NewRegistry()
	c, err := NewCacheWithOptions(t.TempDir(), 0, reg, Options{Stall: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var mirrors []string
	src := Source{AllowPrivate: true, URL: "docker://registry.example/os/guest:1", Mirrors: []string{down, proxy.host(), hostC}}
	base, err := c.Acquire(ctx, src, "vol-1", func(p Progress) {
		mu.Lock()
		if len(mirrors) == 0 || mirrors[len(mirrors)-1] != p.Mirror {
			mirrors = append(mirrors, p.Mirror)
		}
		mu.Unlock()
	})
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != digestOf(t, img) {
		t.Fatalf("digest %s, want %s", base.Digest, digestOf(t, img))
	}
	sameContent(t, disk, base.Path)
	if proxy.sent.Load() < blobSize/3 {
		t.Fatalf("mirror 2 sent only %d bytes: it never served part of the blob", proxy.sent.Load())
	}
	if got := mirrors[len(mirrors)-1]; got != hostC {
		t.Fatalf("progress mirrors %v: last should be %s", mirrors, hostC)
	}
	if !strings.Contains(strings.Join(mirrors, ","), proxy.host()) {
		t.Fatalf("progress mirrors %v never showed mirror 2", mirrors)
	}
	// Mirror 3 sent only the rest of the blob, not all of it.
	if served := counterC.blobBytes.Load(); served >= blobSize {
		t.Fatalf("mirror 3 sent %d bytes of a %d-byte blob: the download started over", served, blobSize)
	}
	for _, m := range []string{down, proxy.host()} {
		if n := counterValue(t, c.metrics.failovers.WithLabelValues(m)); n < 1 {
			t.Fatalf("failovers from %s = %v, want ≥ 1", m, n)
		}
	}
	if n := counterValue(t, c.metrics.imports.WithLabelValues("success")); n != 1 {
		t.Fatalf("imports{success} = %v", n)
	}

	// The failed mirrors are now unhealthy: the next import starts on mirror 3.
	if order := c.health.order(src.Mirrors); order[0] != hostC {
		t.Fatalf("mirror order after failures: %v", order)
	}
}

// A mirror that stops sending (no error, no bytes) is left after the stall timeout.
func TestMirrorStall(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	disk := makeQCOW2(t, t.TempDir(), "s.qcow2", "16M")
	img := containerDisk(t, true, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
	hostA, counterA := inProcessRegistry(t)
	hostB, _ := inProcessRegistry(t)
	push(t, img, hostA+"/os/s:1")
	push(t, img, hostB+"/os/s:1")
	counterA.delay.Store(int64(time.Hour)) // sends 64 KiB, then nothing
	c := newTestCache(t, t.TempDir(), 0, Options{Stall: time.Second})
	start := time.Now()
	base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://registry.example/os/s:1", Mirrors: []string{hostA, hostB}}, "v", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != digestOf(t, img) {
		t.Fatal("wrong digest")
	}
	if el := time.Since(start); el > 30*time.Second {
		t.Fatalf("stall detection took %v", el)
	}
}

func counterValue(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}

// A mirror answering 5xx is left for the next one and marked unhealthy.
func TestMirror5xx(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	disk := makeQCOW2(t, t.TempDir(), "5.qcow2", "16M")
	img := containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/v2/" {
			w.WriteHeader(http.StatusOK) // the ping passes; the registry behind is broken
			return
		}
		http.Error(w, "backend down", http.StatusServiceUnavailable)
	}))
	t.Cleanup(broken.Close)
	brokenHost := strings.TrimPrefix(broken.URL, "http://")
	good, _ := inProcessRegistry(t)
	push(t, img, good+"/os/5:1")
	c := newTestCache(t, t.TempDir(), 0, Options{})
	src := Source{AllowPrivate: true, URL: "docker://registry.example/os/5:1", Mirrors: []string{brokenHost, good}}
	base, err := c.Acquire(ctx, src, "v", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != digestOf(t, img) {
		t.Fatal("wrong digest")
	}
	if n := counterValue(t, c.metrics.failovers.WithLabelValues(brokenHost)); n != 1 {
		t.Fatalf("failovers from the 503 mirror = %v, want 1", n)
	}
	if order := c.health.order(src.Mirrors); order[0] != good {
		t.Fatalf("order after a 503: %v", order)
	}
	// Only unhealthy mirrors left: they are still tried (and fail as retryable, not terminal).
	_, err = c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://registry.example/os/other:1", Mirrors: []string{brokenHost}}, "w", nil)
	if err == nil || IsTerminal(err) || !strings.Contains(err.Error(), "503") {
		t.Fatalf("503 everywhere: %v, want a retryable error naming the 503", err)
	}
}
