package cluster

import (
	"context"
	"fmt"
	"net"
	"os"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// identities are the client certificates of the cluster's components; the
// API server maps CN to the user and O to its groups.
var identities = []struct{ file, user, group string }{
	{"admin", "kubernetes-admin", "system:masters"},
	{"controller-manager", "system:kube-controller-manager", ""},
	{"scheduler", "system:kube-scheduler", ""},
	{"kube-proxy", "system:kube-proxy", ""},
	{"multus", "podvirt:multus", ""},
	{"whereabouts", "podvirt:whereabouts", ""},
	{"coredns", "podvirt:coredns", ""},
	{"apiserver-kubelet-client", "kube-apiserver-kubelet-client", "system:masters"},
}

func (c *Cluster) certRequests() []certRequest {
	_, svc, _ := net.ParseCIDR(c.cfg.ServiceSubnet)
	svcIP := make(net.IP, 4)
	copy(svcIP, svc.IP.To4())
	svcIP[3]++ // the first ClusterIP is the API server's
	reqs := []certRequest{
		{
			file: "apiserver", cn: "kube-apiserver", server: true,
			dns: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"},
			ips: []net.IP{c.cfg.NodeIP, net.IPv4(127, 0, 0, 1), svcIP},
		},
	}
	for _, n := range c.Nodes() {
		reqs = append(reqs,
			certRequest{
				file: kubeletCert(n, "kubelet-serving"), cn: "system:node:" + n.Name, orgs: []string{"system:nodes"}, server: true,
				dns: []string{n.Name, "localhost"}, ips: []net.IP{n.IP, net.IPv4(127, 0, 0, 1)},
			},
			certRequest{file: kubeletCert(n, "kubelet"), cn: "system:node:" + n.Name, orgs: []string{"system:nodes"}, client: true},
		)
	}
	for _, id := range identities {
		r := certRequest{file: id.file, cn: id.user, client: true}
		if id.group != "" {
			r.orgs = []string{id.group}
		}
		reqs = append(reqs, r)
	}
	return reqs
}

// kubeletCert names node n's kubelet certificate (base "kubelet" or
// "kubelet-serving"): the first node's keeps the single-node name.
func kubeletCert(n Node, base string) string { return processName(base, n) }

func (c *Cluster) server() string {
	return fmt.Sprintf("https://%s", net.JoinHostPort(c.cfg.NodeIP.String(), fmt.Sprint(c.cfg.ports().apiserver)))
}

// writeCredentials writes the PKI and one kubeconfig per component; the
// admin kubeconfig goes to Dir/kubeconfig.
func (c *Cluster) writeCredentials(context.Context) error {
	if err := writePKI(c.path("pki"), c.certRequests()); err != nil {
		return err
	}
	configs := map[string]string{ // kubeconfig path → certificate base name
		c.Kubeconfig(): "admin",
		c.path("kubeconfigs", "controller-manager.kubeconfig"): "controller-manager",
		c.path("kubeconfigs", "scheduler.kubeconfig"):          "scheduler",
		c.path("kubeconfigs", "kube-proxy.kubeconfig"):         "kube-proxy",
		c.path("kubeconfigs", "multus.kubeconfig"):             "multus",
		c.Whereabouts().Kubeconfig:                             "whereabouts",
		c.path("kubeconfigs", "coredns.kubeconfig"):            "coredns",
	}
	for _, n := range c.Nodes() {
		configs[c.path("kubeconfigs", kubeletCert(n, "kubelet")+".kubeconfig")] = kubeletCert(n, "kubelet")
	}
	for path, cert := range configs {
		if _, err := os.Stat(path); err == nil {
			continue
		}
		ns := "default"
		if cert == "whereabouts" {
			ns = whereaboutsNamespace // where it keeps its pools and lease
		}
		if err := c.writeKubeconfig(path, cert, ns); err != nil {
			return fmt.Errorf("kubeconfig %s: %w", path, err)
		}
	}
	return nil
}

func (c *Cluster) writeKubeconfig(path, cert, namespace string) error {
	name := "podvirt-" + c.cfg.Name
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[name] = &clientcmdapi.Cluster{Server: c.server(), CertificateAuthority: c.path("pki", "ca.crt")}
	cfg.AuthInfos[cert] = &clientcmdapi.AuthInfo{
		ClientCertificate: c.path("pki", cert+".crt"),
		ClientKey:         c.path("pki", cert+".key"),
	}
	cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: cert, Namespace: namespace}
	cfg.CurrentContext = name
	return clientcmd.WriteToFile(*cfg, path)
}
