package cluster

import (
	"context"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// corednsPlugins are all the plugins CoreDNS may have: those make deps
// builds it with, and those the kubernetes plugin registers (metadata,
// prometheus, transfer; no Corefile line uses them). None sends a query
// anywhere: no forward, grpc, etcd, cloud DNS, ...
var corednsPlugins = []string{"bind", "cache", "errors", "kubernetes", "log", "metadata", "prometheus", "ready", "transfer"}

// testClusterDNS: from a pod on each node (one reaches CoreDNS through
// its kube-proxy, the other, on the first node without one, through the
// ClusterIP on the host) a Service's names resolve to its ClusterIP and
// back, a headless Service's to its pod, which is then reached by name;
// a name outside the cluster domain fails at once, answered by the
// cluster's DNS alone, which cannot ask anyone else.
func testClusterDNS(ctx context.Context, t *testing.T, c *Cluster) {
	out, err := exec.CommandContext(ctx, c.bins.coredns, "-plugins").CombinedOutput()
	if err != nil {
		t.Fatalf("coredns -plugins: %v: %s", err, out)
	}
	plugins := strings.Fields(string(out))
	if !slices.Contains(plugins, "kubernetes") {
		t.Fatalf("coredns -plugins lists no kubernetes plugin:\n%s", out)
	}
	for _, p := range plugins {
		if !slices.Contains(corednsPlugins, p) {
			t.Errorf("CoreDNS has plugin %s; want only %v (make deps builds it with those)", p, corednsPlugins)
		}
	}

	nodes := c.Nodes()
	server := serverPod(ctx, t, c, "dns-web", nodes[0].Name, map[string]string{"app": "dns-web"}, nil)
	cs, err := c.clientset()
	if err != nil {
		t.Fatal(err)
	}
	services := cs.CoreV1().Services("default")
	svc, err := services.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web"},
		Spec: corev1.ServiceSpec{
			Selector: map[string]string{"app": "dns-web"},
			Ports:    []corev1.ServicePort{{Port: 80, TargetPort: intstr.FromInt32(8080)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := services.Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "web-headless"},
		Spec: corev1.ServiceSpec{
			ClusterIP: corev1.ClusterIPNone,
			Selector:  map[string]string{"app": "dns-web"},
			Ports:     []corev1.ServicePort{{Port: 8080}},
		},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	clusterIP, podIP, dnsIP := svc.Spec.ClusterIP, server.Status.PodIP, c.DNSServiceIP().String()
	want := []string{
		"resolv.conf nameserver " + dnsIP + "\n",
		"resolve web.default.svc.cluster.local: " + clusterIP + "\n",
		"resolve web.default: " + clusterIP + "\n",
		"resolve web-headless.default.svc.cluster.local: " + podIP + "\n",
		"resolve " + clusterIP + ": web.default.svc.cluster.local.\n",
		"connect web-headless.default:8080: ok",
	}
	// Go's resolver reports the one server it asked.
	refused := regexp.MustCompile(`unresolvable example\.com: lookup example\.com on ` + regexp.QuoteMeta(dnsIP) + `:53: .* in (\d+) ms`)
	for _, n := range nodes {
		pod := ProbePod("dns-from-"+n.Name, nil)
		pod.Spec.NodeName = n.Name
		pod.Spec.Containers[0].Env = []corev1.EnvVar{
			{Name: "PROBE_RESOLVE", Value: "web.default.svc.cluster.local web.default web-headless.default.svc.cluster.local " + clusterIP},
			{Name: "PROBE_UNRESOLVABLE", Value: "example.com"},
			{Name: "PROBE_CONNECT", Value: "web-headless.default:8080"},
			// A new Service reaches CoreDNS and kube-proxy a moment later.
			{Name: "PROBE_CONNECT_WITHIN", Value: "60s"},
		}
		_, logs, err := c.RunToCompletion(ctx, pod, 3*time.Minute)
		if err != nil {
			t.Errorf("node %s: %v\nCoreDNS's log ends with:\n%s", n.Name, err, tail(c.path("logs", "coredns.log"), 20))
			continue
		}
		for _, w := range want {
			if !strings.Contains(logs, w) {
				t.Errorf("node %s: the pod's log has no %q:\n%s", n.Name, strings.TrimSpace(w), logs)
			}
		}
		if got := strings.Count(logs, "resolv.conf nameserver "); got != 1 {
			t.Errorf("node %s: the pod has %d nameservers, want only the cluster's %s:\n%s", n.Name, got, dnsIP, logs)
		}
		m := refused.FindStringSubmatch(logs)
		if m == nil {
			t.Errorf("node %s: example.com did not fail from the cluster's DNS (%s); the pod's log:\n%s", n.Name, dnsIP, logs)
			continue
		}
		if ms, _ := strconv.Atoi(m[1]); ms > 2000 {
			t.Errorf("node %s: example.com took %d ms to fail, want an answer at once (no query waiting on anything beyond the machine)", n.Name, ms)
		}
		t.Logf("node %s: %s", n.Name, m[0])
	}
}
