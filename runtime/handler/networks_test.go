package handler

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cni/results"
	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// TestResultsDir: the handler maps each Multus network of a VMI to the
// result podvirt-l2 stored for the pod interface of that network, and
// says which network lacks one.
func TestResultsDir(t *testing.T) {
	dir := t.TempDir()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{UID: "6f1c2a1e-0000-4000-8000-000000000001"}}
	vmi := &v1.VirtualMachineInstance{Spec: v1.VirtualMachineInstanceSpec{Networks: []v1.Network{
		{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}},
		{Name: "l2", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "infra/l2-bridge"}}},
	}}}
	res := `{"cniVersion":"1.1.0","interfaces":[{"name":"x","mac":"02:00:00:00:00:01","sandbox":"/ns"}],"ips":[{"address":"10.1.2.3/24"}]}`
	ifname := podlink.InterfaceName("l2")
	_, err := ResultsDir(dir).PodNetworks(context.Background(), pod, vmi)
	if err == nil || !strings.Contains(err.Error(), `network "l2" (NAD infra/l2-bridge): no podvirt-l2 result for pod interface `+ifname) {
		t.Fatalf("no result stored: err %v", err)
	}
	if err := results.Save(dir, cniresults.Record{PodUID: string(pod.UID), IfName: ifname, ContainerID: "c1", Network: "l2-bridge", Result: []byte(res)}); err != nil {
		t.Fatal(err)
	}
	st, err := ResultsDir(dir).PodNetworks(context.Background(), pod, vmi)
	if err != nil {
		t.Fatal(err)
	}
	if len(st.Attachments) != 1 || st.Attachments[0].Name != "l2" || st.Attachments[0].Interface != ifname || string(st.Attachments[0].Result) != res {
		t.Fatalf("status %+v", st)
	}
}
