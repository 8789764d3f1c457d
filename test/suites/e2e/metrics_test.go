package e2e

import (
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/chart"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestMetrics scrapes the metrics endpoints of the controller, every
// handler and every CSI node plugin (through the API server's pod proxy, as
// Prometheus in the cluster would reach them) and finds a running VM's own
// series on the handler of its node, labelled by namespace, name and node,
// and every series the chart's Grafana dashboard reads.
func TestMetrics(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const name = "metered"
	createVM(ctx, t, stack.VM(name, v1.RunStrategyAlways))
	t.Cleanup(func() { deleteVM(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 10*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := st.Cluster.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	scrape := func(pod corev1.Pod, port string) (string, error) {
		b, err := cs.CoreV1().Pods(pod.Namespace).ProxyGet("http", pod.Name, port, "/metrics", nil).DoRaw(ctx)
		return string(b), err
	}
	pods := &corev1.PodList{}
	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "controller"}); err != nil || len(pods.Items) == 0 {
		t.Fatalf("no controller pod: %v", err)
	}
	var served strings.Builder // every endpoint's exposition
	out, err := scrape(pods.Items[0], "8080")
	if err != nil || !strings.Contains(out, "podvirt_vmi_phase_count{") {
		t.Errorf("controller %s /metrics: no podvirt_vmi_phase_count (%v)", pods.Items[0].Name, err)
	}
	served.WriteString(out)
	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "csi-node"}); err != nil || len(pods.Items) != len(st.Cluster.Nodes()) {
		t.Fatalf("%d CSI node pods for %d nodes (%v)", len(pods.Items), len(st.Cluster.Nodes()), err)
	}
	for _, pod := range pods.Items {
		out, err := scrape(pod, "9811")
		if err != nil || !strings.Contains(out, `podvirt_csi_cache_lookups_total{result="hit"}`) {
			t.Errorf("CSI node plugin %s on %s /metrics: no cache lookups (%v)", pod.Name, pod.Spec.NodeName, err)
		}
		served.WriteString(out)
	}

	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "handler"}); err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) != len(st.Cluster.Nodes()) {
		t.Errorf("%d handler pods for %d nodes", len(pods.Items), len(st.Cluster.Nodes()))
	}
	labels := fmt.Sprintf(`name=%q,namespace=%q,node=%q`, name, stack.Namespace, vmi.Status.NodeName)
	for _, pod := range pods.Items {
		var out string
		// Counters move once the guest has run a while: scrape until the
		// VM's series are there (its node's handler) or the endpoint
		// answered (the others).
		err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
			out, err = scrape(pod, "9812")
			return err == nil && (pod.Spec.NodeName != vmi.Status.NodeName ||
				strings.Contains(out, "podvirt_vmi_vcpu_seconds_total{") && strings.Contains(out, "podvirt_vmi_memory_available_bytes{")), nil
		})
		if err != nil {
			t.Errorf("handler %s on %s: /metrics: %v", pod.Name, pod.Spec.NodeName, err)
			continue
		}
		served.WriteString(out)
		if pod.Spec.NodeName != vmi.Status.NodeName {
			if strings.Contains(out, `name="`+name+`"`) {
				t.Errorf("handler %s on %s reports vm %s, which runs on %s", pod.Name, pod.Spec.NodeName, name, vmi.Status.NodeName)
			}
			continue
		}
		for _, metric := range []string{
			"podvirt_vmi_vcpu_seconds_total", "podvirt_vmi_cpu_usage_seconds_total", "podvirt_vmi_memory_resident_bytes",
			"podvirt_vmi_memory_available_bytes", "podvirt_vmi_memory_unused_bytes",
			"podvirt_vmi_storage_read_traffic_bytes_total", "podvirt_vmi_network_receive_bytes_total",
		} {
			if !hasSeries(out, metric, labels) {
				t.Errorf("handler %s on %s: no %s series with %s", pod.Name, pod.Spec.NodeName, metric, labels)
			}
		}
	}

	dashboard, err := os.ReadFile(chart.DashboardFile())
	if err != nil {
		t.Fatal(err)
	}
	exprs, err := chart.DashboardQueries(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	for metric := range chart.DashboardMetrics(exprs) {
		if !hasSeries(served.String(), metric, "") && !eventOnly[metric] {
			t.Errorf("the Grafana dashboard reads %s, which no endpoint serves", metric)
		}
	}
}

// eventOnly are the series the dashboard reads that exist only once their
// event happened (their label values are not known before).
var eventOnly = map[string]bool{
	"podvirt_csi_import_mirror_failovers_total": true, // by the mirror left
}

// hasSeries reports whether the exposition text has a sample of metric
// whose labels include every one of want (a comma-joined k="v" list; empty:
// any sample).
func hasSeries(exposition, metric, want string) bool {
	for line := range strings.Lines(exposition) {
		rest, ok := strings.CutPrefix(line, metric+"{")
		if !ok {
			if want == "" && strings.HasPrefix(line, metric+" ") {
				return true // a series without labels
			}
			continue
		}
		all := true
		for _, kv := range strings.Split(want, ",") {
			all = all && strings.Contains(rest, kv)
		}
		if all {
			return true
		}
	}
	return false
}
