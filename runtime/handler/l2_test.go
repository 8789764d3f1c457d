package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/skel"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cni"
	"github.com/podvirt/podvirt/contracts/podlink"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/harness/netnstest"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestL2Interface: a VMI on a podvirt-l2 network (bridge mode, guest tap)
// gets the address the plugin assigned: the handler reads the plugin's
// stored result for the pod interface, sends it to the launcher with
// Start, the launcher serves it to the guest by DHCP, and the VMI's
// status.interfaces shows that IP and the guest's MAC. The handler's
// metrics then show the VMI's CPU, memory, disk and NIC counters.
func TestL2Interface(t *testing.T) {
	namespace := namespace(t)
	hostLocal, err := deps.Binary("cni-plugins", "host-local")
	if err != nil {
		t.Fatal(err)
	}
	// podvirt-l2 finds its IPAM on CNI_PATH, which testutils takes from PATH.
	t.Setenv("PATH", filepath.Dir(hostLocal)+string(os.PathListSeparator)+os.Getenv("PATH"))
	const network = "l2"
	node := netnstest.NewNode(t, "pvm1", "pvp1")
	podNS := netnstest.New(t)

	vmi := newVMIWith(t, namespace, "l2", func(vmi *v1.VirtualMachineInstance) {
		vmi.Spec.Domain.Devices.Interfaces = []v1.Interface{{Name: network}}
		vmi.Spec.Networks = []v1.Network{{Name: network, NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: "l2-bridge"}}}}
	})
	pod := runPod(t, vmi)
	vmi = getVMI(t, namespace, vmi.Name)

	// Multus's part: run podvirt-l2 for the pod interface of the network,
	// with the pod's UID, as the kubelet's CNI call would.
	conf, err := json.Marshal(map[string]any{
		"cniVersion": "1.1.0", "name": "l2-bridge", "type": "podvirt-l2", "mode": cni.ModeBridge, "bridge": "pvbr1",
		"guest": cni.GuestTap, "resultsDir": resultsDir,
		"ipam": map[string]any{"type": "host-local", "dataDir": t.TempDir(), "ranges": [][]map[string]any{{{"subnet": "10.78.0.0/24"}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	args := &skel.CmdArgs{ContainerID: "ctr-l2", Netns: podNS.Path(), IfName: podlink.InterfaceName(network), StdinData: conf,
		Args: fmt.Sprintf("K8S_POD_NAMESPACE=%s;K8S_POD_NAME=%s;K8S_POD_UID=%s", pod.Namespace, pod.Name, pod.UID)}
	var raw []byte
	if err := node.Do(func(ns.NetNS) error {
		_, out, err := testutils.CmdAddWithArgs(args, func() error { return cni.Funcs().Add(args) })
		raw = out
		return err
	}); err != nil {
		t.Fatalf("CNI ADD: %v", err)
	}
	t.Cleanup(func() {
		_ = node.Do(func(ns.NetNS) error {
			return testutils.CmdDelWithArgs(args, func() error { return cni.Funcs().Del(args) })
		})
	})
	res := &current.Result{}
	if err := json.Unmarshal(raw, res); err != nil || len(res.IPs) == 0 {
		t.Fatalf("CNI result %s: %v", raw, err)
	}
	wantIP := res.IPs[0].Address.IP.String()

	lp := startLauncher(t, vmi, pod, true, podNS.Path())
	waitVMI(t, vmi, bootTimeout, v1.Running, v1.DomainRunning, lp)
	var got v1.VirtualMachineInstanceNetworkInterface
	polltest.Eventually(t, time.Minute, "status.interfaces shows the CNI address", func() (bool, string) {
		cur := getVMI(t, namespace, vmi.Name)
		if len(cur.Status.Interfaces) != 1 {
			return false, fmt.Sprintf("interfaces %+v", cur.Status.Interfaces)
		}
		got = cur.Status.Interfaces[0]
		return got.Name == network && got.IP == wantIP && got.MAC != "", fmt.Sprintf("interface %+v, want %s with IP %s", got, network, wantIP)
	})
	// The guest took that address by DHCP, on the NIC with that MAC.
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if _, err := guest.WaitForOutput(ctx, lp.consoleLog(), 0, guest.IPMarker+" eth0 "+wantIP+"/24"); err != nil {
		t.Fatalf("the guest did not report %s from DHCP: %v", wantIP, err)
	}
	if _, err := netip.ParseAddr(got.IP); err != nil || !regexp.MustCompile(`^([0-9a-f]{2}:){5}[0-9a-f]{2}$`).MatchString(got.MAC) {
		t.Errorf("interface status %+v: want a plain IP and a MAC", got)
	}
	checkVMIMetrics(t, namespace, vmi.Name, "root", network)
}
