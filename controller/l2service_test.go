package controller

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// l2VMI is a VMI named name in ns with labels, on the pod network and, when
// address is not empty, on the NAD "l2" with that reserved address.
func l2VMI(ns, name, address string, labels map[string]string) *v1alpha1.VirtualMachineInstance {
	spec := testVM(ns, name, "").Spec.Template.Spec
	if address != "" {
		spec = l2VM(ns, name, "").Spec.Template.Spec
		spec.Domain.Devices.Interfaces[1].IPAddress = address
	}
	return &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
		Spec:       spec,
	}
}

// l2Service is a Service in ns without spec.selector, made an L2 Service
// on network by the annotations when network is not empty.
func l2Service(ns, name, network, selector string) *corev1.Service {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{
			{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080)},
			{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53},
		}},
	}
	if network != "" {
		svc.Annotations = map[string]string{v1alpha1.L2NetworkAnnotation: network, v1alpha1.L2SelectorAnnotation: selector}
	}
	return svc
}

// setInterfaces writes status.interfaces, as the node daemon does.
func setInterfaces(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, ifaces ...v1alpha1.VirtualMachineInstanceNetworkInterface) {
	t.Helper()
	patchVMIStatus(t, vmi, "interfaces", ifaces)
}

// getSlice returns the EndpointSlice, or nil when there is none.
func getSlice(t *testing.T, ns, name string) *discoveryv1.EndpointSlice {
	t.Helper()
	s := &discoveryv1.EndpointSlice{}
	err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, s)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return s
}

// endpointsSummary is the slice's endpoints as "vmi address r/s/t" lines,
// r, s, t being ready, serving, terminating as 0 or 1, sorted.
func endpointsSummary(s *discoveryv1.EndpointSlice) string {
	if s == nil {
		return "no slice"
	}
	bit := func(b *bool) int {
		if b != nil && *b {
			return 1
		}
		return 0
	}
	var lines []string
	for _, e := range s.Endpoints {
		name := "?"
		if e.TargetRef != nil {
			name = e.TargetRef.Name
		}
		c := e.Conditions
		lines = append(lines, fmt.Sprintf("%s %s %d/%d/%d", name, strings.Join(e.Addresses, ","), bit(c.Ready), bit(c.Serving), bit(c.Terminating)))
	}
	slices.Sort(lines)
	return strings.Join(lines, "; ")
}

// waitEndpoints waits until the slice's endpointsSummary is want, and
// returns the slice.
func waitEndpoints(t *testing.T, ns, name, want string) *discoveryv1.EndpointSlice {
	t.Helper()
	var s *discoveryv1.EndpointSlice
	polltest.Eventually(t, wait, fmt.Sprintf("EndpointSlice %s holds %q", name, want), func() (bool, string) {
		s = getSlice(t, ns, name)
		got := endpointsSummary(s)
		return got == want, got
	})
	return s
}

// An L2 Service's slice holds the addresses on its network of the VMIs its
// selector picks, the node daemon's report before the reserved address,
// ready as the VMI is, and follows pause, address changes, label changes
// and deletion; it goes when the annotation does. A Service without the
// annotation gets none.
func TestL2Service(t *testing.T) {
	ns := namespace(t)
	l2NAD(t, ns, 10, 20)
	web := map[string]string{"app": "web"}
	create(t, l2Service(ns, "web", "l2", "app=web"))
	create(t, l2Service(ns, "plain", "", ""))
	headless := l2Service(ns, "web-headless", ns+"/l2", "app in (web)")
	headless.Spec.ClusterIP, headless.Spec.Ports = corev1.ClusterIPNone, nil
	create(t, headless)

	create(t, l2VMI(ns, "a", "192.168.50.10/24", web))
	create(t, l2VMI(ns, "b", "192.168.50.11/24", web))
	create(t, l2VMI(ns, "c", "192.168.50.12/24", map[string]string{"app": "other"}))
	create(t, l2VMI(ns, "pod-only", "", web)) // no interface on l2: left out
	a, b := waitVMI(t, ns, "a", "", ""), waitVMI(t, ns, "b", "", "")
	runVMI(t, a)
	runVMI(t, b) // reports only its pod network interface
	setInterfaces(t, a,
		v1alpha1.VirtualMachineInstanceNetworkInterface{Name: "default", IP: "10.0.0.5", IPs: []string{"10.0.0.5"}},
		// The link-local address is the guest's on every link: not served.
		v1alpha1.VirtualMachineInstanceNetworkInterface{Name: "l2", IP: "fe80::1", IPs: []string{"fe80::1", "192.168.50.30"}})

	const both = "a 192.168.50.30 1/1/0; b 192.168.50.11 1/1/0"
	s := waitEndpoints(t, ns, "web-l2", both)
	if s.AddressType != discoveryv1.AddressTypeIPv4 {
		t.Errorf("address type %s, want IPv4", s.AddressType)
	}
	if got := s.Labels[discoveryv1.LabelServiceName]; got != "web" {
		t.Errorf("label %s=%q, want web", discoveryv1.LabelServiceName, got)
	}
	if got := s.Labels[discoveryv1.LabelManagedBy]; got != v1alpha1.EndpointSliceManagedBy {
		t.Errorf("label %s=%q, want %s", discoveryv1.LabelManagedBy, got, v1alpha1.EndpointSliceManagedBy)
	}
	if o := metav1.GetControllerOf(s); o == nil || o.Kind != "Service" || o.Name != "web" {
		t.Errorf("slice controlled by %+v, want Service web", o)
	}
	var ports []string
	for _, p := range s.Ports {
		ports = append(ports, fmt.Sprintf("%s/%s/%d", *p.Name, *p.Protocol, *p.Port))
	}
	if got, want := strings.Join(ports, " "), "http/TCP/8080 dns/UDP/53"; got != want {
		t.Errorf("ports %s, want %s (the target ports)", got, want)
	}
	for _, e := range s.Endpoints {
		ref := e.TargetRef
		if ref.Kind != "VirtualMachineInstance" || ref.APIVersion != v1alpha1.GroupVersion.String() || ref.Namespace != ns || ref.UID == "" {
			t.Errorf("endpoint %v: targetRef %+v, want the VMI", e.Addresses, ref)
		}
		if e.NodeName == nil || *e.NodeName != "node-a" || e.Hostname == nil || *e.Hostname != ref.Name {
			t.Errorf("endpoint %v: node %v hostname %v, want node-a and %s", e.Addresses, e.NodeName, e.Hostname, ref.Name)
		}
	}
	if hs := waitEndpoints(t, ns, "web-headless-l2", both); len(hs.Ports) != 0 {
		t.Errorf("headless Service without ports: slice ports %+v", hs.Ports)
	}
	if s := getSlice(t, ns, "web-l2-ipv6"); s != nil {
		t.Errorf("an IPv6 slice for link-local addresses: %s", endpointsSummary(s))
	}
	// Settled: the slice is not rewritten over and over.
	rv := getSlice(t, ns, "web-l2").ResourceVersion
	polltest.Consistently(t, time.Second, "the slice unchanged", func() (bool, string) {
		return getSlice(t, ns, "web-l2").ResourceVersion == rv, "rewritten"
	})

	// Paused: not ready, not serving.
	setPausedAnnotation(t, a, true)
	setDomain(t, a, v1alpha1.DomainPaused, v1alpha1.DomainReasonPausedByUser)
	waitEndpoints(t, ns, "web-l2", "a 192.168.50.30 0/0/0; b 192.168.50.11 1/1/0")

	// The guest's address changes.
	setInterfaces(t, a, v1alpha1.VirtualMachineInstanceNetworkInterface{Name: "l2", IP: "192.168.50.31", IPs: []string{"192.168.50.31"}})
	waitEndpoints(t, ns, "web-l2", "a 192.168.50.31 0/0/0; b 192.168.50.11 1/1/0")

	// c comes under the selector: not running, so not ready, at its
	// reserved address.
	c := getVMI(t, ns, "c")
	patch := client.MergeFrom(c.DeepCopy())
	c.Labels["app"] = "web"
	if err := k8s.Patch(context.Background(), c, patch); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web-l2", "a 192.168.50.31 0/0/0; b 192.168.50.11 1/1/0; c 192.168.50.12 0/0/0")

	// b is deleted: it goes.
	if err := k8s.Delete(context.Background(), b); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web-l2", "a 192.168.50.31 0/0/0; c 192.168.50.12 0/0/0")

	// The annotation goes: so does the slice.
	svc := &corev1.Service{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "web"}, svc); err != nil {
		t.Fatal(err)
	}
	patch = client.MergeFrom(svc.DeepCopy())
	delete(svc.Annotations, v1alpha1.L2NetworkAnnotation)
	if err := k8s.Patch(context.Background(), svc, patch); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web-l2", "no slice")

	// Never annotated: never a slice.
	list := &discoveryv1.EndpointSliceList{}
	if err := k8s.List(context.Background(), list, client.InNamespace(ns), client.MatchingLabels{discoveryv1.LabelServiceName: "plain"}); err != nil {
		t.Fatal(err)
	}
	if len(list.Items) != 0 {
		t.Errorf("Service without the annotation has %d EndpointSlices", len(list.Items))
	}
}

// An L2 Service the controller cannot serve gets no slice and an event
// saying what to fix; fixed, it gets its slice.
func TestL2ServiceInvalid(t *testing.T) {
	ns := namespace(t)
	l2NAD(t, ns, 10, 20)
	create(t, l2VMI(ns, "a", "192.168.50.10/24", map[string]string{"app": "web"}))
	create(t, l2Service(ns, "web", "l2", "app=(web"))
	if note := waitEvent(t, ns, "web", ReasonL2ServiceInvalid); !strings.Contains(note, v1alpha1.L2SelectorAnnotation) {
		t.Errorf("event %q does not name the annotation", note)
	}
	if s := getSlice(t, ns, "web-l2"); s != nil {
		t.Fatalf("invalid L2 Service has a slice: %s", endpointsSummary(s))
	}
	svc := &corev1.Service{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "web"}, svc); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(svc.DeepCopy())
	svc.Annotations[v1alpha1.L2SelectorAnnotation] = "app=web"
	if err := k8s.Patch(context.Background(), svc, patch); err != nil {
		t.Fatal(err)
	}
	waitEndpoints(t, ns, "web-l2", "a 192.168.50.10 0/0/0")
}
