package e2e

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	csidriver "github.com/podvirt/podvirt/csi/driver"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestVMsOnSharedL2 is the demo as a test, on the bridge NAD and on the
// macvlan NAD: two VMs from the registry pair (the first mirror down), on
// different nodes, reaching each other across the L2 segment, and each
// reached from a plain pod on the other node.
func TestVMsOnSharedL2(t *testing.T) {
	useStack(t)
	for _, tt := range []struct{ mode, nad string }{
		{"bridge", stack.VMNetwork},
		{"macvlan", stack.MacvlanNetwork},
	} {
		t.Run(tt.mode, func(t *testing.T) {
			ctx := testContext(t, 25*time.Minute)
			names := []string{tt.mode + "-a", tt.mode + "-b"}
			// The bridge VMs' image is pushed fresh, so their disks are
			// imported through the mirrors whatever the node's cache holds.
			source := stack.GuestSource
			if tt.mode == "bridge" {
				var err error
				if source, err = st.Mirrors.PushFresh(ctx, fmt.Sprintf("l2-%d", time.Now().UnixNano())); err != nil {
					t.Fatal(err)
				}
			}
			for _, n := range names {
				vm := stack.VMOn(n, v1.RunStrategyAlways, tt.nad)
				vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] = source
				st.Spread(vm, "l2-"+tt.mode)
				createVM(ctx, t, vm)
				t.Cleanup(func() { deleteVM(t, n) })
			}
			ips, nodes := map[string]string{}, map[string]string{}
			for _, n := range names {
				vmi, err := st.WaitRunning(ctx, n, 12*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				ips[n], nodes[n] = stack.GuestIP(vmi), vmi.Status.NodeName
			}
			if nodes[names[0]] == nodes[names[1]] {
				t.Fatalf("vms %v both run on node %s: their anti-affinity should have spread them", names, nodes[names[0]])
			}
			if tt.mode == "bridge" {
				checkFailover(ctx, t, names[0]+"-root", names[1]+"-root")
			}
			checkL2Service(ctx, t, "web-"+tt.mode, tt.nad, ips)
			for i, n := range names {
				peer := names[1-i]
				out, err := st.RunInConsole(ctx, n, stack.PingCommand(ips[peer]), 3*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(out, " 0% packet loss") {
					t.Fatalf("vm %s → vm %s (%s) over the %s L2:\n%s", n, peer, ips[peer], tt.mode, out)
				}
			}
			for _, n := range names {
				node := st.OtherNode(nodes[n])
				logs, err := st.ProbeFromPod(ctx, "probe-"+n, tt.nad, node, stack.HostPort(ips[n], stack.VMPort), 3*time.Minute)
				if err != nil {
					t.Fatal(err)
				}
				if !strings.Contains(logs, "ok") {
					t.Fatalf("pod on node %s → vm %s on node %s over the %s L2: %s", node, n, nodes[n], tt.mode, logs)
				}
			}
		})
	}
}

// checkFailover asserts that the disks were imported from the mirror that
// is up, and that nothing claims to have come from the stopped first one:
// the CSI driver's progress events name the mirror in use.
func checkFailover(ctx context.Context, t *testing.T, claims ...string) {
	t.Helper()
	up, down := "from "+st.Mirrors.Up.Addr, "from "+st.Mirrors.Down.Addr
	var seen []string
	fromUp := false
	for _, claim := range claims {
		for _, e := range importEvents(ctx, t, claim) {
			seen = append(seen, e.Reason+": "+e.Message)
			if strings.Contains(e.Message, down) {
				t.Errorf("pvc %s: an import from the stopped mirror: %s", claim, e.Message)
			}
			fromUp = fromUp || strings.Contains(e.Message, up)
		}
	}
	if !fromUp {
		t.Errorf("no import event names the mirror that is up (%s); events:\n%s", st.Mirrors.Up.Addr, strings.Join(seen, "\n"))
	}
}

// importEvents waits for the ImportCompleted event of claim and returns
// all its events.
func importEvents(ctx context.Context, t *testing.T, claim string) []corev1.Event {
	t.Helper()
	events := &corev1.EventList{}
	err := stack.Poll(ctx, time.Minute, func() (bool, error) {
		if err := st.Client.List(ctx, events, client.InNamespace(stack.Namespace),
			client.MatchingFields{"involvedObject.name": claim}); err != nil {
			return false, err
		}
		for _, e := range events.Items {
			if e.Reason == csidriver.ReasonImportCompleted {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		var seen []string
		for _, e := range events.Items {
			seen = append(seen, e.Reason+": "+e.Message)
		}
		t.Fatalf("pvc %s: no %s event: %v; events:\n%s", claim, csidriver.ReasonImportCompleted, err, strings.Join(seen, "\n"))
	}
	return events.Items
}

// checkL2Service puts an L2 Service in front of the VMs (their names and
// L2 addresses in ips) on nad and waits until its EndpointSlice holds
// every address, ready, on the VMs' HTTP port.
func checkL2Service(ctx context.Context, t *testing.T, name, nad string, ips map[string]string) {
	t.Helper()
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: stack.Namespace, Annotations: map[string]string{
			v1.L2NetworkAnnotation:  nad,
			v1.L2SelectorAnnotation: v1.VMNameLabel + " in (" + strings.Join(slices.Sorted(maps.Keys(ips)), ",") + ")",
		}},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: int32(stack.VMPort)}}},
	}
	if err := st.Client.Create(ctx, svc); err != nil {
		t.Fatalf("creating L2 Service %s: %v", name, err)
	}
	t.Cleanup(func() { _ = st.Client.Delete(context.Background(), svc) })
	want := slices.Sorted(maps.Values(ips))
	var got []string
	if err := stack.Poll(ctx, 2*time.Minute, func() (bool, error) {
		list := &discoveryv1.EndpointSliceList{}
		if err := st.Client.List(ctx, list, client.InNamespace(stack.Namespace), client.MatchingLabels{discoveryv1.LabelServiceName: name}); err != nil {
			return false, err
		}
		got = nil
		for _, sl := range list.Items {
			for _, ep := range sl.Endpoints {
				if ep.Conditions.Ready != nil && *ep.Conditions.Ready && len(sl.Ports) == 1 && *sl.Ports[0].Port == int32(stack.VMPort) {
					got = append(got, ep.Addresses...)
				}
			}
		}
		slices.Sort(got)
		return slices.Equal(got, want), nil
	}); err != nil {
		t.Fatalf("L2 Service %s on %s: ready addresses %v, want the VMs' %v: %v", name, nad, got, want, err)
	}
	t.Logf("L2 Service %s on %s: EndpointSlice holds %v, ready", name, nad, got)
}
