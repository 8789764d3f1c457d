package deviceplugin

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// registry plays the kubelet's side of registration: the real
// Registration gRPC service on <dir>/kubelet.sock, recording requests.
type registry struct {
	pluginapi.UnimplementedRegistrationServer
	server *grpc.Server

	mu   sync.Mutex
	reqs []*pluginapi.RegisterRequest
	got  chan struct{} // closed and replaced on each Register
}

func startRegistry(t *testing.T, dir string) *registry {
	t.Helper()
	lis, err := net.Listen("unix", filepath.Join(dir, KubeletSocketName))
	if err != nil {
		t.Fatal(err)
	}
	r := &registry{server: grpc.NewServer(), got: make(chan struct{})}
	pluginapi.RegisterRegistrationServer(r.server, r)
	go func() { _ = r.server.Serve(lis) }()
	t.Cleanup(r.server.Stop)
	return r
}

func (r *registry) Register(_ context.Context, req *pluginapi.RegisterRequest) (*pluginapi.Empty, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.reqs = append(r.reqs, req)
	close(r.got)
	r.got = make(chan struct{})
	return &pluginapi.Empty{}, nil
}

// waitRegistered waits until the registry holds a request for each of
// resources and returns them by resource name.
func (r *registry) waitRegistered(t *testing.T, resources ...string) map[string]*pluginapi.RegisterRequest {
	t.Helper()
	deadline := time.After(20 * time.Second)
	for {
		r.mu.Lock()
		byName := map[string]*pluginapi.RegisterRequest{}
		for _, req := range r.reqs {
			byName[req.ResourceName] = req
		}
		got := r.got
		r.mu.Unlock()
		missing := ""
		for _, name := range resources {
			if byName[name] == nil {
				missing = name
			}
		}
		if missing == "" {
			return byName
		}
		select {
		case <-got:
		case <-deadline:
			t.Fatalf("no registration for %s within 20s (have %d requests)", missing, len(byName))
		}
	}
}

// testDevice makes a character device node (1:3, like /dev/null) at path.
func testDevice(t *testing.T, path string) {
	t.Helper()
	if err := unix.Mknod(path, unix.S_IFCHR|0o600, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatalf("mknod %s (needs root): %v", path, err)
	}
}

// startServe runs serve in the background with test resources backed by
// device nodes under devDir; the test waits for it to return on cleanup.
func startServe(t *testing.T, pluginDir string, resources []resource) context.CancelFunc {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- serve(ctx, config{
			pluginDir:      pluginDir,
			log:            testr.New(t),
			resources:      resources,
			healthInterval: 100 * time.Millisecond,
			retryInterval:  200 * time.Millisecond,
		})
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("serve: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Error("serve did not return within 20s of its context ending")
		}
	})
	return cancel
}

func testResources(devDir string) []resource {
	a, b := filepath.Join(devDir, "a"), filepath.Join(devDir, "b")
	return []resource{
		{name: "test.podvirt.io/a", hostPath: a, check: charDevice(a)},
		{name: "test.podvirt.io/b", hostPath: b, check: charDevice(b)},
	}
}

func dialPlugin(t *testing.T, socket string) pluginapi.DevicePluginClient {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+socket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return pluginapi.NewDevicePluginClient(conn)
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: makes device nodes and (TestKubelet) runs a kubelet; run the tests as root")
	}
}

// TestRegistrationAndDevices runs the plugins against a registration
// server played by the test: each resource registers, lists its devices
// with their health, follows a device node appearing and disappearing,
// and allocates the node read-write.
func TestRegistrationAndDevices(t *testing.T) {
	requireRoot(t)
	pluginDir, devDir := t.TempDir(), t.TempDir()
	testDevice(t, filepath.Join(devDir, "a")) // b is missing at first
	reg := startRegistry(t, pluginDir)
	cancel := startServe(t, pluginDir, testResources(devDir))

	reqs := reg.waitRegistered(t, "test.podvirt.io/a", "test.podvirt.io/b")
	for name, req := range reqs {
		if req.Version != pluginapi.Version {
			t.Errorf("%s registered with version %q, want %q", name, req.Version, pluginapi.Version)
		}
		if filepath.Base(req.Endpoint) != req.Endpoint {
			t.Errorf("%s endpoint %q is not a name in the device-plugins dir", name, req.Endpoint)
		}
		if _, err := os.Stat(filepath.Join(pluginDir, req.Endpoint)); err != nil {
			t.Errorf("%s endpoint: %v", name, err)
		}
	}

	a := dialPlugin(t, filepath.Join(pluginDir, reqs["test.podvirt.io/a"].Endpoint))
	b := dialPlugin(t, filepath.Join(pluginDir, reqs["test.podvirt.io/b"].Endpoint))
	ctx, stop := context.WithTimeout(context.Background(), time.Minute)
	defer stop()

	streamA, err := a.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	expectDevices(t, streamA, pluginapi.Healthy)
	streamB, err := b.ListAndWatch(ctx, &pluginapi.Empty{})
	if err != nil {
		t.Fatal(err)
	}
	expectDevices(t, streamB, pluginapi.Unhealthy)

	// b's node appears: its devices turn healthy; a's goes: unhealthy.
	testDevice(t, filepath.Join(devDir, "b"))
	expectDevices(t, streamB, pluginapi.Healthy)
	if err := os.Remove(filepath.Join(devDir, "a")); err != nil {
		t.Fatal(err)
	}
	expectDevices(t, streamA, pluginapi.Unhealthy)

	resp, err := b.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{
		{DevicesIds: []string{"b-1"}}, {DevicesIds: []string{"b-2", "b-3"}},
	}})
	if err != nil {
		t.Fatalf("Allocate b: %v", err)
	}
	if len(resp.ContainerResponses) != 2 {
		t.Fatalf("Allocate b: %d container responses, want 2", len(resp.ContainerResponses))
	}
	for _, cr := range resp.ContainerResponses {
		want := filepath.Join(devDir, "b")
		if len(cr.Devices) != 1 || cr.Devices[0].HostPath != want || cr.Devices[0].ContainerPath != want || cr.Devices[0].Permissions != "rwm" {
			t.Errorf("Allocate b gave %v, want one rwm device %s", cr.Devices, want)
		}
	}
	if _, err := a.Allocate(ctx, &pluginapi.AllocateRequest{ContainerRequests: []*pluginapi.ContainerAllocateRequest{{DevicesIds: []string{"a-1"}}}}); status.Code(err) != codes.FailedPrecondition {
		t.Errorf("Allocate of a missing device node: %v, want FailedPrecondition", err)
	}

	// Stopping removes the sockets and ends the streams.
	cancel()
	for _, req := range reqs {
		waitGone(t, filepath.Join(pluginDir, req.Endpoint))
	}
	if _, err := streamA.Recv(); err == nil {
		t.Error("ListAndWatch stream still open after serve stopped")
	}
}

// expectDevices reads ListAndWatch updates until one has
// DevicesPerResource devices, all with health.
func expectDevices(t *testing.T, stream pluginapi.DevicePlugin_ListAndWatchClient, health string) {
	t.Helper()
	for {
		resp, err := stream.Recv()
		if err != nil {
			t.Fatalf("waiting for %d %s devices: %v", DevicesPerResource, health, err)
		}
		n := 0
		ids := map[string]bool{}
		for _, d := range resp.Devices {
			ids[d.ID] = true
			if d.Health == health {
				n++
			}
		}
		if len(ids) != DevicesPerResource {
			t.Fatalf("ListAndWatch: %d distinct devices, want %d", len(ids), DevicesPerResource)
		}
		if n == DevicesPerResource {
			return
		}
	}
}

func waitGone(t *testing.T, path string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(path); errors.Is(err, os.ErrNotExist) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still exists after 20s", path)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// TestKubeletRestart plays a kubelet that is not up when the plugins
// start, then one that restarts the way the real one does — wiping the
// directory and listening on a new kubelet.sock: the plugins register each
// time, on fresh sockets.
func TestKubeletRestart(t *testing.T) {
	requireRoot(t)
	pluginDir, devDir := t.TempDir(), t.TempDir()
	testDevice(t, filepath.Join(devDir, "a"))
	testDevice(t, filepath.Join(devDir, "b"))
	startServe(t, pluginDir, testResources(devDir))

	first := startRegistry(t, pluginDir)
	before := first.waitRegistered(t, "test.podvirt.io/a", "test.podvirt.io/b")
	first.server.Stop()

	entries, err := os.ReadDir(pluginDir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if err := os.Remove(filepath.Join(pluginDir, e.Name())); err != nil {
			t.Fatal(err)
		}
	}
	second := startRegistry(t, pluginDir)
	after := second.waitRegistered(t, "test.podvirt.io/a", "test.podvirt.io/b")
	for name, req := range after {
		if req.Endpoint != before[name].Endpoint {
			t.Errorf("%s came back on %q, was %q", name, req.Endpoint, before[name].Endpoint)
		}
		c := dialPlugin(t, filepath.Join(pluginDir, req.Endpoint))
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		if _, err := c.GetDevicePluginOptions(ctx, &pluginapi.Empty{}); err != nil {
			t.Errorf("%s after the kubelet restart: %v", name, err)
		}
		cancel()
	}
}
