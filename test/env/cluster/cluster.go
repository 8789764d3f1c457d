// Package cluster runs a real Kubernetes of one or more nodes on this
// machine for development and tests: etcd, kube-apiserver,
// kube-controller-manager, kube-scheduler, CoreDNS (dns.go) and, per node,
// the kubelet, kube-proxy (built from k8s.io/kubernetes by `make deps`),
// containerd + runc, a CNI bridge pod network with Multus as the meta
// plugin. The first node is the machine itself; every other node runs in a
// network and mount namespace of its own (see nodes.go). All state lives
// under one directory; every process it starts is recorded by pid, and
// Down removes every process, link, mount, netns and cgroup that Up made.
package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/podvirt/podvirt/test/deps"
)

// Config describes one local cluster. Two clusters with different Names,
// Dirs, ports and addresses can run side by side (a developer's `make up`
// and the test suite's own).
type Config struct {
	// Dir holds all state: PKI, etcd data, containerd root, kubelet root,
	// logs, pid files, kubeconfigs.
	Dir string
	// Name is the first node's name (the others are <Name>-2, <Name>-3,
	// ...); it also prefixes the links Up creates (<Name>-node,
	// <Name>-pods; at most 9 characters) and names the cgroup root of each
	// node's kubelet (/<node name>).
	Name string
	// Nodes is how many nodes the cluster has: 0 means as many as it was
	// brought up with (1 for a new cluster). A cluster never shrinks:
	// asking for fewer nodes than it has keeps them all.
	Nodes int
	// NodeIP is the first node's address, put as a /24 on the <Name>-node
	// bridge: the kubelet refuses a loopback node IP and this kernel has no
	// dummy links. The API server listens on it too. Node i has NodeIP+i-1
	// in that /24, so nothing listens beyond this machine.
	NodeIP net.IP
	// PodSubnet is the default pod network of the whole cluster; node i
	// gets its i-th /24, served by the bridge plugin with host-local IPAM on
	// that node's <Name>-pods.
	PodSubnet string
	// ServiceSubnet holds ClusterIPs; its first address is the API server's.
	ServiceSubnet string
	// BasePort is the API server's port; the other components listen on
	// the next ports (see ports).
	BasePort int
	// KubeProxy runs kube-proxy (iptables mode) on the first node, so its
	// pods reach Services; every other node runs its own whatever this
	// says, in its own network namespace. Only one cluster with KubeProxy
	// should run on a machine at a time: on the machine's own namespace
	// kube-proxy owns the KUBE-* iptables chains.
	KubeProxy bool
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// DefaultConfig is what `make up` runs.
func DefaultConfig() Config {
	return Config{
		Dir:           filepath.Join(deps.Cache(), "cluster"),
		Name:          "podvirt",
		NodeIP:        net.IPv4(10, 250, 0, 1),
		PodSubnet:     "10.240.0.0/16",
		ServiceSubnet: "10.0.0.0/24",
		BasePort:      6443,
		KubeProxy:     true,
	}
}

type ports struct {
	apiserver, etcdClient, etcdPeer, controllerManager, scheduler, kubelet, kubeletHealthz, proxyHealthz, proxyMetrics, dnsReady int
}

func (c Config) ports() ports {
	b := c.BasePort
	return ports{
		apiserver: b, etcdClient: b + 1, etcdPeer: b + 2, controllerManager: b + 3,
		scheduler: b + 4, kubelet: b + 5, kubeletHealthz: b + 6, proxyHealthz: b + 7, proxyMetrics: b + 8, dnsReady: b + 9,
	}
}

func (c Config) validate() error {
	switch {
	case c.Dir == "":
		return fmt.Errorf("cluster config: Dir is empty: set the state directory")
	case c.Name == "" || len(c.Name) > 9:
		return fmt.Errorf("cluster config: Name %q must be 1–9 characters, so link names like %q fit in 15", c.Name, c.Name+"-node")
	case c.NodeIP.To4() == nil:
		return fmt.Errorf("cluster config: NodeIP %v is not an IPv4 address", c.NodeIP)
	case c.NodeIP.IsLoopback():
		return fmt.Errorf("cluster config: NodeIP %v is loopback, which the kubelet refuses", c.NodeIP)
	case c.BasePort < 1024 || c.BasePort > 65000:
		return fmt.Errorf("cluster config: BasePort %d must be in 1024–65000", c.BasePort)
	}
	for field, cidr := range map[string]string{"PodSubnet": c.PodSubnet, "ServiceSubnet": c.ServiceSubnet} {
		if _, _, err := net.ParseCIDR(cidr); err != nil {
			return fmt.Errorf("cluster config: %s %q: %w", field, cidr, err)
		}
	}
	n := c.nodeCount()
	if n < 1 || n > maxNodes {
		return fmt.Errorf("cluster config: Nodes %d must be 1–%d", c.Nodes, maxNodes)
	}
	if last := int(c.NodeIP.To4()[3]) + n - 1; last > 254 {
		return fmt.Errorf("cluster config: NodeIP %v leaves no room in its /24 for %d nodes: use an address ending in at most %d", c.NodeIP, n, 255-n)
	}
	_, pods, _ := net.ParseCIDR(c.PodSubnet)
	if ones, bits := pods.Mask.Size(); bits != 32 || ones > 24 || 1<<(24-ones) < n {
		return fmt.Errorf("cluster config: PodSubnet %s must be IPv4 and hold a /24 per node (%d nodes): use a /%d or wider", c.PodSubnet, n, 24-bitsFor(n))
	}
	return nil
}

func (c Config) nodeCount() int {
	if c.Nodes == 0 {
		return 1
	}
	return c.Nodes
}

// bitsFor is the number of bits that count n values.
func bitsFor(n int) int {
	b := 0
	for 1<<b < n {
		b++
	}
	return b
}

// Cluster is a local cluster described by its Config.
type Cluster struct {
	cfg  Config
	bins binaries
}

// New checks cfg and finds the binaries `make deps` installed.
func New(cfg Config) (*Cluster, error) {
	if recorded := recordedNodes(cfg.Dir); recorded > cfg.Nodes {
		cfg.Nodes = recorded
	}
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	cfg.Dir = dir
	if cfg.Progress == nil {
		cfg.Progress = io.Discard
	}
	bins, err := findBinaries()
	if err != nil {
		return nil, err
	}
	return &Cluster{cfg: cfg, bins: bins}, nil
}

// recordedNodes is the node count Up recorded under dir (0 when none).
func recordedNodes(dir string) int {
	b, err := os.ReadFile(filepath.Join(dir, "node-count"))
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(strings.TrimSpace(string(b)))
	return n
}

// Kubeconfig is the cluster-admin kubeconfig's path.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.cfg.Dir, "kubeconfig") }

// ContainerdSocket is the path of the first node's containerd socket, for
// importing images (ContainerdSockets has every node's).
func (c *Cluster) ContainerdSocket() string { return c.first().ContainerdSocket }

// ContainerdSockets are every node's containerd sockets, as the host sees
// them: an image a pod may use goes into each.
func (c *Cluster) ContainerdSockets() []string {
	var sockets []string
	for _, n := range c.Nodes() {
		sockets = append(sockets, n.ContainerdSocket)
	}
	return sockets
}

// CNIBinDir is each node's CNI plugin directory (where a node daemon
// installs extra plugins), as the node sees it; the first node's as the
// host sees it.
func (c *Cluster) CNIBinDir() string { return c.path("cni", "bin") }

// PodNetNSDir holds each node's pod network namespaces (containerd mounts
// them under its state dir here), as the node sees it: what a node daemon
// mounts to enter them.
func (c *Cluster) PodNetNSDir() string { return c.path("containerd", "state") }

// KubeletRootDir is each kubelet's --root-dir (under Dir, not
// /var/lib/kubelet) as its node sees it: what a DaemonSet mounts to reach
// pod volumes and plugin sockets (the chart's kubeletRootDir). On the host
// it is the first node's; Node.KubeletRootDir is any node's.
func (c *Cluster) KubeletRootDir() string { return c.path("kubelet") }

// NodeName is the name of the cluster's first node.
func (c *Cluster) NodeName() string { return c.cfg.Name }

// NodeIP is the first node's address, which is the API server's too; pods
// on every node and the host reach it.
func (c *Cluster) NodeIP() net.IP { return c.cfg.NodeIP }

// PodSubnet and ServiceSubnet are the cluster's pod and Service CIDRs.
func (c *Cluster) PodSubnet() string     { return c.cfg.PodSubnet }
func (c *Cluster) ServiceSubnet() string { return c.cfg.ServiceSubnet }

// RESTConfig is a cluster-admin client configuration.
func (c *Cluster) RESTConfig() (*rest.Config, error) {
	return clientcmd.BuildConfigFromFlags("", c.Kubeconfig())
}

// Up brings the cluster up, or finishes bringing it up: steps already done
// (PKI written, a process running) are kept, so calling it twice is harmless.
func (c *Cluster) Up(ctx context.Context) error {
	start := time.Now()
	for _, dir := range []string{"logs", "pids", "pki", "kubeconfigs", "etcd"} {
		if err := os.MkdirAll(filepath.Join(c.cfg.Dir, dir), 0o700); err != nil {
			return err
		}
	}
	// Recorded first, so a `down` after a failed `up` finds every node.
	if err := os.WriteFile(c.path("node-count"), []byte(strconv.Itoa(len(c.Nodes()))+"\n"), 0o600); err != nil {
		return err
	}
	steps := []step{
		{"certificates and kubeconfigs", c.writeCredentials},
		{"node paths of its own under " + c.path("node"), func(context.Context) error { return c.shareStateDir() }},
		{"underlay bridge " + c.link("node") + " and L2 segment " + c.link("seg"), c.setupNodeLink},
		{"etcd", c.startEtcd},
		{"kube-apiserver", c.startAPIServer},
		{"kube-controller-manager and kube-scheduler", c.startControllers},
		{"NetworkAttachmentDefinition CRD and Multus RBAC", c.applyAddons},
		{"cluster DNS: CoreDNS and Service " + dnsNamespace + "/" + dnsService, c.startDNS},
	}
	for _, n := range c.Nodes() {
		steps = append(steps, c.nodeSteps(n)...)
	}
	for _, n := range c.Nodes() {
		steps = append(steps, step{"node " + n.Name + " Ready", func(ctx context.Context) error { return c.waitNodeReady(ctx, n) }})
	}
	steps = append(steps, step{"default ServiceAccount", c.waitDefaultServiceAccount})
	for _, s := range steps {
		t := time.Now()
		c.progress("%s ...", s.name)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("cluster up: %s: %w", s.name, err)
		}
		c.progress("%s: done (%.1fs)", s.name, time.Since(t).Seconds())
	}
	c.progress("cluster %q is up with %d node(s) in %.0fs; kubeconfig: %s", c.cfg.Name, len(c.Nodes()), time.Since(start).Seconds(), c.Kubeconfig())
	return nil
}

// step is one named step of bringing the cluster (or a node) up.
type step struct {
	name string
	run  func(context.Context) error
}

func (c *Cluster) clientset() (*kubernetes.Clientset, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	return kubernetes.NewForConfig(cfg)
}

func (c *Cluster) progress(format string, args ...any) {
	fmt.Fprintf(c.cfg.Progress, "[cluster %s] %s\n", time.Now().Format("15:04:05"), fmt.Sprintf(format, args...))
}

func (c *Cluster) link(role string) string { return c.cfg.Name + "-" + role }

func (c *Cluster) path(parts ...string) string {
	return filepath.Join(append([]string{c.cfg.Dir}, parts...)...)
}
