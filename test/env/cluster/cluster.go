// Package cluster runs a real single-node Kubernetes on this machine for
// development and tests: etcd, kube-apiserver, kube-controller-manager,
// kube-scheduler, kube-proxy and the kubelet (built from k8s.io/kubernetes
// by `make deps`), containerd + runc, a CNI bridge pod network with Multus
// as the meta plugin. All state lives under one directory; every process it
// starts is recorded by pid, and Down removes every process, link, mount,
// netns and cgroup that Up made.
package cluster

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
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
	// Name is the node name; it also prefixes the links Up creates
	// (<Name>-node, <Name>-pods; at most 9 characters) and names the
	// cgroup root of the kubelet (/<Name>).
	Name string
	// NodeIP is put as a /32 on the <Name>-node bridge: the kubelet refuses
	// a loopback node IP and this kernel has no dummy links. The API server
	// and kubelet listen on it, so nothing listens beyond this machine.
	NodeIP net.IP
	// PodSubnet is the default pod network, served by the bridge plugin
	// with host-local IPAM on <Name>-pods.
	PodSubnet string
	// ServiceSubnet holds ClusterIPs; its first address is the API server's.
	ServiceSubnet string
	// BasePort is the API server's port; the other components listen on
	// the next ports (see ports).
	BasePort int
	// KubeProxy runs kube-proxy (iptables mode), so pods reach Services.
	// Only one cluster with KubeProxy should run on a machine at a time:
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
		PodSubnet:     "10.244.0.0/24",
		ServiceSubnet: "10.0.0.0/24",
		BasePort:      6443,
		KubeProxy:     true,
	}
}

type ports struct {
	apiserver, etcdClient, etcdPeer, controllerManager, scheduler, kubelet, kubeletHealthz, proxyHealthz, proxyMetrics int
}

func (c Config) ports() ports {
	b := c.BasePort
	return ports{
		apiserver: b, etcdClient: b + 1, etcdPeer: b + 2, controllerManager: b + 3,
		scheduler: b + 4, kubelet: b + 5, kubeletHealthz: b + 6, proxyHealthz: b + 7, proxyMetrics: b + 8,
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
	return nil
}

// Cluster is a local cluster described by its Config.
type Cluster struct {
	cfg  Config
	bins binaries
}

// New checks cfg and finds the binaries `make deps` installed.
func New(cfg Config) (*Cluster, error) {
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

// Kubeconfig is the cluster-admin kubeconfig's path.
func (c *Cluster) Kubeconfig() string { return filepath.Join(c.cfg.Dir, "kubeconfig") }

// ContainerdSocket is the path of the node's containerd socket, for
// importing images.
func (c *Cluster) ContainerdSocket() string {
	return filepath.Join(c.cfg.Dir, "containerd", "containerd.sock")
}

// CNIBinDir is the node's CNI plugin directory (where a node daemon
// installs extra plugins).
func (c *Cluster) CNIBinDir() string { return filepath.Join(c.cfg.Dir, "cni", "bin") }

// KubeletRootDir is the kubelet's --root-dir (under Dir, not
// /var/lib/kubelet): what a DaemonSet mounts to reach pod volumes and
// plugin sockets (the chart's kubeletRootDir).
func (c *Cluster) KubeletRootDir() string { return c.path("kubelet") }

// NodeName is the name of the cluster's only node.
func (c *Cluster) NodeName() string { return c.cfg.Name }

// NodeIP is the node's address; pods and the host both reach it.
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
	steps := []struct {
		name string
		run  func(context.Context) error
	}{
		{"certificates and kubeconfigs", c.writeCredentials},
		{"node paths of its own under " + c.path("node"), func(context.Context) error { return c.shareStateDir() }},
		{"node bridge " + c.link("node"), c.setupNodeLink},
		{"etcd", c.startEtcd},
		{"kube-apiserver", c.startAPIServer},
		{"kube-controller-manager and kube-scheduler", c.startControllers},
		{"containerd", c.startContainerd},
		{"pause image", c.importPause},
		{"pod network (bridge) and Multus", c.writeCNIConfig},
		{"NetworkAttachmentDefinition CRD and Multus RBAC", c.applyAddons},
		{"kubelet", c.startKubelet},
		{"kube-proxy", c.startKubeProxy},
		{"node Ready", c.waitNodeReady},
		{"default ServiceAccount", c.waitDefaultServiceAccount},
	}
	for _, s := range steps {
		t := time.Now()
		c.progress("%s ...", s.name)
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("cluster up: %s: %w", s.name, err)
		}
		c.progress("%s: done (%.1fs)", s.name, time.Since(t).Seconds())
	}
	c.progress("cluster %q is up in %.0fs; kubeconfig: %s", c.cfg.Name, time.Since(start).Seconds(), c.Kubeconfig())
	return nil
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
