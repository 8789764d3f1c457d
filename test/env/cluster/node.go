package cluster

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/test/images/oci"
)

// PauseImage is the pod sandbox image of every local cluster, built by
// code from test/cmd/podvirt-pause.
const PauseImage = "podvirt.local/pause:1"

// nodeSteps bring node n up, or finish bringing it up.
func (c *Cluster) nodeSteps(n Node) []step {
	var steps []step
	if !n.First() {
		steps = append(steps, step{"node " + n.Name + ": network and mount namespaces", func(ctx context.Context) error { return c.startHolder(ctx, n) }})
	}
	return append(steps,
		step{"node " + n.Name + ": containerd", func(ctx context.Context) error { return c.startContainerd(ctx, n) }},
		step{"node " + n.Name + ": pause image", func(ctx context.Context) error { return c.importPause(ctx, n) }},
		step{"node " + n.Name + ": pod network (bridge) and Multus", func(context.Context) error { return c.writeCNIConfig(n) }},
		step{"node " + n.Name + ": kubelet", func(context.Context) error { return c.startKubelet(n) }},
		step{"node " + n.Name + ": kube-proxy", func(context.Context) error { return c.startKubeProxy(n) }},
	)
}

// startContainerd writes node n's containerd config, with the paths the
// node sees (its own under Dir/nodes/<name> appear at Dir/...), and starts
// it in the node's namespaces.
func (c *Cluster) startContainerd(ctx context.Context, n Node) error {
	dir := c.path("containerd")
	config := fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # The sandbox lacks CAP_SYS_RESOURCE: without this runc fails to lower
  # oom_score_adj below containerd's own.
  restrict_oom_score_adj = true
  # Pod network namespaces live under the state dir, so Down finds them.
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.grpc.v1.cri".containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
  BinaryName = %[7]q
  SystemdCgroup = false

[plugins."io.containerd.grpc.v1.cri".cni]
  bin_dir = %[8]q
  conf_dir = %[9]q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), filepath.Join(dir, "containerd.sock"), filepath.Join(dir, "containerd.sock.ttrpc"),
		filepath.Join(dir, "opt"), PauseImage, c.bins.runc, c.CNIBinDir(), c.path("cni", "net.d"))
	if err := writeFile(c.nodePath(n, "containerd", "config.toml"), config); err != nil {
		return err
	}
	p, err := c.inNode(n, process{name: processName("containerd", n), path: c.bins.containerd, args: []string{
		"--config", filepath.Join(dir, "config.toml"), "--log-level", "info",
	}})
	if err == nil {
		err = c.start(p)
	}
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "containerd of node "+n.Name, p.name, time.Minute, func(ctx context.Context) (bool, error) {
		err := exec.CommandContext(ctx, c.bins.ctr, "--address", n.ContainerdSocket, "version").Run()
		return err == nil, err
	})
}

func (c *Cluster) importPause(ctx context.Context, n Node) error {
	return c.buildAndImport(ctx, "github.com/podvirt/podvirt/test/cmd/podvirt-pause", PauseImage, []string{"/pause"}, []Node{n})
}

// BuildAndImport builds the Go command pkg (an import path; the caller runs
// inside this module) as a static binary, wraps it in an image named ref
// with entrypoint (the binary sits at entrypoint[0]) and imports it into
// every node's containerd.
func (c *Cluster) BuildAndImport(ctx context.Context, pkg, ref string, entrypoint []string) error {
	return c.buildAndImport(ctx, pkg, ref, entrypoint, c.Nodes())
}

func (c *Cluster) buildAndImport(ctx context.Context, pkg, ref string, entrypoint []string, nodes []Node) error {
	work, err := os.MkdirTemp(c.cfg.Dir, "image-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)
	bin := filepath.Join(work, "bin")
	if err := oci.GoBinary(ctx, pkg, bin); err != nil {
		return err
	}
	img, err := oci.Build(oci.Spec{Ref: ref, Files: []oci.File{{Path: entrypoint[0], Source: bin}}, Entrypoint: entrypoint})
	if err != nil {
		return err
	}
	tarPath := filepath.Join(work, "image.tar")
	if err := oci.WriteOCITar(img, ref, tarPath); err != nil {
		return err
	}
	for _, n := range nodes {
		if err := oci.Import(ctx, n.ContainerdSocket, tarPath); err != nil {
			return fmt.Errorf("node %s: %w", n.Name, err)
		}
	}
	return nil
}

// writeCNIConfig installs the plugins into node n's CNI bin dir and writes
// Multus as the only network config, delegating the default pod network to
// Debian's bridge plugin with host-local IPAM on the node's /24.
func (c *Cluster) writeCNIConfig(n Node) error {
	for name, src := range c.bins.cniPlugins {
		if err := copyExecutable(src, c.nodePath(n, "cni", "bin", name)); err != nil {
			return fmt.Errorf("install CNI plugin %s: %w", name, err)
		}
	}
	podNetwork := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "pods",
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      c.link("pods"),
			"isGateway":   true,
			"ipMasq":      false, // nothing leaves this machine, and no iptables rules to clean up
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{{"subnet": n.PodSubnet}}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": c.path("cni", "ipam"),
			},
		}},
	}
	multus := map[string]any{
		"cniVersion": "0.4.0",
		"name":       "multus-cni-network",
		"type":       "multus",
		"kubeconfig": c.path("kubeconfigs", "multus.kubeconfig"),
		"cniDir":     c.path("cni", "multus"),
		"binDir":     c.CNIBinDir(),
		"logFile":    c.path("logs", "multus.log"),
		"logLevel":   "verbose",
		"delegates":  []any{podNetwork},
	}
	b, err := json.MarshalIndent(multus, "", "  ")
	if err != nil {
		return err
	}
	return writeFile(c.nodePath(n, "cni", "net.d", "00-multus.conf"), string(b))
}

func (c *Cluster) startKubelet(n Node) error {
	if err := createCgroupRoot(n.Name); err != nil {
		return err
	}
	p := c.cfg.ports()
	config := fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: /%s
containerRuntimeEndpoint: unix://%s
address: %s
port: %d
healthzBindAddress: 127.0.0.1
healthzPort: %d
readOnlyPort: 0
tlsCertFile: %s
tlsPrivateKeyFile: %s
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: %s
authorization:
  mode: Webhook
clusterDomain: %s
clusterDNS: [%s]
# Pods with dnsPolicy Default (and host-network ones without
# ClusterFirstWithHostNet) get no nameserver rather than the host's, so no
# query ever leaves the machine.
resolvConf: ""
podLogsDir: %s
failSwapOn: false
serializeImagePulls: false
# A developer machine's disk is shared with everything else: evict only
# when it is nearly full, and never garbage-collect the imported images
# (there is no registry to pull them back from).
evictionHard:
  memory.available: 100Mi
  nodefs.available: 1%%
  nodefs.inodesFree: 1%%
  imagefs.available: 1%%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
`, n.Name, c.path("containerd", "containerd.sock"), n.IP, p.kubelet, p.kubeletHealthz,
		c.path("pki", kubeletCert(n, "kubelet-serving")+".crt"), c.path("pki", kubeletCert(n, "kubelet-serving")+".key"), c.path("pki", "ca.crt"),
		ClusterDomain, c.DNSServiceIP(), c.path("pod-logs"))
	if err := writeFile(c.nodePath(n, "kubelet", "config.yaml"), config); err != nil {
		return err
	}
	proc, err := c.inNode(n, process{name: processName("kubelet", n), path: c.bins.kubelet, args: []string{
		"--config=" + c.path("kubelet", "config.yaml"),
		"--kubeconfig=" + c.path("kubeconfigs", kubeletCert(n, "kubelet")+".kubeconfig"),
		"--root-dir=" + c.path("kubelet"),
		"--node-ip=" + n.IP.String(),
		"--hostname-override=" + n.Name,
		"--v=1",
	}})
	if err != nil {
		return err
	}
	return c.start(proc)
}

func (c *Cluster) startKubeProxy(n Node) error {
	if n.First() && !c.cfg.KubeProxy {
		c.progress("kube-proxy: disabled on the first node of this cluster")
		return nil
	}
	p := c.cfg.ports()
	config := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %s
hostnameOverride: %s
mode: iptables
clusterCIDR: %s
healthzBindAddress: 127.0.0.1:%d
metricsBindAddress: 127.0.0.1:%d
# NodePorts answer on the node IP only, never on the machine's uplink.
nodePortAddresses: ["%s/32"]
conntrack:
  maxPerCore: 0
  min: 0
`, c.path("kubeconfigs", "kube-proxy.kubeconfig"), n.Name, c.cfg.PodSubnet, p.proxyHealthz, p.proxyMetrics, n.IP)
	name := processName("kube-proxy", n)
	if err := writeFile(c.path("kube-proxy", name+".yaml"), config); err != nil {
		return err
	}
	proc := process{name: name, path: c.bins.kubeProxy, args: []string{"--config=" + c.path("kube-proxy", name+".yaml")}}
	if !n.First() {
		// In the node's network namespace: its iptables rules are its own.
		var err error
		if proc, err = c.inNode(n, proc); err != nil {
			return err
		}
	}
	return c.start(proc)
}

func (c *Cluster) waitNodeReady(ctx context.Context, n Node) error {
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "node "+n.Name+" Ready", processName("kubelet", n), 3*time.Minute, func(ctx context.Context) (bool, error) {
		node, err := cs.CoreV1().Nodes().Get(ctx, n.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, cond := range node.Status.Conditions {
			if cond.Type == corev1.NodeReady {
				if cond.Status != corev1.ConditionTrue {
					return false, fmt.Errorf("node Ready=%s: %s", cond.Status, cond.Message)
				}
				return true, nil
			}
		}
		return false, nil
	})
}

// waitDefaultServiceAccount waits for the controller-manager to create the
// ServiceAccount every pod of the default namespace runs as; until then the
// API server refuses those pods.
func (c *Cluster) waitDefaultServiceAccount(ctx context.Context) error {
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "ServiceAccount default/default", "kube-controller-manager", 2*time.Minute, func(ctx context.Context) (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts("default").Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
}

func copyExecutable(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp := dst + ".tmp"
	out, err := os.OpenFile(tmp, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o755)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	if err := out.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, dst)
}
