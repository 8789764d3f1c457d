package importer

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// An import from the in-process registry: gzip layer, qcow2 disk; the base is the same
// disk, read-only, referenced, and a second Acquire needs no download.
func TestImportInProcessRegistry(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	disk := makeQCOW2(t, work, "src.qcow2", "64M")
	host, counter := inProcessRegistry(t)
	img := containerDisk(t, false, layerTar(t, tarEntry{name: "disk/", typeflag: '5'}, fileEntry(t, "disk/disk.qcow2", disk)))
	push(t, img, host+"/vm/fedora:40")

	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{})
	var last Progress
	var calls int
	base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/vm/fedora:40"}, "vol-1", func(p Progress) { last = p; calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != digestOf(t, img) || base.Format != "qcow2" || base.VirtualSize != 64<<20 || base.Cached {
		t.Fatalf("base = %+v, want digest %s, qcow2, 64 MiB", base, digestOf(t, img))
	}
	sameContent(t, disk, base.Path)
	if fileSHA256(t, disk) != fileSHA256(t, base.Path) {
		t.Fatal("the cached qcow2 differs byte-wise from the pushed one")
	}
	if st, _ := os.Stat(base.Path); st.Mode().Perm()&0o222 != 0 {
		t.Fatalf("base %s is writable (%v)", base.Path, st.Mode())
	}
	if calls == 0 || last.Bytes != last.Total || last.Mirror != host {
		t.Fatalf("progress: %d calls, last %+v", calls, last)
	}
	gets := counter.blobGETs.Load()
	again, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/vm/fedora:40"}, "vol-2", nil)
	cached := base
	cached.Cached = true
	if err != nil || again != cached {
		t.Fatalf("second Acquire = %+v, %v; want %+v", again, err, cached)
	}
	if n := counter.blobGETs.Load(); n != gets {
		t.Fatalf("second Acquire downloaded again (%d blob GETs, had %d)", n, gets)
	}
	hits, misses := testutil.ToFloat64(c.metrics.lookups.WithLabelValues(lookupHit)), testutil.ToFloat64(c.metrics.lookups.WithLabelValues(lookupMiss))
	if hits != 1 || misses != 1 {
		t.Fatalf("cache lookups: %v hits, %v misses; want 1 and 1", hits, misses)
	}
	// By digest, and after a restart: the index survives.
	c2 := newTestCache(t, dir, 0, Options{})
	byDigest, err := c2.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/vm/fedora@" + base.Digest}, "vol-3", nil)
	if err != nil || byDigest != cached {
		t.Fatalf("Acquire by digest after restart = %+v, %v", byDigest, err)
	}
	if n := counter.blobGETs.Load(); n != gets {
		t.Fatalf("Acquire after restart downloaded again")
	}
}

// The real test guest's containerDisk (test/images/guest's OCI tar) through a real
// docker-registry with TLS and htpasswd.
func TestImportRealRegistryTLSAuth(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	reg := startRealRegistry(t, "127.0.0.2")
	img, disk := guestContainerDisk(t)
	push(t, img, reg.host+"/podvirt/guest:1", reg.pushOpts()...)

	dir := t.TempDir()
	c := newTestCache(t, dir, 0, Options{})
	src := reg.source("podvirt/guest:1")

	noAuth := src
	noAuth.Username, noAuth.Password = "", ""
	if _, err := c.Acquire(ctx, noAuth, "vol-x", nil); err == nil || !strings.Contains(err.Error(), "401") && !strings.Contains(strings.ToLower(err.Error()), "unauthorized") {
		t.Fatalf("import without credentials: %v, want unauthorized", err)
	}
	noCA := src
	noCA.CACertsPEM = nil
	if _, err := c.Acquire(ctx, noCA, "vol-x", nil); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("import without the CA: %v, want a certificate error", err)
	}

	base, err := c.Acquire(ctx, src, "vol-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != digestOf(t, img) || base.Format != "qcow2" {
		t.Fatalf("base = %+v", base)
	}
	sameContent(t, disk, base.Path)

	// The same credentials as a dockerconfigjson Secret would hold them.
	dcj := []byte(`{"auths":{"` + reg.host + `":{"username":"` + reg.user + `","password":"` + reg.pass + `"}}}`)
	c2 := newTestCache(t, t.TempDir(), 0, Options{})
	src2 := Source{AllowPrivate: true, URL: src.URL, DockerConfigJSON: dcj, CACertsPEM: reg.CACertPEM}
	if b2, err := c2.Acquire(ctx, src2, "vol-1", nil); err != nil || b2.Digest != base.Digest {
		t.Fatalf("import with dockerconfigjson: %+v, %v", b2, err)
	}

	// The base is cached now; a caller without credentials must still be
	// refused, not handed the private image.
	if b, err := c.Acquire(ctx, noAuth, "vol-y", nil); err == nil {
		t.Fatalf("a source without credentials got the cached private image %+v", b)
	} else if IsTerminal(err) {
		t.Fatalf("refused credentials are not terminal (the Secret can be fixed): %v", err)
	}
}

// HTTP(S) source with a checksum; the compressed (.xz) variant too.
func TestImportHTTPChecksum(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	disk := makeQCOW2(t, work, "web.qcow2", "32M")
	needTool(t, "xz", "xz-utils")
	run(t, "xz", "-k", "-T1", "-0", disk)
	srv := httptest.NewTLSServer(http.FileServer(http.Dir(work)))
	t.Cleanup(srv.Close)
	ca := pemOf(srv.Certificate().Raw)

	c := newTestCache(t, t.TempDir(), 0, Options{})
	sum := fileSHA256(t, disk)
	base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/web.qcow2", Checksum: sum, CACertsPEM: ca}, "vol-1", nil)
	if err != nil {
		t.Fatal(err)
	}
	if base.Digest != sum || base.Format != "qcow2" {
		t.Fatalf("base = %+v, want digest %s", base, sum)
	}
	sameContent(t, disk, base.Path)

	xzSum := fileSHA256(t, disk+".xz")
	bx, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/web.qcow2.xz", Checksum: xzSum, CACertsPEM: ca}, "vol-2", nil)
	if err != nil {
		t.Fatal(err)
	}
	sameContent(t, disk, bx.Path)
	if bx.Digest != xzSum {
		t.Fatalf("xz base digest %s, want the download's %s", bx.Digest, xzSum)
	}

	if _, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/missing.qcow2", CACertsPEM: ca}, "vol-3", nil); !IsTerminal(err) {
		t.Fatalf("404 over HTTP: %v, want a terminal error", err)
	}
}

// Two Acquire of the same source at once: one download, both get the base.
func TestConcurrentAcquireDownloadsOnce(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	disk := makeQCOW2(t, t.TempDir(), "d.qcow2", "64M")
	host, counter := inProcessRegistry(t)
	img := containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
	push(t, img, host+"/vm/c:1")
	counter.delay.Store(int64(2 * time.Millisecond)) // the import takes a while: both callers overlap
	c := newTestCache(t, t.TempDir(), 0, Options{})
	var wg sync.WaitGroup
	bases := make([]Base, 2)
	errs := make([]error, 2)
	for i := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			bases[i], errs[i] = c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/vm/c:1"}, "vol-"+string(rune('a'+i)), nil)
		}()
	}
	wg.Wait()
	for i := range 2 {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
	}
	if bases[0] != bases[1] {
		t.Fatalf("bases differ: %+v vs %+v", bases[0], bases[1])
	}
	if n := counter.blobGETs.Load(); n != 1 {
		t.Fatalf("%d blob downloads, want 1", n)
	}
}

// References persist; unreferenced bases are evicted least recently used first, once
// the cache is over its cap.
func TestCacheEviction(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	host, _ := inProcessRegistry(t)
	var digests []string
	for i, tag := range []string{"a", "b", "c"} {
		disk := makeQCOW2(t, work, tag+".qcow2", "16M")
		run(t, "qemu-io", "-f", "qcow2", "-c", "write -P "+string(rune('1'+i))+" 4M 64k", disk)
		img := containerDisk(t, false, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
		push(t, img, host+"/vm/e:"+tag)
		digests = append(digests, digestOf(t, img))
	}
	src := func(tag string) Source { return Source{AllowPrivate: true, URL: "docker://" + host + "/vm/e:" + tag} }
	probe, err := newTestCache(t, t.TempDir(), 0, Options{}).Acquire(ctx, src("a"), "probe", nil)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	c := newTestCache(t, dir, probe.Size*5/2, Options{}) // room for two bases, not three
	bases := func(want ...int) {
		t.Helper()
		files, _ := filepath.Glob(filepath.Join(dir, "bases", "*"))
		var got []string
		for _, f := range files {
			for i, d := range digests {
				if strings.Contains(f, strings.TrimPrefix(d, "sha256:")) {
					got = append(got, string(rune('a'+i)))
				}
			}
		}
		sort.Strings(got)
		var w []string
		for _, i := range want {
			w = append(w, string(rune('a'+i)))
		}
		if len(files) != len(want) || strings.Join(got, ",") != strings.Join(w, ",") {
			t.Fatalf("cached bases %v (files %v), want %v", got, files, w)
		}
	}
	if _, err := c.Acquire(ctx, src("a"), "vol-a", nil); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Acquire(ctx, src("b"), "vol-b", nil); err != nil {
		t.Fatal(err)
	}
	if err := c.Release("vol-a"); err != nil {
		t.Fatal(err)
	}
	if err := c.Release("vol-a"); err != nil {
		t.Fatalf("Release twice: %v", err)
	}
	bases(0, 1) // under the cap, a stays for the next volume
	if _, err := c.Acquire(ctx, src("c"), "vol-c", nil); err != nil {
		t.Fatal(err)
	}
	bases(1, 2) // over it: the unused a goes, the held b stays
	// A base renamed into place by an import that crashed before the index recorded it.
	stray := filepath.Join(dir, "bases", strings.Repeat("ab", 32)+".qcow2")
	if err := os.WriteFile(stray, []byte("half"), 0o444); err != nil {
		t.Fatal(err)
	}
	c2 := newTestCache(t, dir, probe.Size*5/2, Options{}) // restart: references survive, the stray file goes
	bases(1, 2)
	if err := c2.Release("vol-b"); err != nil {
		t.Fatal(err)
	}
	if _, err := c2.Acquire(ctx, src("a"), "vol-a2", nil); err != nil {
		t.Fatal(err)
	}
	bases(0, 2) // b, unused since, made room
	if n := counterValue(t, c.metrics.evictions) + counterValue(t, c2.metrics.evictions); n != 2 {
		t.Fatalf("evictions = %v, want 2 (a, b)", n)
	}
	var m dto.Metric
	_ = c2.metrics.entries.Write(&m)
	if m.GetGauge().GetValue() != 2 {
		t.Fatalf("cache entries gauge = %v, want 2", m.GetGauge().GetValue())
	}
}

var _ = diskmeta.FormatRaw
