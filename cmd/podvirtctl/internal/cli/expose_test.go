package cli

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestExpose creates Services in front of VMs on a real API server: on the
// pod network, selecting the VM's launcher pods by its name, and on an L2
// network as an L2 Service; what cannot reach the guest is refused, saying
// what to do.
func TestExpose(t *testing.T) {
	ns := namespace(t)
	web := testVM(ns, "web", v1.RunStrategyHalted)
	spec := &web.Spec.Template.Spec
	spec.Networks = []v1.Network{
		{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}},
		{Name: "l2", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "podvirt-system/l2-bridge"}}},
	}
	spec.Domain.Devices.Interfaces = []v1.Interface{{Name: "default", Ports: []v1.Port{{Name: "http", Port: 8080}}}, {Name: "l2"}}
	create(t, web)
	create(t, testVM(ns, "nonet", v1.RunStrategyHalted))

	service := func(name string) *corev1.Service {
		t.Helper()
		svc := &corev1.Service{}
		if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, svc); err != nil {
			t.Fatal(err)
		}
		return svc
	}
	out, err := podvirtctl(t, ns, "expose", "vm", "web", "--port", "80", "--target-port", "8080", "--type", "NodePort")
	if err != nil || !strings.Contains(out, "service/web created") {
		t.Fatalf("expose on the pod network: %q, %v", out, err)
	}
	svc := service("web")
	if svc.Spec.Type != corev1.ServiceTypeNodePort || svc.Spec.Selector[v1.VMNameLabel] != "web" || len(svc.Spec.Selector) != 1 ||
		svc.Spec.Ports[0].Port != 80 || svc.Spec.Ports[0].TargetPort.IntValue() != 8080 || svc.Spec.Ports[0].NodePort == 0 {
		t.Errorf("pod network Service: %+v", svc.Spec)
	}

	out, err = podvirtctl(t, ns, "expose", "vm", "web", "--name", "web-l2", "--port", "80", "--l2-network", "podvirt-system/l2-bridge")
	if err != nil {
		t.Fatalf("expose on L2: %q, %v", out, err)
	}
	svc = service("web-l2")
	if svc.Spec.Selector != nil || svc.Annotations[v1.L2NetworkAnnotation] != "podvirt-system/l2-bridge" || svc.Annotations[v1.L2SelectorAnnotation] != v1.VMNameLabel+"=web" {
		t.Errorf("L2 Service: selector %v, annotations %v", svc.Spec.Selector, svc.Annotations)
	}

	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"vm", "web", "--port", "80", "--target-port", "8080"}, "service web exists"},
		{[]string{"vm", "web", "--name", "w2", "--port", "22"}, `add it to interfaces["default"].ports`},
		{[]string{"vm", "nonet", "--port", "80"}, "no interface on the pod network"},
		{[]string{"vm", "web", "--name", "w3", "--port", "80", "--l2-network", "other"}, "no interface on NAD other"},
		{[]string{"vm", "web", "--name", "w4", "--port", "80", "--l2-network", "l2-bridge", "--type", "NodePort"}, "an L2 Service is ClusterIP"},
		{[]string{"vm", "web", "--name", "w5"}, "--port 0"},
		{[]string{"vm", "web", "--name", "w6", "--port", "80", "--protocol", "sctp"}, `--protocol "sctp"`},
		{[]string{"vm", "missing", "--port", "80"}, "missing"},
	} {
		if out, err := podvirtctl(t, ns, append([]string{"expose"}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("expose %v: %q, %v; want an error saying %q", c.args, out, err, c.want)
		}
	}
}

// TestPortForwardRefuses: what cannot be forwarded is refused before any
// connection, saying what to do.
func TestPortForwardRefuses(t *testing.T) {
	ns := namespace(t)
	create(t, testVM(ns, "stopped", v1.RunStrategyHalted))
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"stopped", "8080:80"}, "start it with"},
		{[]string{"pod/stopped", "8080:80"}, "name a VM as NAME, vm/NAME or vmi/NAME"},
		{[]string{"stopped"}, "needs a VM and its ports"},
		{[]string{"--stdio", "stopped", "80", "81"}, "one with --stdio"},
	} {
		if out, err := podvirtctl(t, ns, append([]string{"port-forward"}, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("port-forward %v: %q, %v; want an error saying %q", c.args, out, err, c.want)
		}
	}
}
