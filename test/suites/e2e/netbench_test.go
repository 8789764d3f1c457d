package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/env/stack"
)

// benchServePort is where the plain pods serve the bench pages.
const benchServePort = 8080

// netPath is one way a guest is reached: the pod network (passt) or a NAD.
type netPath struct {
	name string
	nad  string // "" for the pod network
}

// BenchmarkGuestNetwork measures, for each way into a guest — the pod
// network (passt), the bridge L2 and the macvlan L2 — the latency of a
// small HTTP GET on a new connection (median of 30) and the throughput of
// 16 MiB GETs, from a client pod on the other node, to a VM's guest
// (busybox httpd) and, side by side in the same run, to a plain pod on the
// same path and node (podvirt-probe); it reports the guest/pod ratios.
// Guests run under TCG here, which the ratios show:
//
//	go test -run '^$' -bench GuestNetwork -benchtime 1x -timeout 60m ./test/suites/e2e/
func BenchmarkGuestNetwork(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	nodes := st.Cluster.Nodes()
	server, client := nodes[0].Name, nodes[len(nodes)-1].Name
	paths := []netPath{{"pod", ""}, {"bridge", stack.VMNetwork}, {"macvlan", stack.MacvlanNetwork}}
	if err := st.Cluster.ImportProbe(ctx); err != nil {
		b.Fatal(err)
	}
	for _, p := range paths {
		vm := benchVM("netbench-"+p.name, p, server)
		b.Cleanup(func() { removeVM(b, vm.Name) })
		if err := st.Client.Create(ctx, vm); err != nil {
			b.Fatalf("creating vm %s: %v", vm.Name, err)
		}
		srv := benchPod("netbench-srv-"+p.name, p, server, corev1.EnvVar{Name: "PROBE_HTTP_SERVE", Value: fmt.Sprintf(":%d", benchServePort)})
		b.Cleanup(func() { _ = st.Client.Delete(context.Background(), srv) })
		if err := st.Client.Create(ctx, srv); err != nil {
			b.Fatalf("creating pod %s: %v", srv.Name, err)
		}
	}
	for range b.N {
		for _, p := range paths {
			guestURL := fmt.Sprintf("http://%s", stack.HostPort(benchGuestAddress(ctx, b, "netbench-"+p.name, p), stack.VMPort))
			podURL := fmt.Sprintf("http://%s", stack.HostPort(benchPodAddress(ctx, b, "netbench-srv-"+p.name, p), benchServePort))
			cl := benchPod("netbench-client-"+p.name, p, client,
				corev1.EnvVar{Name: "PROBE_HTTP_BENCH", Value: guestURL + " " + podURL},
				corev1.EnvVar{Name: "PROBE_CONNECT_WITHIN", Value: "5m"}) // the guest's httpd starts after its boot
			_, logs, err := st.Cluster.RunToCompletion(ctx, cl, 15*time.Minute)
			_ = st.Client.Delete(context.Background(), cl)
			if err != nil {
				b.Fatalf("%s: client: %v", p.name, err)
			}
			guest, pod := benchResult(b, logs, guestURL), benchResult(b, logs, podURL)
			b.ReportMetric(guest.latency, p.name+"-guest-latency-ms")
			b.ReportMetric(pod.latency, p.name+"-pod-latency-ms")
			b.ReportMetric(guest.latency/pod.latency, p.name+"-latency-guest/pod")
			b.ReportMetric(guest.throughput, p.name+"-guest-Mbps")
			b.ReportMetric(pod.throughput, p.name+"-pod-Mbps")
			b.ReportMetric(guest.throughput/pod.throughput, p.name+"-throughput-guest/pod")
			b.Logf("%s: latency guest %.2f ms, pod %.2f ms (guest/pod %.2f); throughput guest %.0f Mbit/s, pod %.0f Mbit/s (guest/pod %.3f)",
				p.name, guest.latency, pod.latency, guest.latency/pod.latency, guest.throughput, pod.throughput, guest.throughput/pod.throughput)
		}
	}
}

// benchVM is a VM on node with its NIC on p, serving the bench pages:
// a small index and a 16 MiB file.
func benchVM(name string, p netPath, node string) *v1.VirtualMachine {
	vm := stack.VM(name, v1.RunStrategyAlways)
	if p.nad != "" {
		vm = stack.VMOn(name, v1.RunStrategyAlways, p.nad)
	}
	spec := &vm.Spec.Template.Spec
	spec.NodeSelector = map[string]string{corev1.LabelHostname: node}
	if p.nad == "" {
		spec.Networks = []v1.Network{{Name: v1.DefaultPodNetwork, NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
		spec.Domain.Devices.Interfaces = []v1.Interface{{Name: v1.DefaultPodNetwork, Ports: []v1.Port{{Name: "http", Port: stack.VMPort}}}}
	}
	for i := range spec.Volumes {
		if spec.Volumes[i].CloudInitNoCloud != nil {
			spec.Volumes[i].CloudInitNoCloud.UserData = fmt.Sprintf("#cloud-config\nruncmd:\n  - echo hello from %s > /tmp/index.html\n  - dd if=/dev/zero of=/tmp/big bs=1M count=16\n  - httpd -p %d -h /tmp\n", name, stack.VMPort)
		}
	}
	return vm
}

// benchPod is a probe pod on node, on p (an L2 path: the NAD's pod twin).
func benchPod(name string, p netPath, node string, env ...corev1.EnvVar) *corev1.Pod {
	var annotations map[string]string
	if p.nad != "" {
		annotations = map[string]string{v1.MultusNetworksAnnotation: stack.PodNetwork(p.nad)}
	}
	pod := cluster.ProbePod(name, annotations)
	pod.Namespace = stack.Namespace
	pod.Spec.NodeName = node
	pod.Spec.Containers[0].Env = env
	return pod
}

// benchGuestAddress waits for the VM's guest address on p.
func benchGuestAddress(ctx context.Context, b *testing.B, name string, p netPath) string {
	var addr string
	err := stack.Poll(ctx, 15*time.Minute, func() (bool, error) {
		vmi, err := getVMI(ctx, name)
		if err != nil {
			return false, client.IgnoreNotFound(err)
		}
		if vmi.Status.Phase != v1.Running {
			return false, nil
		}
		if p.nad != "" {
			addr = stack.GuestIP(vmi)
			return addr != "", nil
		}
		for _, i := range vmi.Status.Interfaces {
			if i.Name == v1.DefaultPodNetwork && i.IP != "" {
				addr = i.IP
			}
		}
		return addr != "", nil
	})
	if err != nil {
		b.Fatalf("vm %s: no address on %s: %v", name, p.name, err)
	}
	return addr
}

// benchPodAddress waits for the running pod's address on p: its pod IP,
// or the one Multus reports for the NAD's twin.
func benchPodAddress(ctx context.Context, b *testing.B, name string, p netPath) string {
	var addr string
	err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		pod := &corev1.Pod{}
		if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: name}, pod); err != nil {
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			return false, err
		}
		if pod.Status.Phase != corev1.PodRunning {
			return false, nil
		}
		if p.nad == "" {
			addr = pod.Status.PodIP
			return addr != "", nil
		}
		var status []struct {
			Name string   `json:"name"`
			IPs  []string `json:"ips"`
		}
		if err := json.Unmarshal([]byte(pod.Annotations[v1.MultusNetworkStatusAnnotation]), &status); err != nil {
			return false, nil // not written yet
		}
		for _, s := range status {
			if strings.HasSuffix(s.Name, "/"+stack.PodNetwork(p.nad)) && len(s.IPs) > 0 {
				addr = s.IPs[0]
			}
		}
		return addr != "", nil
	})
	if err != nil {
		b.Fatalf("pod %s: no address on %s: %v", name, p.name, err)
	}
	return addr
}

type benchNumbers struct{ latency, throughput float64 }

// benchResult reads podvirt-probe's line for url.
func benchResult(b *testing.B, logs, url string) benchNumbers {
	for line := range strings.Lines(logs) {
		f := strings.Fields(line)
		if len(f) != 4 || f[0] != "bench" || f[1] != url {
			continue
		}
		lat, err1 := strconv.ParseFloat(strings.TrimPrefix(f[2], "latency_ms="), 64)
		tp, err2 := strconv.ParseFloat(strings.TrimPrefix(f[3], "throughput_mbps="), 64)
		if err1 == nil && err2 == nil {
			return benchNumbers{lat, tp}
		}
	}
	b.Fatalf("no bench line for %s in the client's log:\n%s", url, logs)
	return benchNumbers{}
}
