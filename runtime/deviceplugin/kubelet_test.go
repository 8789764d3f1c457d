package deviceplugin

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apiresource "k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/testlog"
	"github.com/podvirt/podvirt/test/env/cluster"
)

// kubeletConfig is this package's own cluster, which runs beside the
// others on the machine (its own name, addresses and ports, no kube-proxy).
func kubeletConfig(t *testing.T, dir string) cluster.Config {
	return cluster.Config{
		Name:          "pvplumb",
		Dir:           dir,
		NodeIP:        net.IPv4(10, 250, 3, 1),
		PodSubnet:     "10.244.3.0/24",
		ServiceSubnet: "10.0.3.0/24",
		BasePort:      8543,
		KubeProxy:     false,
		Progress:      testlog.Writer(t),
	}
}

// registrations counts the plugins' "registered with the kubelet" log
// lines per resource, passing every line on to the test log.
type registrations struct {
	t  *testing.T
	mu sync.Mutex
	n  map[string]int
}

func (r *registrations) log(prefix, args string) {
	r.t.Log(prefix, args)
	if !strings.Contains(args, `"registered with the kubelet"`) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, name := range []string{v1.KVMDevice, v1.TunDevice, v1.VhostNetDevice} {
		if strings.Contains(args, `"`+name+`"`) {
			r.n[name]++
		}
	}
}

func (r *registrations) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.n[name]
}

// TestKubelet runs Serve against a real kubelet: the node advertises the
// three resources (allocatable only where the device works on this host),
// an unprivileged pod asking for devices.podvirt.io/tun gets /dev/net/tun
// and one that does not ask does not, and after the kubelet restarts the
// plugins register again and pods get the device again.
//
// The kubelet hard-codes its device-plugins directory (DefaultDir); the
// local cluster gives each node its own copy of it (DevicePluginDir), so
// this test runs beside any other cluster on the machine.
func TestKubelet(t *testing.T) {
	requireRoot(t)
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	dir, err := os.MkdirTemp("", "podvirt-pvplumb-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	c, err := cluster.New(kubeletConfig(t, dir))
	if err != nil {
		t.Fatal(err) // names `make deps` when a binary is missing
	}
	t.Cleanup(func() {
		if err := c.Down(context.Background()); err != nil {
			t.Errorf("cluster down: %v", err)
		}
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.ImportProbe(ctx); err != nil {
		t.Fatal(err)
	}
	restCfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		t.Fatal(err)
	}

	// Not under the cluster's --root-dir: the kubelet's device manager
	// always listens in DefaultDir, which is this directory in the node's
	// mount namespace. This test serves from the host.
	pluginDir := c.DevicePluginDir()
	regs := &registrations{t: t, n: map[string]int{}}
	serveCtx, stopServe := context.WithCancel(ctx)
	served := make(chan error, 1)
	go func() { served <- Serve(serveCtx, pluginDir, funcr.New(regs.log, funcr.Options{})) }()
	serveStopped := false
	stop := func() {
		if serveStopped {
			return
		}
		serveStopped = true
		stopServe()
		select {
		case err := <-served:
			if err != nil {
				t.Errorf("Serve: %v", err)
			}
		case <-time.After(30 * time.Second):
			t.Error("Serve did not return within 30s of its context ending")
		}
	}
	t.Cleanup(stop) // before Down: cleanups run last-in first-out

	// What this host can give: the same checks the plugins run.
	want := map[corev1.ResourceName]int64{}
	for _, r := range defaultResources() {
		want[corev1.ResourceName(r.name)] = 0
		if err := r.check(); err == nil {
			want[corev1.ResourceName(r.name)] = DevicesPerResource
		} else {
			t.Logf("%s is not usable here, so its allocatable must be 0: %v", r.name, err)
		}
	}
	if want[v1.TunDevice] == 0 {
		t.Fatal("/dev/net/tun is missing on this host: the tun pod below cannot be tested")
	}
	waitNode(ctx, t, cs, c.NodeName(), "the three resources advertised", func(n *corev1.Node) error {
		return checkResources(n, want)
	})

	tunPod := func(name string) *corev1.Pod {
		pod := unprivileged(cluster.ProbePod(name, nil))
		pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{v1.TunDevice: apiresource.MustParse("1")}
		return pod
	}
	runProbe(ctx, t, c, tunPod("with-tun"), "device /dev/net/tun: char 10:200 open rw ok")
	runProbe(ctx, t, c, unprivileged(cluster.ProbePod("without-tun", nil)), "device /dev/net/tun: missing")

	// Restart the kubelet: it wipes the device-plugins directory and
	// forgets the plugins until they register again.
	before := regs.count(v1.TunDevice)
	restarted := restartKubelet(ctx, t, c, dir)
	waitNode(ctx, t, cs, c.NodeName(), "a status from the restarted kubelet with the resources back", func(n *corev1.Node) error {
		if hb := readyHeartbeat(n); hb.Before(restarted) {
			return fmt.Errorf("last heartbeat %s is from the old kubelet (restarted %s)", hb, restarted)
		}
		return checkResources(n, want)
	})
	for _, name := range []string{v1.KVMDevice, v1.TunDevice, v1.VhostNetDevice} {
		if regs.count(name) < 2 {
			t.Errorf("%s registered %d times, want again after the kubelet restart", name, regs.count(name))
		}
	}
	if regs.count(v1.TunDevice) <= before {
		t.Errorf("%s did not register again after the kubelet restart", v1.TunDevice)
	}
	runProbe(ctx, t, c, tunPod("with-tun-again"), "device /dev/net/tun: char 10:200 open rw ok")

	// Stopping the plugins removes their sockets; the kubelet then has no
	// healthy devices left to give.
	stop()
	for _, r := range defaultResources() {
		if _, err := os.Stat(filepath.Join(pluginDir, r.socketName())); !os.IsNotExist(err) {
			t.Errorf("socket %s left after Serve returned (stat: %v)", r.socketName(), err)
		}
	}
	gone := map[corev1.ResourceName]int64{}
	for name := range want {
		gone[name] = 0
	}
	waitNode(ctx, t, cs, c.NodeName(), "allocatable 0 once the plugins are gone", func(n *corev1.Node) error {
		for name := range gone {
			if q := n.Status.Allocatable[name]; q.Value() != 0 {
				return fmt.Errorf("allocatable %s is %s", name, q.String())
			}
		}
		return nil
	})
}

// unprivileged drops every capability and privilege from pod's container.
func unprivileged(pod *corev1.Pod) *corev1.Pod {
	pod.Spec.Containers[0].Env = append(pod.Spec.Containers[0].Env, corev1.EnvVar{Name: "PROBE_DEVICES", Value: "/dev/net/tun"})
	pod.Spec.Containers[0].SecurityContext = &corev1.SecurityContext{
		Privileged:               new(false),
		AllowPrivilegeEscalation: new(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
	}
	return pod
}

func runProbe(ctx context.Context, t *testing.T, c *cluster.Cluster, pod *corev1.Pod, wantLine string) {
	t.Helper()
	_, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
	if err != nil {
		t.Fatalf("pod %s: %v", pod.Name, err)
	}
	if !strings.Contains(logs, wantLine) {
		t.Errorf("pod %s: log lacks %q:\n%s", pod.Name, wantLine, logs)
	}
}

func checkResources(n *corev1.Node, want map[corev1.ResourceName]int64) error {
	for name, alloc := range want {
		capacity, ok := n.Status.Capacity[name]
		if !ok || capacity.Value() != DevicesPerResource {
			return fmt.Errorf("capacity %s is %q, want %d", name, capacity.String(), DevicesPerResource)
		}
		if a := n.Status.Allocatable[name]; a.Value() != alloc {
			return fmt.Errorf("allocatable %s is %q, want %d", name, a.String(), alloc)
		}
	}
	return nil
}

func readyHeartbeat(n *corev1.Node) time.Time {
	for _, cond := range n.Status.Conditions {
		if cond.Type == corev1.NodeReady {
			return cond.LastHeartbeatTime.Time
		}
	}
	return time.Time{}
}

// waitNode polls the node until cond accepts it, for up to two minutes.
func waitNode(ctx context.Context, t *testing.T, cs kubernetes.Interface, name, what string, cond func(*corev1.Node) error) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	var last error
	for time.Now().Before(deadline) {
		n, err := cs.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			if last = cond(n); last == nil {
				return
			}
		} else {
			last = err
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("node %s: %s: not within 2m: %v", name, what, last)
}

// restartKubelet stops the cluster's kubelet (by its recorded pid) and
// starts it again with Up, which starts what is not running. It returns
// the first whole second after the old kubelet was gone.
func restartKubelet(ctx context.Context, t *testing.T, c *cluster.Cluster, dir string) time.Time {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "pids", "kubelet.pid"))
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatalf("stopping the kubelet (pid %d): %v", pid, err)
	}
	deadline := time.Now().Add(time.Minute)
	for {
		// Gone, or a zombie (this test process started it): no exe link.
		if _, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("kubelet (pid %d) still running a minute after SIGTERM", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
	gone := time.Now().Truncate(time.Second).Add(time.Second)
	if err := c.Up(ctx); err != nil {
		t.Fatalf("starting the kubelet again: %v", err)
	}
	return gone
}
