package e2e

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestPodNetworkService puts a VM whose only NIC is on the pod network,
// forwarding its web port, behind a NodePort Service that selects it by
// label, and fetches the guest's page from a pod through the Service's
// ClusterIP and through the node port: passt forwards the launcher pod's
// port into the guest, as KubeVirt's masquerade binding does.
func TestPodNetworkService(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const name = "served"
	vm := stack.VM(name, v1.RunStrategyAlways)
	tmpl := &vm.Spec.Template
	tmpl.ObjectMeta.Labels = map[string]string{"podvirt.io/e2e-service": name}
	tmpl.Spec.Networks = []v1.Network{{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
	tmpl.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "default", Ports: []v1.Port{{Name: "http", Port: stack.VMPort}}}}
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	err := stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		vmi := &v1.VirtualMachineInstance{}
		if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: name}, vmi); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return vmi.Status.Phase == v1.Running, nil
	})
	if err != nil {
		t.Fatalf("vm %s is not Running: %v", name, err)
	}

	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: stack.Namespace},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeNodePort,
			Selector: map[string]string{"podvirt.io/e2e-service": name},
			Ports:    []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(stack.VMPort)}},
		},
	}
	if err := st.Client.Create(ctx, svc); err != nil {
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
}
