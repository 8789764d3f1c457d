package e2e

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestPodNetworkService puts a VM whose only NIC is on the pod network,
// forwarding its web port, behind a NodePort Service made by `podvirtctl
// expose`, and fetches the guest's page from a pod through the Service's
// ClusterIP and through the node port: passt forwards the launcher pod's
// port into the guest, as KubeVirt's masquerade binding does.
func TestPodNetworkService(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const name = "served"
	vm := stack.VM(name, v1.RunStrategyAlways)
	tmpl := &vm.Spec.Template
	tmpl.Spec.Networks = []v1.Network{{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
	tmpl.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "default", Ports: []v1.Port{{Name: "http", Port: stack.VMPort}}}}
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	waitVMIRunning(ctx, t, name)

	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, "expose", "vm", name, "-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig(),
		"--port", "80", "--target-port", strconv.Itoa(stack.VMPort), "--type", "NodePort").CombinedOutput()
	if err != nil {
		t.Fatalf("podvirtctl expose: %v: %s", err, out)
	}
	svc := &corev1.Service{}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: name}, svc); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = st.Client.Delete(context.Background(), svc) })

	// From the second node: its own kube-proxy routes Services (the test
	// cluster's first node runs none).
	node := st.Cluster.Nodes()[len(st.Cluster.Nodes())-1]
	urls := []string{
		fmt.Sprintf("http://%s/index.html", net.JoinHostPort(svc.Spec.ClusterIP, "80")),
		fmt.Sprintf("http://%s/index.html", net.JoinHostPort(node.IP.String(), strconv.Itoa(int(svc.Spec.Ports[0].NodePort)))),
	}
	if err := st.Cluster.ImportProbe(ctx); err != nil {
		t.Fatal(err)
	}
	pod := cluster.ProbePod("fetch-"+name, nil)
	pod.Namespace = stack.Namespace
	pod.Spec.NodeName = node.Name
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_HTTP_GET", Value: strings.Join(urls, " ")}, {Name: "PROBE_CONNECT_WITHIN", Value: "2m"}}
	t.Cleanup(func() { _ = st.Client.Delete(context.Background(), pod) })
	_, logs, err := st.Cluster.RunToCompletion(ctx, pod, 4*time.Minute)
	for _, u := range urls {
		if want := "get " + u + ": 200 OK: hello from " + name; !strings.Contains(logs, want) {
			t.Errorf("no %q in the probe's log (%v):\n%s", want, err, logs)
		}
	}

	// Through the API server: `podvirtctl port-forward`, listening here,
	// and with --stdio, as ssh's ProxyCommand uses it.
	kube := []string{"-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig()}
	stdio := exec.CommandContext(ctx, bin, append(kube, "port-forward", "--stdio", name, strconv.Itoa(stack.VMPort))...)
	stdio.Stdin = strings.NewReader("GET /index.html HTTP/1.0\r\n\r\n")
	if out, err := stdio.CombinedOutput(); err != nil || !strings.Contains(string(out), "hello from "+name) {
		t.Errorf("port-forward --stdio: %v:\n%s", err, out)
	}
	local := freeLoopbackPort(t)
	fwd := exec.CommandContext(ctx, bin, append(kube, "port-forward", "vm/"+name, fmt.Sprintf("%d:%d", local, stack.VMPort))...)
	var fwdOut strings.Builder
	fwd.Stdout, fwd.Stderr = &fwdOut, &fwdOut
	if err := fwd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = fwd.Process.Kill(); _ = fwd.Wait() }()
	var body string
	err = stack.Poll(ctx, time.Minute, func() (bool, error) {
		resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%d/index.html", local))
		if err != nil {
			return false, nil // not listening yet
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		body = string(b)
		return true, nil
	})
	if err != nil || !strings.Contains(body, "hello from "+name) {
		t.Errorf("GET through port-forward: %q, %v; port-forward said:\n%s", body, err, fwdOut.String())
	}
}

// freeLoopbackPort is a TCP port free on 127.0.0.1 a moment ago.
func freeLoopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
