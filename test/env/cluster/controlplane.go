package cluster

import (
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
)

// setupNodeLink creates the <Name>-node bridge, the underlay every node
// joins, holding NodeIP/24: an address that is not loopback (the kubelet
// insists) and reaches nothing outside this machine; the Service CIDR's
// route onto it; and the shared L2 segment.
func (c *Cluster) setupNodeLink(context.Context) error {
	link, err := c.ensureBridge(c.link("node"))
	if err != nil {
		return err
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.cfg.NodeIP, Mask: net.CIDRMask(24, 32)}}
	if err := netlink.AddrReplace(link, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, link.Attrs().Name, err)
	}
	// ClusterIPs that no kube-proxy rewrote (a node without one, rules not
	// made yet) end on the underlay instead of following the machine's
	// default route out of it.
	_, services, _ := net.ParseCIDR(c.cfg.ServiceSubnet)
	if err := netlink.RouteReplace(&netlink.Route{LinkIndex: link.Attrs().Index, Dst: services, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("route %s to %s: %w", services, link.Attrs().Name, err)
	}
	return c.setupSegment()
}

func (c *Cluster) startEtcd(ctx context.Context) error {
	p := c.cfg.ports()
	client := fmt.Sprintf("http://127.0.0.1:%d", p.etcdClient)
	peer := fmt.Sprintf("http://127.0.0.1:%d", p.etcdPeer)
	err := c.start(process{name: "etcd", path: c.bins.etcd, args: []string{
		"--name=" + c.cfg.Name,
		"--data-dir=" + c.path("etcd"),
		"--listen-client-urls=" + client, "--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer, "--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=" + c.cfg.Name + "=" + peer,
		"--quota-backend-bytes=4294967296",
	}})
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "etcd health", "etcd", time.Minute, func(ctx context.Context) (bool, error) {
		body, err := get(ctx, http.DefaultClient, client+"/health")
		return strings.Contains(body, `"health":"true"`), err
	})
}

func (c *Cluster) startAPIServer(ctx context.Context) error {
	p := c.cfg.ports()
	pki := func(f string) string { return c.path("pki", f) }
	err := c.start(process{name: "kube-apiserver", path: c.bins.apiserver, args: []string{
		fmt.Sprintf("--etcd-servers=http://127.0.0.1:%d", p.etcdClient),
		"--bind-address=" + c.cfg.NodeIP.String(),
		"--advertise-address=" + c.cfg.NodeIP.String(),
		fmt.Sprintf("--secure-port=%d", p.apiserver),
		"--cert-dir=" + c.path("apiserver"),
		"--tls-cert-file=" + pki("apiserver.crt"), "--tls-private-key-file=" + pki("apiserver.key"),
		"--client-ca-file=" + pki("ca.crt"),
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + c.cfg.ServiceSubnet,
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
		"--kubelet-certificate-authority=" + pki("ca.crt"),
		"--kubelet-preferred-address-types=InternalIP",
		"--profiling=false",
	}})
	if err != nil {
		return err
	}
	return c.waitFor(ctx, "kube-apiserver /readyz", "kube-apiserver", 2*time.Minute, func(ctx context.Context) (bool, error) {
		cs, err := c.clientset()
		if err != nil {
			return false, err
		}
		body, err := cs.Discovery().RESTClient().Get().AbsPath("/readyz").DoRaw(ctx)
		return err == nil && string(body) == "ok", err
	})
}

func (c *Cluster) startControllers(ctx context.Context) error {
	p := c.cfg.ports()
	pki := func(f string) string { return c.path("pki", f) }
	cmKubeconfig := c.path("kubeconfigs", "controller-manager.kubeconfig")
	err := c.start(process{name: "kube-controller-manager", path: c.bins.controllerManager, args: []string{
		"--kubeconfig=" + cmKubeconfig,
		"--authentication-kubeconfig=" + cmKubeconfig,
		"--authorization-kubeconfig=" + cmKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", p.controllerManager),
		"--cert-dir=" + c.path("controller-manager"),
		"--use-service-account-credentials",
		"--service-account-private-key-file=" + pki("sa.key"),
		"--root-ca-file=" + pki("ca.crt"),
		"--cluster-signing-cert-file=" + pki("ca.crt"),
		"--cluster-signing-key-file=" + pki("ca.key"),
		"--service-cluster-ip-range=" + c.cfg.ServiceSubnet,
		"--leader-elect=false",
		"--profiling=false",
	}})
	if err != nil {
		return err
	}
	schedKubeconfig := c.path("kubeconfigs", "scheduler.kubeconfig")
	err = c.start(process{name: "kube-scheduler", path: c.bins.scheduler, args: []string{
		"--kubeconfig=" + schedKubeconfig,
		"--authentication-kubeconfig=" + schedKubeconfig,
		"--authorization-kubeconfig=" + schedKubeconfig,
		"--bind-address=127.0.0.1", fmt.Sprintf("--secure-port=%d", p.scheduler),
		"--cert-dir=" + c.path("scheduler"),
		"--leader-elect=false",
		"--profiling=false",
	}})
	if err != nil {
		return err
	}
	for name, port := range map[string]int{"kube-controller-manager": p.controllerManager, "kube-scheduler": p.scheduler} {
		url := fmt.Sprintf("https://127.0.0.1:%d/healthz", port)
		err := c.waitFor(ctx, name+" /healthz", name, time.Minute, func(ctx context.Context) (bool, error) {
			body, err := get(ctx, selfSignedClient, url)
			return body == "ok", err
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// selfSignedClient probes the /healthz endpoints that components serve with
// certificates they generate themselves; it only ever talks to loopback.
var selfSignedClient = &http.Client{
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // loopback health probe of a self-signed endpoint
	Timeout:   5 * time.Second,
}

func get(ctx context.Context, client *http.Client, url string) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return "", err
	}
	resp, err := client.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<16))
	if resp.StatusCode != http.StatusOK {
		return string(body), fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return strings.TrimSpace(string(body)), err
}

// writeFile writes content to path unless it holds it already: a running
// kube-proxy exits when its configuration file is written, even unchanged,
// and a second Up must leave it running.
func writeFile(path, content string) error {
	if old, err := os.ReadFile(path); err == nil && string(old) == content {
		return nil
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	return os.WriteFile(path, []byte(content), 0o644)
}
