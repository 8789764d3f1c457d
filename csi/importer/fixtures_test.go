package importer

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvirt/podvirt/csi/image"
	testregistry "github.com/podvirt/podvirt/test/env/registry"
	"github.com/podvirt/podvirt/test/images/guest"
)

// needTool fails the test when a host tool is missing, naming make deps.
func needTool(t testing.TB, tool, pkg string) string {
	t.Helper()
	p, err := exec.LookPath(tool)
	if err != nil {
		t.Fatalf("%s (Debian package %s) is not installed: run `make deps`", tool, pkg)
	}
	return p
}

func run(t testing.TB, name string, args ...string) {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
}

// makeQCOW2 creates a qcow2 of the given virtual size with some data written.
func makeQCOW2(t testing.TB, dir, file, size string, extra ...string) string {
	t.Helper()
	needTool(t, "qemu-img", "qemu-utils")
	p := filepath.Join(dir, file)
	run(t, "qemu-img", append(append([]string{"create", "-q", "-f", "qcow2"}, extra...), p, size)...)
	run(t, "qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", "-c", "write -P 0xa5 2M 512k", p)
	return p
}

// tarEntry is one entry of a hand-made layer.
type tarEntry struct {
	name     string
	data     []byte
	typeflag byte
	linkname string
}

func layerTar(t testing.TB, entries ...tarEntry) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		typ := e.typeflag
		if typ == 0 {
			typ = tar.TypeReg
		}
		h := &tar.Header{Name: e.name, Typeflag: typ, Mode: 0o444, Size: int64(len(e.data)), Linkname: e.linkname, Format: tar.FormatPAX}
		if typ == tar.TypeDir || typ == tar.TypeSymlink {
			h.Size, h.Mode = 0, 0o755
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(e.data); err != nil && typ == tar.TypeReg {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func fileEntry(t testing.TB, name, path string) tarEntry {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return tarEntry{name: name, data: b}
}

// containerDisk builds an image with one layer per tar; gzip layers unless uncompressed.
func containerDisk(t testing.TB, uncompressed bool, layers ...[]byte) v1.Image {
	t.Helper()
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	for _, lt := range layers {
		var l v1.Layer
		var err error
		if uncompressed {
			l = static.NewLayer(lt, types.OCIUncompressedLayer)
		} else {
			b := lt
			l, err = tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil },
				tarball.WithMediaType(types.OCILayer))
			if err != nil {
				t.Fatal(err)
			}
		}
		img, err = mutate.AppendLayers(img, l)
		if err != nil {
			t.Fatal(err)
		}
	}
	return img
}

// fileLayer is an uncompressed layer read from a tar file on disk, so big benchmark
// images need not fit in memory.
type fileLayer struct {
	path   string
	digest v1.Hash
	size   int64
}

func newFileLayer(t testing.TB, path string) *fileLayer {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	n, err := io.Copy(h, f)
	if err != nil {
		t.Fatal(err)
	}
	return &fileLayer{path: path, size: n, digest: v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}}
}

func (l *fileLayer) Digest() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) DiffID() (v1.Hash, error)             { return l.digest, nil }
func (l *fileLayer) Compressed() (io.ReadCloser, error)   { return os.Open(l.path) }
func (l *fileLayer) Uncompressed() (io.ReadCloser, error) { return os.Open(l.path) }
func (l *fileLayer) Size() (int64, error)                 { return l.size, nil }
func (l *fileLayer) MediaType() (types.MediaType, error)  { return types.OCIUncompressedLayer, nil }

// writeTarFile writes a layer tar holding one disk file, streaming from src.
func writeTarFile(t testing.TB, dst, entryName, src string) {
	t.Helper()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	st, _ := in.Stat()
	out, err := os.Create(dst)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	tw := tar.NewWriter(out)
	if err := tw.WriteHeader(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755}); err != nil {
		t.Fatal(err)
	}
	if err := tw.WriteHeader(&tar.Header{Name: entryName, Typeflag: tar.TypeReg, Mode: 0o444, Size: st.Size()}); err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(tw, in); err != nil {
		t.Fatal(err)
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
}

// countingHandler counts blob GETs and their bytes, and can slow blob responses.
type countingHandler struct {
	next      http.Handler
	blobGETs  atomic.Int64
	blobBytes atomic.Int64
	inFlight  atomic.Int64 // blob GETs being served now
	delay     atomic.Int64 // per 64 KiB written, in ns
	tamper    atomic.Bool  // flip a byte in every blob response
}

type countingWriter struct {
	http.ResponseWriter
	h   *countingHandler
	ctx context.Context
}

func (w *countingWriter) Write(p []byte) (int, error) {
	if d := w.h.delay.Load(); d > 0 {
		written := 0
		for len(p) > 0 {
			c := min(len(p), 64<<10)
			n, err := w.ResponseWriter.Write(p[:c])
			written += n
			w.h.blobBytes.Add(int64(n))
			if err != nil {
				return written, err
			}
			if f, ok := w.ResponseWriter.(http.Flusher); ok {
				f.Flush()
			}
			select {
			case <-time.After(time.Duration(d)):
			case <-w.ctx.Done():
				return written, w.ctx.Err()
			}
			p = p[c:]
		}
		return written, nil
	}
	if w.h.tamper.Load() && len(p) > 0 {
		p = append([]byte{}, p...)
		p[len(p)/2] ^= 0xff
	}
	n, err := w.ResponseWriter.Write(p)
	w.h.blobBytes.Add(int64(n))
	return n, err
}

func (h *countingHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method == http.MethodGet && strings.Contains(r.URL.Path, "/blobs/") {
		h.blobGETs.Add(1)
		h.inFlight.Add(1)
		defer h.inFlight.Add(-1)
		h.next.ServeHTTP(&countingWriter{ResponseWriter: w, h: h, ctx: r.Context()}, r)
		return
	}
	h.next.ServeHTTP(w, r)
}

// inProcessRegistry is go-containerregistry's registry on 127.0.0.1 (plain HTTP, as
// go-containerregistry expects on loopback).
func inProcessRegistry(t testing.TB) (host string, counter *countingHandler) {
	t.Helper()
	counter = &countingHandler{next: registry.New(registry.Logger(nilLogger()))}
	srv := httptest.NewServer(counter)
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://"), counter
}

func push(t testing.TB, img v1.Image, ref string, opts ...remote.Option) {
	t.Helper()
	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r, img, opts...); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
}

func digestOf(t testing.TB, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// newTestCache opens a cache in a fresh directory with test-friendly timings.
func newTestCache(t testing.TB, dir string, maxBytes int64, o Options) *Cache {
	t.Helper()
	if o.Stall == 0 {
		o.Stall = 5 * time.Second
	}
	c, err := NewCacheWithOptions(dir, maxBytes, nil, o)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// assertEmptyCache checks a refusal left nothing behind: no base, no partial import.
func assertEmptyCache(t testing.TB, dir string) {
	t.Helper()
	for _, sub := range []string{"bases", "partial"} {
		ents, err := os.ReadDir(filepath.Join(dir, sub))
		if err != nil {
			t.Fatal(err)
		}
		if len(ents) != 0 {
			var names []string
			for _, e := range ents {
				names = append(names, e.Name())
			}
			t.Errorf("%s/%s holds %v after a refusal", dir, sub, names)
		}
	}
}

// sameContent compares the guest-visible content of two images with qemu-img compare.
func sameContent(t testing.TB, a, b string) {
	t.Helper()
	out, err := exec.Command("qemu-img", "compare", "-U", a, b).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img compare %s %s: %v: %s", a, b, err, out)
	}
}

func fileSHA256(t testing.TB, p string) string {
	t.Helper()
	f, err := os.Open(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		t.Fatal(err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil))
}

// realRegistry is a docker-registry process (test/env/registry) as the
// importer's tests use it: with TLS and an htpasswd user, or plain HTTP
// without auth.
type realRegistry struct {
	*testregistry.Registry
	host       string
	user, pass string
	plain      bool
}

// startRealRegistry runs Debian's docker-registry with TLS and htpasswd on ip (a loopback
// address other than 127.0.0.1, which go-containerregistry would talk plain HTTP to).
func startRealRegistry(t testing.TB, ip string) *realRegistry {
	return startRegistryProcess(t, ip, true)
}

// startRegistryProcess runs docker-registry, with TLS + htpasswd when secure, else plain
// HTTP without auth (then ip should be 127.0.0.1).
func startRegistryProcess(t testing.TB, ip string, secure bool) *realRegistry {
	t.Helper()
	needTool(t, "docker-registry", "docker-registry")
	r := &realRegistry{plain: !secure}
	opts := testregistry.Options{Dir: t.TempDir(), Host: ip}
	if secure {
		r.user, r.pass = "podvirt", "s3cret-"+fmt.Sprint(time.Now().UnixNano())
		opts.TLS, opts.Users = true, map[string]string{r.user: r.pass}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	reg, err := testregistry.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(reg.Kill)
	r.Registry, r.host = reg, reg.Addr
	return r
}

func (r *realRegistry) pushOpts() []remote.Option {
	if r.plain {
		return nil
	}
	return []remote.Option{remote.WithAuth(&authn.Basic{Username: r.user, Password: r.pass}), remote.WithTransport(r.Transport())}
}

func (r *realRegistry) source(repo string) Source {
	if r.plain {
		return Source{AllowPrivate: true, URL: "docker://" + r.host + "/" + repo}
	}
	return Source{AllowPrivate: true, URL: "docker://" + r.host + "/" + repo, Username: r.user, Password: r.pass, CACertsPEM: r.CACertPEM}
}

// refused asserts err is an image refusal for reason and terminal.
func refused(t testing.TB, err error, reason image.Reason) {
	t.Helper()
	if err == nil {
		t.Fatalf("import succeeded; want a refusal (%s)", reason)
	}
	var ie *image.Error
	ok := errors.As(err, &ie)
	if !ok {
		var target *image.Error
		if !asImageError(err, &target) {
			t.Fatalf("error is not an image refusal: %v", err)
		}
		ie = target
	}
	if ie.Reason != reason {
		t.Fatalf("refused for %s, want %s: %v", ie.Reason, reason, err)
	}
	if !IsTerminal(err) {
		t.Fatalf("refusal %v is not terminal", err)
	}
	if ie.Hint == "" || ie.Detail == "" {
		t.Fatalf("refusal lacks detail or hint: %v", err)
	}
}

func asImageError(err error, target **image.Error) bool { return errors.As(err, target) }

func nilLogger() *log.Logger { return log.New(io.Discard, "", 0) }

func pemOf(der []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}) }

// guestContainerDisk is the real test guest (built once into the shared cache) as
// test/images/guest packs it into its containerDisk image; and the disk itself.
func guestContainerDisk(t testing.TB) (v1.Image, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatalf("test guest: %v", err)
	}
	img, err := guest.ContainerDisk(art)
	if err != nil {
		t.Fatal(err)
	}
	return img, art.Disk
}

// makeRandomQCOW2 creates a qcow2 whose first dataMiB MiB are random (incompressible),
// from a raw file converted by qemu-img.
func makeRandomQCOW2(t testing.TB, dir, file string, dataMiB int, virtual string) string {
	t.Helper()
	needTool(t, "qemu-img", "qemu-utils")
	raw := filepath.Join(dir, file+".raw")
	f, err := os.Create(raw)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, int64(dataMiB)<<20); err != nil {
		t.Fatal(err)
	}
	f.Close()
	p := filepath.Join(dir, file)
	run(t, "qemu-img", "convert", "-q", "-f", "raw", "-O", "qcow2", raw, p)
	run(t, "qemu-img", "resize", "-q", "-f", "qcow2", p, virtual)
	os.Remove(raw)
	return p
}
