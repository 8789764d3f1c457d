package driver

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/volume"
)

// testRegistry is an in-process OCI registry (go-containerregistry) that
// counts blob downloads and can hold them until released.
type testRegistry struct {
	srv       *httptest.Server
	host      string
	blobGets  atomic.Int64
	mu        sync.Mutex
	gate      chan struct{} // blob GETs wait on it when set
	blobsSeen chan struct{} // gets a value per held blob GET
	opts      registryOptions
}

// registryOptions make a registry harder to reach: TLS (its CA is then
// needed), basic auth, a slow link.
type registryOptions struct {
	tls                bool
	username, password string
	bytesPerSecond     int
}

func startRegistry(t testing.TB) *testRegistry { return startRegistryWith(t, registryOptions{}) }

func startRegistryWith(t testing.TB, o registryOptions) *testRegistry {
	t.Helper()
	r := &testRegistry{blobsSeen: make(chan struct{}, 100), opts: o}
	reg := registry.New(registry.Logger(log.New(io.Discard, "", 0)))
	h := http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if o.username != "" {
			if u, p, ok := req.BasicAuth(); !ok || u != o.username || p != o.password {
				w.Header().Set("WWW-Authenticate", `Basic realm="test"`)
				http.Error(w, "unauthorized", http.StatusUnauthorized)
				return
			}
		}
		if req.Method == http.MethodGet && strings.Contains(req.URL.Path, "/blobs/sha256:") {
			r.blobGets.Add(1)
			r.mu.Lock()
			gate := r.gate
			r.mu.Unlock()
			if gate != nil {
				r.blobsSeen <- struct{}{}
				select {
				case <-gate:
				case <-req.Context().Done():
					return
				}
			}
			if o.bytesPerSecond > 0 {
				w = &slowWriter{ResponseWriter: w, rate: o.bytesPerSecond}
			}
		}
		reg.ServeHTTP(w, req)
	})
	if o.tls {
		r.srv = httptest.NewTLSServer(h)
	} else {
		r.srv = httptest.NewServer(h)
	}
	t.Cleanup(r.srv.Close)
	u, _ := url.Parse(r.srv.URL)
	r.host = u.Host
	return r
}

// slowWriter paces a response to rate bytes per second, like a slow link.
type slowWriter struct {
	http.ResponseWriter
	rate int
}

func (w *slowWriter) Write(p []byte) (int, error) {
	written := 0
	for len(p) > 0 {
		n := min(len(p), w.rate/10)
		m, err := w.ResponseWriter.Write(p[:n])
		written += m
		if err != nil {
			return written, err
		}
		if f, ok := w.ResponseWriter.(http.Flusher); ok {
			f.Flush()
		}
		p = p[n:]
		time.Sleep(100 * time.Millisecond)
	}
	return written, nil
}

// hold makes blob downloads wait until the returned func is called.
func (r *testRegistry) hold() (release func()) {
	gate := make(chan struct{})
	r.mu.Lock()
	r.gate = gate
	r.mu.Unlock()
	var once sync.Once
	return func() {
		once.Do(func() {
			r.mu.Lock()
			r.gate = nil
			r.mu.Unlock()
			close(gate)
		})
	}
}

// pushContainerDisk pushes a containerDisk (one layer, /disk/disk.qcow2)
// holding a qcow2 of virtual size vsize with 0x5a in its first MiB, and
// returns its docker:// source.
func (r *testRegistry) pushContainerDisk(t testing.TB, repo string, vsize int64) string {
	return r.pushContainerDiskOf(t, repo, makeQCOW2(t, vsize))
}

// pushContainerDiskOf pushes the qcow2 file img as a containerDisk.
func (r *testRegistry) pushContainerDiskOf(t testing.TB, repo, img string) string {
	t.Helper()
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, h := range []*tar.Header{
		{Name: "disk/", Typeflag: tar.TypeDir, Mode: 0o755},
		{Name: "disk/disk.qcow2", Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(data))},
	} {
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := tw.Write(data); err != nil {
		t.Fatal(err)
	}
	tw.Close()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(buf.Bytes())), nil })
	if err != nil {
		t.Fatal(err)
	}
	image, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(r.host+"/"+repo+":1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{remote.WithTransport(r.srv.Client().Transport)}
	if r.opts.username != "" {
		opts = append(opts, remote.WithAuth(&authn.Basic{Username: r.opts.username, Password: r.opts.password}))
	}
	if err := remote.Write(ref, image, opts...); err != nil {
		t.Fatal(err)
	}
	return "docker://" + r.host + "/" + repo + ":1"
}

// makeRandomQCOW2 makes a qcow2 whose first n bytes are random, so its
// layer does not compress and takes time to download.
func makeRandomQCOW2(t testing.TB, vsize int64, n int) string {
	t.Helper()
	dir := t.TempDir()
	raw := filepath.Join(dir, "disk.raw")
	data := make([]byte, n)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(raw, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(raw, vsize); err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command(volume.QemuImg, "convert", "-f", "raw", "-O", "qcow2", raw, p).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	return p
}

func makeQCOW2(t testing.TB, vsize int64) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "disk.qcow2")
	for _, args := range [][]string{
		{volume.QemuImg, "create", "-q", "-f", "qcow2", p, fmt.Sprint(vsize)},
		{"qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", p},
	} {
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%v: %v: %s (run 'make deps' if a tool is missing)", args, err, out)
		}
	}
	return p
}

// startImportDriver starts a driver with a real image cache in its state
// directory.
func startImportDriver(t testing.TB, opts Options) *testDriver {
	t.Helper()
	stateDir := filepath.Join(t.TempDir(), "state")
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	cache, err := importer.NewCache(filepath.Join(stateDir, "cache"), 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	opts.Cache = cache
	if opts.ProgressInterval == 0 {
		opts.ProgressInterval = 50 * time.Millisecond
	}
	return startDriver(t, stateDir, opts)
}

func sourceParams(reg *testRegistry, source string, extra ...string) map[string]string {
	// The test registry listens on loopback, which imports reach only when opted in.
	p := map[string]string{ParamSource: source, ParamInsecureRegistries: reg.host, ParamAllowPrivateSources: "true"}
	for i := 0; i+1 < len(extra); i += 2 {
		p[extra[i]] = extra[i+1]
	}
	return p
}

type qemuInfo struct {
	VirtualSize     int64  `json:"virtual-size"`
	BackingFilename string `json:"backing-filename"`
	BackingFormat   string `json:"backing-filename-format"`
}

func diskInfo(t *testing.T, dir, format string) qemuInfo {
	t.Helper()
	out, err := exec.Command(volume.QemuImg, "info", "-U", "--output=json", "-f", format, filepath.Join(dir, volume.DiskName)).Output()
	if err != nil {
		t.Fatal(err)
	}
	var i qemuInfo
	if err := json.Unmarshal(out, &i); err != nil {
		t.Fatal(err)
	}
	return i
}

func TestImportOverlayCopyAndBlock(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	src := reg.pushContainerDisk(t, "guest", 16<<20)
	td := startImportDriver(t, Options{})

	// overlay (the default), grown from 16 MiB to the claim's 64 MiB.
	ov, err := td.controller().CreateVolume(ctx, createReq("pvc-overlay", 64<<20, false, sourceParams(reg, src)))
	if err != nil {
		t.Fatal(err)
	}
	if ov.Volume.CapacityBytes != 64<<20 || ov.Volume.VolumeContext["source"] != src {
		t.Errorf("overlay volume %v: want 64 MiB from %s", ov.Volume, src)
	}
	dir := td.VolumeDir(ov.Volume.VolumeId)
	m, err := diskmeta.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Format != "qcow2" || m.BaseFormat != "qcow2" || !strings.HasPrefix(m.Digest, "sha256:") || m.Source != src {
		t.Errorf("overlay meta %+v", m)
	}
	if i := diskInfo(t, dir, "qcow2"); i.BackingFilename != volume.BaseName || i.BackingFormat != "qcow2" || i.VirtualSize != 64<<20 {
		t.Errorf("overlay disk %+v: want relative backing %s (qcow2), 64 MiB", i, volume.BaseName)
	}
	// base.img is the cache's file (hard link): O(1), no copy.
	var st syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, volume.BaseName), &st); err != nil {
		t.Fatal(err)
	}
	if st.Nlink < 2 {
		t.Errorf("base.img has %d links: not shared with the cache", st.Nlink)
	}
	gets := reg.blobGets.Load()

	// A snapshot of the overlay, restored: nothing copied; the volume and
	// the restored one are overlays on the frozen layer, on the same base.
	snap, err := td.controller().CreateSnapshot(ctx, &csi.CreateSnapshotRequest{Name: "snap-overlay", SourceVolumeId: ov.Volume.VolumeId})
	if err != nil {
		t.Fatal(err)
	}
	restoreReq := createReq("pvc-restored", 64<<20, false, nil)
	restoreReq.VolumeContentSource = &csi.VolumeContentSource{Type: &csi.VolumeContentSource_Snapshot{Snapshot: &csi.VolumeContentSource_SnapshotSource{SnapshotId: snap.Snapshot.SnapshotId}}}
	restored, err := td.controller().CreateVolume(ctx, restoreReq)
	if err != nil {
		t.Fatal(err)
	}
	// Its PV says which image it is an overlay on, as the import's does,
	// so a live migration makes the same base present on the target.
	if rc, oc := restored.Volume.VolumeContext, ov.Volume.VolumeContext; rc[v1.VolumeContextDigest] != oc[v1.VolumeContextDigest] || rc[v1.VolumeContextOverlay] != "true" || oc[v1.VolumeContextOverlay] != "true" {
		t.Errorf("restored volume's context %v; want the overlay's digest (%v) and overlay", rc, oc)
	}
	rdir := td.VolumeDir(restored.Volume.VolumeId)
	layer := diskmeta.LayerName(snap.Snapshot.SnapshotId)
	for _, d := range []string{dir, rdir} {
		if i := diskInfo(t, d, "qcow2"); i.BackingFilename != layer || i.VirtualSize != 64<<20 {
			t.Errorf("disk in %s after the snapshot %+v: want an overlay on %s", d, i, layer)
		}
	}
	var lst, rlst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(dir, layer), &lst); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Stat(filepath.Join(rdir, layer), &rlst); err != nil {
		t.Fatal(err)
	}
	if lst.Ino != rlst.Ino || lst.Nlink != 3 {
		t.Errorf("layer inodes %d, %d with %d links: the snapshot was copied, not shared by the volume, snapshot and restored volume", lst.Ino, rlst.Ino, lst.Nlink)
	}
	var rst syscall.Stat_t
	if err := syscall.Stat(filepath.Join(rdir, volume.BaseName), &rst); err != nil {
		t.Fatal(err)
	}
	if rst.Ino != st.Ino {
		t.Error("the restored overlay does not share the cached base")
	}
	if out, err := exec.Command(volume.QemuImg, "compare", "-f", "qcow2", "-F", "qcow2", filepath.Join(dir, volume.DiskName), filepath.Join(rdir, volume.DiskName)).CombinedOutput(); err != nil {
		t.Errorf("restored disk differs from its source: %v: %s", err, out)
	}
	if _, err := td.controller().DeleteSnapshot(ctx, &csi.DeleteSnapshotRequest{SnapshotId: snap.Snapshot.SnapshotId}); err != nil {
		t.Fatal(err)
	}

	// copy: an independent disk; the image comes from the cache.
	cp, err := td.controller().CreateVolume(ctx, createReq("pvc-copy", 32<<20, false, sourceParams(reg, src, ParamCloneStrategy, CloneCopy, ParamFormat, "raw")))
	if err != nil {
		t.Fatal(err)
	}
	cdir := td.VolumeDir(cp.Volume.VolumeId)
	if m, _ := diskmeta.Read(cdir); m.Format != "raw" || m.HasBase() {
		t.Errorf("copy meta %+v: want raw without base", m)
	}
	if i := diskInfo(t, cdir, "raw"); i.VirtualSize != 32<<20 || i.BackingFilename != "" {
		t.Errorf("copy disk %+v", i)
	}
	b := make([]byte, 4)
	f, err := os.Open(filepath.Join(cdir, volume.DiskName))
	if err != nil {
		t.Fatal(err)
	}
	f.ReadAt(b, 0)
	f.Close()
	if !bytes.Equal(b, []byte{0x5a, 0x5a, 0x5a, 0x5a}) {
		t.Errorf("copy starts with %x, want the image's 5a5a5a5a", b)
	}

	// Block: a raw copy, staged as a loop device.
	blk, err := td.controller().CreateVolume(ctx, createReq("pvc-block", 16<<20, true, sourceParams(reg, src)))
	if err != nil {
		t.Fatal(err)
	}
	if m, _ := diskmeta.Read(td.VolumeDir(blk.Volume.VolumeId)); m.Format != "raw" {
		t.Errorf("block meta %+v: want raw", m)
	}
	if got := reg.blobGets.Load(); got != gets {
		t.Errorf("the cached image was downloaded again: %d blob GETs, want %d", got, gets)
	}
	for _, v := range []*csi.Volume{ov.Volume, cp.Volume, blk.Volume, restored.Volume} {
		if _, err := td.controller().DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: v.VolumeId}); err != nil {
			t.Fatal(err)
		}
	}
}

func TestImportTooLargeIsFinalAndRemembered(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	src := reg.pushContainerDisk(t, "big", 64<<20)
	td := startImportDriver(t, Options{})
	req := createReq("pvc-small", 16<<20, false, sourceParams(reg, src))
	_, err := td.controller().CreateVolume(ctx, req)
	// Refused from the qcow2 header, before the rest is downloaded.
	if status.Code(err) != codes.InvalidArgument || !strings.Contains(err.Error(), "request at least 64.0 MiB") {
		t.Fatalf("CreateVolume of a 64 MiB image into 16 MiB: %v, want InvalidArgument asking for 64 MiB", err)
	}
	gets := reg.blobGets.Load()
	_, err2 := td.controller().CreateVolume(ctx, req)
	if status.Code(err2) != codes.InvalidArgument || status.Convert(err2).Message() != status.Convert(err).Message() {
		t.Errorf("retry: %v, want the same error as %v", err2, err)
	}
	// Answered from memory: no blob fetched again. (Counted, not timed:
	// a loaded machine must not fail this.)
	if n := reg.blobGets.Load() - gets; n != 0 {
		t.Errorf("retry fetched %d blobs again, want 0", n)
	}
	if left, _ := os.ReadDir(filepath.Join(td.dir, "volumes")); len(left) != 0 {
		t.Errorf("a refused volume left %v", left)
	}
}

func TestImportTerminalFailureIsRemembered(t *testing.T) {
	ctx := context.Background()
	reg := startRegistry(t)
	td := startImportDriver(t, Options{})
	missing := "docker://" + reg.host + "/nothing:1"
	req := createReq("pvc-missing", 16<<20, false, sourceParams(reg, missing))
	_, err := td.controller().CreateVolume(ctx, req)
	if status.Code(err) != codes.FailedPrecondition {
		t.Fatalf("CreateVolume of a missing image: %v, want FailedPrecondition (final)", err)
	}
	requests := reg.blobGets.Load()
	_, err2 := td.controller().CreateVolume(ctx, req)
	if status.Code(err2) != codes.FailedPrecondition || status.Convert(err2).Message() != status.Convert(err).Message() {
		t.Errorf("retry: %v, want %v", err2, err)
	}
	if reg.blobGets.Load() != requests {
		t.Error("retry contacted the registry again")
	}
	// Remembered across a restart too.
	td.stop()
	cache, err := importer.NewCache(filepath.Join(td.dir, "cache"), 1<<30, nil)
	if err != nil {
		t.Fatal(err)
	}
	td2 := startDriver(t, td.dir, Options{Cache: cache})
	if _, err3 := td2.controller().CreateVolume(ctx, req); status.Code(err3) != codes.FailedPrecondition {
		t.Errorf("after restart: %v, want the remembered FailedPrecondition", err3)
	}
	// A new source for the same name is tried afresh.
	good := reg.pushContainerDisk(t, "good", 8<<20)
	req.Parameters = sourceParams(reg, good)
	if _, err := td2.controller().CreateVolume(ctx, req); err != nil {
		t.Errorf("CreateVolume with a corrected source: %v", err)
	}
}

// TestConcurrentCreateJoinsTheImport times out the first CreateVolume in the
// middle of the download (as the provisioner does), calls again twice at
// once, and checks all of them end with one volume from one download.
func TestConcurrentCreateJoinsTheImport(t *testing.T) {
	reg := startRegistry(t)
	src := reg.pushContainerDisk(t, "slow", 16<<20)
	td := startImportDriver(t, Options{})
	release := reg.hold()
	defer release()
	req := createReq("pvc-slow", 32<<20, false, sourceParams(reg, src))

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	short, cancelShort := context.WithCancel(ctx)
	firstDone := make(chan error, 1)
	go func() {
		_, err := td.controller().CreateVolume(short, req)
		firstDone <- err
	}()
	select {
	case <-reg.blobsSeen: // the download has started and is held
	case <-ctx.Done():
		t.Fatal("the import never reached the registry's blobs")
	}
	cancelShort()
	if err := <-firstDone; status.Code(err) != codes.Canceled && status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("first CreateVolume: %v, want it cut off by its caller", err)
	}
	// The creation goes on without its caller.
	td.opsMu.Lock()
	inFlight := td.creating[objectID("vol-", "pvc-slow")] != nil
	td.opsMu.Unlock()
	if !inFlight {
		t.Fatal("the creation stopped when its first caller gave up")
	}
	results := make(chan *csi.CreateVolumeResponse, 2)
	errs := make(chan error, 2)
	for range 2 {
		go func() {
			resp, err := td.controller().CreateVolume(ctx, req)
			results <- resp
			errs <- err
		}()
	}
	select {
	case <-results:
		t.Fatal("a CreateVolume returned while the import is held")
	case <-time.After(200 * time.Millisecond):
	}
	release()
	var ids []string
	for range 2 {
		resp, err := <-results, <-errs
		if err != nil {
			t.Fatalf("joined CreateVolume: %v", err)
		}
		ids = append(ids, resp.Volume.VolumeId)
	}
	if ids[0] != ids[1] {
		t.Errorf("two volumes %v for one name", ids)
	}
	if n := reg.blobGets.Load(); n != 1 {
		t.Errorf("%d blob downloads, want the layer once: the import ran more than once", n)
	}
}

func TestImportHTTP(t *testing.T) {
	ctx := context.Background()
	img := makeQCOW2(t, 8<<20)
	srv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(img))))
	t.Cleanup(srv.Close)
	td := startImportDriver(t, Options{})
	params := map[string]string{ParamSource: srv.URL + "/disk.qcow2", ParamInsecureRegistries: strings.TrimPrefix(srv.URL, "http://"), ParamAllowPrivateSources: "true"}
	v, err := td.controller().CreateVolume(ctx, createReq("pvc-http", 8<<20, false, params))
	if err != nil {
		t.Fatal(err)
	}
	if i := diskInfo(t, td.VolumeDir(v.Volume.VolumeId), "qcow2"); i.BackingFilename != volume.BaseName {
		t.Errorf("HTTP import: %+v, want an overlay", i)
	}
}

// TestKilledMidImport kills the driver process (SIGKILL) while an import is
// downloading and starts a new process on the same state directory:
// CreateVolume then completes with a sound disk, and nothing half-made is
// left.
func TestKilledMidImport(t *testing.T) {
	requireTools(t)
	reg := startRegistry(t)
	src := reg.pushContainerDiskOf(t, "restart", makeRandomQCOW2(t, 16<<20, 2<<20))
	stateDir := filepath.Join(t.TempDir(), "state")
	t.Cleanup(func() { cleanupMountsAndLoops(t, stateDir) })
	release := reg.hold()
	defer release()
	req := createReq("pvc-restart", 16<<20, false, sourceParams(reg, src))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	first := startChildDriver(t, stateDir)
	done := make(chan error, 1)
	go func() {
		_, err := csi.NewControllerClient(first.conn).CreateVolume(ctx, req)
		done <- err
	}()
	select {
	case <-reg.blobsSeen:
	case <-ctx.Done():
		t.Fatal("the import never reached the registry's blobs")
	}
	first.kill(t)
	if err := <-done; err == nil {
		t.Fatal("CreateVolume succeeded although the driver was killed mid-import")
	}
	release()

	second := startChildDriver(t, stateDir)
	resp, err := csi.NewControllerClient(second.conn).CreateVolume(ctx, req)
	if err != nil {
		t.Fatalf("CreateVolume after the restart: %v", err)
	}
	dir := filepath.Join(stateDir, "volumes", resp.Volume.VolumeId)
	if out, err := exec.Command(volume.QemuImg, "check", "-f", "qcow2", filepath.Join(dir, volume.DiskName)).CombinedOutput(); err != nil {
		t.Errorf("qemu-img check of the volume: %v: %s", err, out)
	}
	entries, _ := os.ReadDir(filepath.Join(stateDir, "volumes"))
	if len(entries) != 1 || entries[0].Name() != resp.Volume.VolumeId {
		t.Errorf("volume directories %v, want only %s", entries, resp.Volume.VolumeId)
	}
	if _, err := csi.NewControllerClient(second.conn).DeleteVolume(ctx, &csi.DeleteVolumeRequest{VolumeId: resp.Volume.VolumeId}); err != nil {
		t.Fatal(err)
	}
}
