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
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"

	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/internal/testlog"
)

// testConfig is a cluster that can run beside a developer's `make up`:
// its own name, directory, ports and addresses, and no kube-proxy (which
// would fight the other cluster's over the KUBE-* iptables chains).
func testConfig(t *testing.T) Config {
	dir, err := os.MkdirTemp("", "podvirt-cluster-test-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return Config{
		Dir:           dir,
		Name:          "pvtest",
		NodeIP:        net.IPv4(10, 250, 1, 1),
		PodSubnet:     "10.245.0.0/24",
		ServiceSubnet: "10.0.1.0/24",
		BasePort:      7443,
		Progress:      testlog.Writer(t),
	}
}

// TestCluster brings a real cluster up, runs pods on the real kubelet
// (one plain, one with a second interface through Multus), takes it down
// and checks that nothing of it is left on the machine.
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
		pod, logs, err := c.RunToCompletion(ctx, ProbePod("probe", nil), 3*time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(logs, "podvirt-probe: hello from probe") {
			t.Errorf("pod log does not have the probe's marker:\n%s", logs)
		}
		if pod.Spec.NodeName != c.NodeName() {
			t.Errorf("pod ran on node %q, want %q", pod.Spec.NodeName, c.NodeName())
		}
		if !inSubnet(pod.Status.PodIP, c.cfg.PodSubnet) {
			t.Errorf("pod IP %q is not in the pod network %s", pod.Status.PodIP, c.cfg.PodSubnet)
		}
	})

	t.Run("NodePathsOfItsOwn", func(t *testing.T) {
		// The kubelet made its registration socket in what it sees as
		// /var/lib/kubelet/device-plugins: the node's own copy, never the
		// host's directory that every other cluster would share.
		own := filepath.Join(c.DevicePluginDir(), "kubelet.sock")
		polltest.Eventually(t, time.Minute, "the kubelet's device-plugin socket is in the node's own directory", func() (bool, string) {
			_, err := os.Stat(own)
			return err == nil, fmt.Sprint(err)
		})
		host := "/var/lib/kubelet/device-plugins/kubelet.sock"
		if a, b := stat(t, own), statOrNil(host); b != nil && os.SameFile(a, b) {
			t.Errorf("%s on the host is the node's own socket: the bind mount leaked out of the node's mount namespace", host)
		}
		for _, np := range nodePaths {
			for _, mp := range mountsUnder(np.host) {
				t.Errorf("mount %s is visible on the host: node paths must stay in the node's mount namespace", mp)
			}
		}
	})

	t.Run("MultusSecondInterface", func(t *testing.T) {
		testMultusBridgeNAD(ctx, t, c)
	})

	// A veth pair named after the cluster, as the demo's macvlan master:
	// Down removes both ends, although deleting one takes the other.
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
	if added := newEntries(netnsBefore, "/run/netns"); len(added) > 0 {
		t.Errorf("network namespaces left in /run/netns: %v", added)
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

// testMultusBridgeNAD attaches a pod to a NetworkAttachmentDefinition that
// uses the upstream bridge plugin and checks the pod saw a second
// interface with an address from the NAD's range.
func testMultusBridgeNAD(ctx context.Context, t *testing.T, c *Cluster) {
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	const subnet = "10.246.0.0/24"
	nadConfig, _ := json.Marshal(map[string]any{
		"cniVersion": "0.4.0",
		"type":       "bridge",
		"bridge":     c.link("nad"), // a <Name>- link: Down deletes it
		"ipam": map[string]any{
			"type":    "host-local",
			"ranges":  [][]map[string]string{{{"subnet": subnet}}},
			"dataDir": c.path("cni", "ipam"),
		},
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

	pod, logs, err := c.RunToCompletion(ctx, ProbePod("probe-multus", map[string]string{"k8s.v1.cni.cncf.io/networks": "l2-test"}), 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^iface net1 mac=\S+ addrs=(\S+)/24`).FindStringSubmatch(logs)
	if m == nil || !inSubnet(m[1], subnet) {
		t.Fatalf("pod has no net1 with an address in %s; its log:\n%s", subnet, logs)
	}
	status := pod.Annotations["k8s.v1.cni.cncf.io/network-status"]
	if !strings.Contains(status, `"default/l2-test"`) || !strings.Contains(status, m[1]) {
		t.Errorf("network-status annotation does not report l2-test with %s: %s", m[1], status)
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
