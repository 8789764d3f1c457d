package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"

	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/internal/testlog"
)

// testConfig is a two-node cluster that can run beside a developer's `make
// up`: its own name, directory, ports and addresses, and no kube-proxy on
// the first node (which would fight the other cluster's over the KUBE-*
// iptables chains of the machine's network namespace); the second node
// runs its own in its own namespace.
func testConfig(t *testing.T) Config {
	dir, err := os.MkdirTemp("", "podvirt-cluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Config{
		Dir:           dir,
		Name:          "pvtest",
		Nodes:         2,
		NodeIP:        net.IPv4(10, 250, 1, 1),
		PodSubnet:     "10.245.0.0/23",
		ServiceSubnet: "10.0.1.0/24",
		BasePort:      7443,
		Progress:      testlog.Writer(t),
	}
}

// TestCluster brings a real two-node cluster up, runs pods on each real
// kubelet, reaches pods and a Service across nodes, resolves Services by
// name through the cluster DNS on both nodes, and reaches pods across nodes
// on a second interface through Multus on the shared L2 segment; powers
// the second node off and on; takes it all down and checks that nothing of
// it is left on the machine.
func TestCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the local cluster needs root (links, mounts, cgroups): run the tests as root")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := New(testConfig(t))
	if err != nil {
		t.Fatal(err)
	}
	netnsBefore := listDir("/run/netns")
	downDone := false
	t.Cleanup(func() {
		if !downDone {
			if err := c.Down(context.Background()); err != nil {
				t.Errorf("cleanup: %v", err)
			}
		}
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	// A second Up finds everything running and changes nothing.
	if err := c.Up(ctx); err != nil {
		t.Fatalf("second Up: %v", err)
	}
	if err := c.ImportProbe(ctx); err != nil {
		t.Fatal(err)
	}

	t.Run("PodRunsToCompletion", func(t *testing.T) {
		for _, n := range c.Nodes() {
			pod := ProbePod("probe-"+n.Name, nil)
			pod.Spec.NodeName = n.Name
			pod, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(logs, "podvirt-probe: hello from probe") {
				t.Errorf("node %s: pod log does not have the probe's marker:\n%s", n.Name, logs)
			}
			if !inSubnet(pod.Status.PodIP, n.PodSubnet) {
				t.Errorf("node %s: pod IP %q is not in the node's pod subnet %s", n.Name, pod.Status.PodIP, n.PodSubnet)
			}
		}
	})

	t.Run("AcrossNodes", func(t *testing.T) {
		testAcrossNodes(ctx, t, c)
	})

	t.Run("ClusterDNS", func(t *testing.T) {
		testClusterDNS(ctx, t, c)
	})

	t.Run("NodePathsOfItsOwn", func(t *testing.T) {
		// Each kubelet made its registration socket in what it sees as
		// /var/lib/kubelet/device-plugins: its node's own copy, never the
		// host's directory that every other cluster would share, nor
		// another node's.
		var sockets []os.FileInfo
		for _, n := range c.Nodes() {
			own := filepath.Join(n.DevicePluginDir, "kubelet.sock")
			polltest.Eventually(t, time.Minute, "node "+n.Name+"'s device-plugin socket is in the node's own directory", func() (bool, string) {
				_, err := os.Stat(own)
				return err == nil, fmt.Sprint(err)
			})
			sockets = append(sockets, stat(t, own))
			// Each node's kubelet root holds its own pods' directories.
			if _, err := os.Stat(filepath.Join(n.KubeletRootDir, "pods")); err != nil {
				t.Errorf("node %s: no pods directory in its own kubelet root %s: %v", n.Name, n.KubeletRootDir, err)
			}
		}
		if os.SameFile(sockets[0], sockets[1]) {
			t.Errorf("both nodes' kubelets registered the same device-plugin socket")
		}
		host := "/var/lib/kubelet/device-plugins/kubelet.sock"
		if b := statOrNil(host); b != nil && slices.ContainsFunc(sockets, func(a os.FileInfo) bool { return os.SameFile(a, b) }) {
			t.Errorf("%s on the host is a node's own socket: the bind mount leaked out of the node's mount namespace", host)
		}
		for _, np := range nodePaths {
			for _, mp := range mountsUnder(np.host) {
				t.Errorf("mount %s is visible on the host: node paths must stay in the node's mount namespace", mp)
			}
		}
		// The second node's copies are bound over the first's paths only
		// inside its own mount namespace.
		for _, dir := range nodeLocalDirs {
			if mounts := mountsAt(c.path(dir)); len(mounts) > 0 {
				t.Errorf("%s is a mount point on the host: another node's copy leaked out of its mount namespace", c.path(dir))
			}
		}
	})

	t.Run("MultusSecondInterfaceAcrossNodes", func(t *testing.T) {
		testMultusAcrossNodes(ctx, t, c)
	})

	t.Run("NodePowerLoss", func(t *testing.T) {
		testNodePowerLoss(ctx, t, c)
	})

	// A veth pair named after the cluster: Down removes both ends,
	// although deleting one takes the other.
	veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: c.NodeName() + "-v0"}, PeerName: c.NodeName() + "-v1"}
	if err := netlink.LinkAdd(veth); err != nil {
		t.Fatal(err)
	}
	if err := c.Down(ctx); err != nil {
		t.Fatal(err)
	}
	downDone = true
	if left := c.Leftovers(); len(left) > 0 {
		t.Errorf("after Down, still present: %v", left)
	}
	if _, err := os.Stat(c.cfg.Dir); !os.IsNotExist(err) {
		t.Errorf("state directory %s still exists after Down (err=%v)", c.cfg.Dir, err)
	}
	// Only containerd's names (cni-<id>): other tests on the machine make
	// their own namespaces there meanwhile.
	var leaked []string
	for _, name := range newEntries(netnsBefore, "/run/netns") {
		if strings.HasPrefix(name, "cni-") {
			leaked = append(leaked, name)
		}
	}
	if len(leaked) > 0 {
		t.Errorf("pod network namespaces left in /run/netns: %v", leaked)
	}
}

func stat(t *testing.T, path string) os.FileInfo {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi
}

func statOrNil(path string) os.FileInfo {
	fi, err := os.Stat(path)
	if err != nil {
		return nil
	}
	return fi
}

// serverPod starts a probe pod on node that serves TCP on port 8080 and
// waits until it listens.
func serverPod(ctx context.Context, t *testing.T, c *Cluster, name, node string, labels, annotations map[string]string) *corev1.Pod {
	t.Helper()
	pod := ProbePod(name, annotations)
	pod.Labels = labels
	pod.Spec.NodeName = node
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_LISTEN", Value: ":8080"}}
	got, err := c.StartServer(ctx, pod, 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cs, err := c.clientset()
	if err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, time.Minute, "pod "+name+" listens", func() (bool, string) {
		logs, err := cs.CoreV1().Pods(pod.Namespace).GetLogs(name, &corev1.PodLogOptions{}).DoRaw(ctx)
		return strings.Contains(string(logs), "listening on"), fmt.Sprintf("%s %v", logs, err)
	})
	return got
}

// connectFrom runs a probe pod on node that connects to addr and returns
// its log; the connection must succeed.
func connectFrom(ctx context.Context, t *testing.T, c *Cluster, name, node, addr string, annotations map[string]string) string {
	t.Helper()
	pod := ProbePod(name, annotations)
	pod.Spec.NodeName = node
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_CONNECT", Value: addr}}
	_, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
	if err != nil {
		t.Fatalf("a pod on node %s connecting to %s: %v", node, addr, err)
	}
	return logs
}

// testAcrossNodes reaches a pod on each node from a pod on the other, and
// a Service in front of the first node's pod from the second node, whose
// own kube-proxy routes it.
func testAcrossNodes(ctx context.Context, t *testing.T, c *Cluster) {
	nodes := c.Nodes()
	servers := map[string]*corev1.Pod{}
	for _, n := range nodes {
		servers[n.Name] = serverPod(ctx, t, c, "server-"+n.Name, n.Name, map[string]string{"app": "server-" + n.Name}, nil)
	}
	for i, n := range nodes {
		peer := nodes[1-i]
		addr := net.JoinHostPort(servers[peer.Name].Status.PodIP, "8080")
		logs := connectFrom(ctx, t, c, "to-"+peer.Name, n.Name, addr, nil)
		if !strings.Contains(logs, "connect "+addr+": ok") {
			t.Errorf("pod on %s → pod on %s (%s): %s", n.Name, peer.Name, addr, logs)
		}
	}
	cs, err := c.clientset()
	if err != nil {
		t.Fatal(err)
	}
	svc, err := cs.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "server"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "server-" + nodes[0].Name},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	addr := net.JoinHostPort(svc.Spec.ClusterIP, "80")
	// kube-proxy makes its rules a moment after the EndpointSlice: the
	// probe tries for a minute.
	pod := ProbePod("to-service", nil)
	pod.Spec.NodeName = nodes[1].Name
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_CONNECT", Value: addr}, {Name: "PROBE_CONNECT_WITHIN", Value: "60s"}}
	_, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
	if err != nil || !strings.Contains(logs, "connect "+addr+": ok") {
		proxyLog := c.path("logs", processName("kube-proxy", nodes[1])+".log")
		t.Errorf("a pod on node %s did not reach Service %s (backed by a pod on node %s): %v\n%s\nits kube-proxy's log %s ends with:\n%s",
			nodes[1].Name, addr, nodes[0].Name, err, logs, proxyLog, tail(proxyLog, 40))
	}
}

// testMultusAcrossNodes attaches a pod on each node to a NetworkAttachment
// Definition on the cluster's L2 segment (upstream macvlan on the
// segment's macvlan NIC, static addresses) and has the second node's pod
// reach the first's over it.
func testMultusAcrossNodes(ctx context.Context, t *testing.T, c *Cluster) {
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nadConfig, _ := json.Marshal(map[string]any{
		"cniVersion":   "0.4.0",
		"type":         "macvlan",
		"master":       c.Segment().MacvlanMaster,
		"mode":         "bridge",
		"capabilities": map[string]bool{"ips": true},
		"ipam":         map[string]any{"type": "static"},
	})
	nad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "k8s.cni.cncf.io/v1",
		"kind":       "NetworkAttachmentDefinition",
		"metadata":   map[string]any{"name": "l2-test", "namespace": "default"},
		"spec":       map[string]any{"config": string(nadConfig)},
	}}
	nads := dyn.Resource(schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}).Namespace("default")
	if _, err := nads.Create(ctx, nad, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create NetworkAttachmentDefinition: %v", err)
	}
	on := func(ip string) map[string]string {
		return map[string]string{"k8s.v1.cni.cncf.io/networks": fmt.Sprintf(`[{"name":"l2-test","ips":["%s/24"]}]`, ip)}
	}
	nodes := c.Nodes()
	server := serverPod(ctx, t, c, "l2-server", nodes[0].Name, nil, on("10.246.0.11"))
	status := server.Annotations["k8s.v1.cni.cncf.io/network-status"]
	if !strings.Contains(status, `"default/l2-test"`) || !strings.Contains(status, "10.246.0.11") {
		t.Errorf("network-status annotation does not report l2-test with 10.246.0.11: %s", status)
	}
	logs := connectFrom(ctx, t, c, "l2-client", nodes[1].Name, "10.246.0.11:8080", on("10.246.0.12"))
	if !regexp.MustCompile(`(?m)^iface net1 mac=\S+ addrs=10\.246\.0\.12/24`).MatchString(logs) {
		t.Errorf("the client pod has no net1 with 10.246.0.12/24; its log:\n%s", logs)
	}
	if !strings.Contains(logs, "connect 10.246.0.11:8080: ok from 10.246.0.12:") {
		t.Errorf("the pod on %s did not reach the pod on %s over the L2 segment; its log:\n%s", nodes[1].Name, nodes[0].Name, logs)
	}
}

// testNodePowerLoss powers the second node off: its Node turns NotReady
// within the node-monitor grace period; powered on, it is Ready again and
// runs pods.
func testNodePowerLoss(ctx context.Context, t *testing.T, c *Cluster) {
	n := c.Nodes()[1]
	cs, err := c.clientset()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.StopNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	if pids := c.nodePids(n, 0); len(pids) > 0 {
		t.Errorf("node %s is off but processes %v of its cgroups live", n.Name, pids)
	}
	polltest.Eventually(t, 2*time.Minute, "node "+n.Name+" NotReady", func() (bool, string) {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				return cond.Status != corev1.ConditionTrue, string(cond.Status) + ": " + cond.Message
			}
		}
		return false, "no Ready condition"
	})
	if err := c.StartNode(ctx, n.Name); err != nil {
		t.Fatal(err)
	}
	pod := ProbePod("after-power-loss", nil)
	pod.Spec.NodeName = n.Name
	if _, _, err := c.RunToCompletion(ctx, pod, 3*time.Minute); err != nil {
		t.Errorf("node %s powered on again does not run pods: %v", n.Name, err)
	}
}

func inSubnet(ip, cidr string) bool {
	_, n, err := net.ParseCIDR(cidr)
	return err == nil && n.Contains(net.ParseIP(ip))
}

func listDir(dir string) []string {
	entries, _ := os.ReadDir(dir)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

func newEntries(before []string, dir string) []string {
	var added []string
	for _, name := range listDir(dir) {
		if !slices.Contains(before, name) {
			added = append(added, name)
		}
	}
	return added
}
