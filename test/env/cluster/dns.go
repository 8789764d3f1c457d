package cluster

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Cluster DNS is CoreDNS (built by `make deps` with only the plugins the
// Corefile below names) on the host, like the control plane, answering
// from the API server for ClusterDomain and the reverse zones of the
// Service and pod CIDRs. It has no forward plugin: any other name gets
// REFUSED from CoreDNS itself, so no query leaves the machine.
//
// It listens on port 53 of the node IP and of the kube-dns Service's
// ClusterIP, which is also a local address of the underlay bridge. Pods on
// a node with kube-proxy reach it through the Service (the ClusterIP is
// rewritten to the node IP, the Service's one endpoint); pods on a first
// node without kube-proxy (a cluster beside another, see
// Config.KubeProxy) reach the ClusterIP itself on the host.

// ClusterDomain is the cluster's DNS domain: Services are
// NAME.NAMESPACE.svc.cluster.local.
const ClusterDomain = "cluster.local"

// dnsService is the cluster DNS's Service, named as on any cluster.
const dnsService, dnsNamespace = "kube-dns", "kube-system"

// DNSServiceIP is the kube-dns Service's ClusterIP, the nameserver every
// pod gets: the 10th address of the Service CIDR, as kubeadm picks.
func (c *Cluster) DNSServiceIP() net.IP {
	_, svc, _ := net.ParseCIDR(c.cfg.ServiceSubnet)
	return offsetIP(svc.IP, 10)
}

// corefile serves the cluster's zones, and nothing else, on the node IP
// and the kube-dns ClusterIP.
func (c *Cluster) corefile() string {
	return fmt.Sprintf(`%s %s %s {
	bind %s %s
	ready 127.0.0.1:%d
	errors
	log
	cache 30
	kubernetes {
		kubeconfig %s
	}
}
`, ClusterDomain, c.cfg.ServiceSubnet, c.cfg.PodSubnet, c.cfg.NodeIP, c.DNSServiceIP(), c.cfg.ports().dnsReady,
		c.path("kubeconfigs", "coredns.kubeconfig"))
}

// corednsRBAC lets CoreDNS (user podvirt:coredns) read what its kubernetes
// plugin watches; nothing more.
func corednsRBAC() (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "podvirt:coredns"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "namespaces"}, Verbs: []string{"list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"list", "watch"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "podvirt:coredns"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "podvirt:coredns"}},
	}
	return role, binding
}

// startDNS gives the underlay bridge the kube-dns ClusterIP, starts
// CoreDNS, waits until it has read the API server and creates the kube-dns
// Service with the node IP as its endpoint.
func (c *Cluster) startDNS(ctx context.Context) error {
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	role, binding := corednsRBAC()
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRole %s: %w", role.Name, err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRoleBinding %s: %w", binding.Name, err)
	}
	bridge, err := netlink.LinkByName(c.link("node"))
	if err != nil {
		return fmt.Errorf("the underlay bridge: %w", err)
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: c.DNSServiceIP(), Mask: net.CIDRMask(32, 32)}}
	if err := netlink.AddrReplace(bridge, addr); err != nil {
		return fmt.Errorf("add %s to %s: %w", addr, c.link("node"), err)
	}
	conf := c.path("coredns", "Corefile")
	if err := writeFile(conf, c.corefile()); err != nil {
		return err
	}
	if err := c.start(process{name: "coredns", path: c.bins.coredns, args: []string{"-conf", conf, "-dns.port", "53"}}); err != nil {
		return err
	}
	ready := fmt.Sprintf("http://127.0.0.1:%d/ready", c.cfg.ports().dnsReady)
	err = c.waitFor(ctx, "CoreDNS /ready", "coredns", time.Minute, func(ctx context.Context) (bool, error) {
		body, err := get(ctx, http.DefaultClient, ready)
		return body == "OK", err
	})
	if err != nil {
		return err
	}
	return c.ensureDNSService(ctx)
}

// ensureDNSService creates kube-system/kube-dns at DNSServiceIP and its
// EndpointSlice (it has no selector: CoreDNS is no pod) holding the node
// IP, where CoreDNS listens.
func (c *Cluster) ensureDNSService(ctx context.Context) error {
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	labels := map[string]string{"k8s-app": "kube-dns"}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: dnsService, Namespace: dnsNamespace, Labels: labels},
		Spec: corev1.ServiceSpec{
			ClusterIP: c.DNSServiceIP().String(),
			Ports: []corev1.ServicePort{
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53, TargetPort: intstr.FromInt32(53)},
				{Name: "dns-tcp", Protocol: corev1.ProtocolTCP, Port: 53, TargetPort: intstr.FromInt32(53)},
			},
		},
	}
	// Looked up first: creating it again fails on its taken ClusterIP
	// before its name.
	got, err := cs.CoreV1().Services(dnsNamespace).Get(ctx, dnsService, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		got, err = cs.CoreV1().Services(dnsNamespace).Create(ctx, svc, metav1.CreateOptions{})
	}
	if err != nil {
		return fmt.Errorf("create Service %s/%s at %s: %w", dnsNamespace, dnsService, svc.Spec.ClusterIP, err)
	}
	if got.Spec.ClusterIP != svc.Spec.ClusterIP {
		return fmt.Errorf("the cluster DNS's Service %s/%s has ClusterIP %s, but the kubelets give pods %s: delete it and run up again", dnsNamespace, dnsService, got.Spec.ClusterIP, svc.Spec.ClusterIP)
	}
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	slice := &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: dnsService, Namespace: dnsNamespace, Labels: map[string]string{
			discoveryv1.LabelServiceName: dnsService,
			discoveryv1.LabelManagedBy:   "local-cluster.podvirt.io",
		}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{c.cfg.NodeIP.String()}, Conditions: discoveryv1.EndpointConditions{Ready: new(true)}}},
		Ports: []discoveryv1.EndpointPort{
			{Name: new("dns"), Protocol: &udp, Port: new(int32(53))},
			{Name: new("dns-tcp"), Protocol: &tcp, Port: new(int32(53))},
		},
	}
	if _, err := cs.DiscoveryV1().EndpointSlices(dnsNamespace).Create(ctx, slice, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create EndpointSlice %s/%s: %w", dnsNamespace, slice.Name, err)
	}
	return nil
}
