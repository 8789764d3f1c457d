package importer

import (
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/csi/egress"
)

// TestHostileSources: sources pointing the driver at what it must not fetch for a claim
// are refused, each with its reason, whatever hop reaches them, and leave nothing behind.
// The refused addresses are never connected to: the dialer refuses before connect.
func TestHostileSources(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	disk := makeQCOW2(t, work, "good.qcow2", "16M")
	files := httptest.NewServer(http.FileServer(http.Dir(work)))
	defer files.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(files.URL, "http://"))

	// An allowed server (opted in with AllowPrivate) that redirects to the metadata endpoint.
	redirector := httptest.NewServer(http.RedirectHandler("http://169.254.169.254/latest/disk.qcow2", http.StatusFound))
	defer redirector.Close()

	// An opted-in registry whose blobs redirect to the metadata endpoint, as registries
	// redirect blobs to object storage.
	host, _ := inProcessRegistry(t)
	img := containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
	push(t, img, host+"/os/guest:1")
	blobRedirect := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.Contains(r.URL.Path, "/blobs/") {
			http.Redirect(w, r, "http://169.254.169.254/blob", http.StatusTemporaryRedirect)
			return
		}
		http.Redirect(w, r, "http://"+host+r.URL.RequestURI(), http.StatusTemporaryRedirect)
	}))
	defer blobRedirect.Close()
	hostOf := func(u string) string { return strings.TrimPrefix(u, "http://") }

	cluster := Options{
		PodCIDRs:     []netip.Prefix{netip.MustParsePrefix("10.244.0.0/16")},
		ServiceCIDRs: []netip.Prefix{netip.MustParsePrefix("10.96.0.0/12")},
	}
	for _, tc := range []struct {
		name   string
		src    Source
		reason string
	}{
		{"metadata IP", Source{URL: "http://169.254.169.254/latest/meta-data/disk.img"}, egress.ReasonLinkLocal},
		{"metadata IP, even with private sources allowed", Source{URL: "http://169.254.169.254/disk.img", AllowPrivate: true}, egress.ReasonLinkLocal},
		{"127.0.0.1", Source{URL: files.URL + "/good.qcow2"}, egress.ReasonLoopback},
		{"[::1]", Source{URL: "http://[::1]:" + port + "/good.qcow2"}, egress.ReasonLoopback},
		{"a pod IP", Source{URL: "http://10.244.1.7:8080/disk.qcow2"}, egress.ReasonPodCIDR + " 10.244.0.0/16"},
		{"a Service ClusterIP", Source{URL: "docker://10.96.0.10:5000/os/guest:1"}, egress.ReasonServiceCIDR + " 10.96.0.0/12"},
		{"a registry mirror on a Service ClusterIP", Source{URL: "docker://quay.io/os/guest:1", Mirrors: []string{"10.100.0.1:5000"}}, egress.ReasonServiceCIDR + " 10.96.0.0/12"},
		{"a hostname resolving to loopback", Source{URL: "http://localhost:" + port + "/good.qcow2"}, egress.ReasonLoopback},
		{"a redirect from an allowed host to a refused one", Source{URL: redirector.URL + "/disk.qcow2", AllowPrivate: true}, egress.ReasonLinkLocal},
		{"a registry whose blob URL redirects to metadata", Source{URL: "docker://" + hostOf(blobRedirect.URL) + "/os/guest:1", AllowPrivate: true}, egress.ReasonLinkLocal},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			c := newTestCache(t, dir, 0, cluster)
			_, err := c.Acquire(ctx, tc.src, "vol-1", nil)
			var re *egress.RefusedError
			if !errors.As(err, &re) || re.Reason != tc.reason {
				t.Fatalf("Acquire(%s) = %v; want refused: %s", tc.src.URL, err, tc.reason)
			}
			if !IsTerminal(err) || !strings.Contains(err.Error(), tc.reason) {
				t.Fatalf("Acquire(%s) = %v; want a terminal error saying %q", tc.src.URL, err, tc.reason)
			}
			t.Logf("%v", err)
			assertEmptyCache(t, dir)
		})
	}

	// The same servers, opted in, serve: the refusals above are the policy's doing.
	t.Run("opted in", func(t *testing.T) {
		c := newTestCache(t, t.TempDir(), 0, cluster)
		for _, src := range []Source{
			{URL: "http://localhost:" + port + "/good.qcow2", AllowPrivate: true},
			{URL: "docker://" + host + "/os/guest:1", AllowPrivate: true},
		} {
			if _, err := c.Acquire(ctx, src, "vol-"+src.URL, nil); err != nil {
				t.Fatalf("Acquire(%s) with private sources allowed: %v", src.URL, err)
			}
		}
	})
}

// TestHostileHopsFromAPublicHost: hops from a host the default policy allows (this
// machine's own non-loopback address) to loopback: an HTTP redirect, and a registry token
// realm named by a hostname (go-containerregistry refuses realms that are private IP
// literals by itself, not names).
func TestHostileHopsFromAPublicHost(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	ip := nonLoopbackIP(t)
	listen := func(h http.Handler) *httptest.Server {
		lis, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
		if err != nil {
			t.Fatalf("listen on %s: %v", ip, err)
		}
		srv := httptest.NewUnstartedServer(h)
		srv.Listener.Close()
		srv.Listener = lis
		srv.Start()
		t.Cleanup(srv.Close)
		return srv
	}
	loop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("secret")) }))
	defer loop.Close()
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(loop.URL, "http://"))
	redirector := listen(http.RedirectHandler(loop.URL+"/disk.img", http.StatusFound))
	reg := listen(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="http://localhost:`+port+`/token",service="reg"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	for _, tc := range []struct{ name, url string }{
		{"a redirect from an allowed host to loopback", redirector.URL + "/disk.img"},
		{"a registry whose token realm resolves to loopback", "docker://" + strings.TrimPrefix(reg.URL, "http://") + "/os/guest:1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := newTestCache(t, t.TempDir(), 0, Options{})
			_, err := c.Acquire(ctx, Source{URL: tc.url, Insecure: true}, "vol-1", nil)
			var re *egress.RefusedError
			if !errors.As(err, &re) || re.Reason != egress.ReasonLoopback || !IsTerminal(err) {
				t.Fatalf("Acquire(%s) = %v; want a terminal refusal: %s", tc.url, err, egress.ReasonLoopback)
			}
			t.Logf("%v", err)
		})
	}
}

// nonLoopbackIP is an address of this machine that the default policy allows.
func nonLoopbackIP(t *testing.T) netip.Addr {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatalf("interface addresses: %v", err)
	}
	for _, a := range addrs {
		if pn, ok := a.(*net.IPNet); ok {
			ip, _ := netip.AddrFromSlice(pn.IP)
			ip = ip.Unmap()
			if ip.Is4() && (egress.Policy{}).Check(netip.AddrPortFrom(ip, 1)) == nil {
				return ip
			}
		}
	}
	t.Fatal("this machine has no non-loopback IPv4 address to serve an allowed host from: give one of its links an address")
	return netip.Addr{}
}

// TestRegistriesOnly: with mirrors, a docker:// source is fetched from them only, never from
// the host its reference names (here one the policy would refuse, so contacting it fails).
func TestRegistriesOnly(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	host, _ := inProcessRegistry(t)
	img := containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", makeQCOW2(t, t.TempDir(), "m.qcow2", "16M"))))
	push(t, img, host+"/os/guest:1")
	c := newTestCache(t, t.TempDir(), 0, Options{})
	base, err := c.Acquire(ctx, Source{URL: "docker://169.254.169.254/os/guest:1", Mirrors: []string{host}, AllowPrivate: true}, "vol-1", nil)
	if err != nil || base.Digest != digestOf(t, img) {
		t.Fatalf("Acquire from the mirror = %+v, %v; want %s", base, err, digestOf(t, img))
	}
}

// TestPrivateCachedApart: what a URL served to an opted-in import is not handed, from the
// cache, to an import of the same URL that may not reach private addresses.
func TestPrivateCachedApart(t *testing.T) {
	ctx := testCtx(t, time.Minute)
	work := t.TempDir()
	makeQCOW2(t, work, "p.qcow2", "16M")
	srv := httptest.NewServer(http.FileServer(http.Dir(work)))
	defer srv.Close()
	c := newTestCache(t, t.TempDir(), 0, Options{})
	if _, err := c.Acquire(ctx, Source{URL: srv.URL + "/p.qcow2", AllowPrivate: true}, "vol-1", nil); err != nil {
		t.Fatal(err)
	}
	_, err := c.Acquire(ctx, Source{URL: srv.URL + "/p.qcow2"}, "vol-2", nil)
	var re *egress.RefusedError
	if !errors.As(err, &re) || re.Reason != egress.ReasonLoopback {
		t.Fatalf("Acquire without private sources of a URL cached with them = %v; want refused: %s", err, egress.ReasonLoopback)
	}
}
