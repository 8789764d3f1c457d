package cni

import (
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/podvirt/podvirt/cni/handoff"
)

// A VM migrating onto its own node: the target pod's attachment is made
// beside the source's, with the same guest MAC and address, while the
// source holds the node's lease and (macvlan mode) the MAC on the shared
// parent. At the switch handoff.Complete moves both; the source's DEL then
// keeps the lease, the target's releases it. A migration that fails before
// the switch leaves the source as it was.
func TestSameNodeHandoff(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))
	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		t.Run(mode, func(t *testing.T) { testSameNodeHandoff(t, mode) })
	}
}

func testSameNodeHandoff(t *testing.T, mode string) {
	const (
		guestMAC = "02:70:76:00:00:09"
		addr     = "10.1.2.79"
	)
	n := newNode(t)
	dataDir, resultsDir := t.TempDir(), t.TempDir()
	attach := func(id, podUID, namespace, from string) *attachment {
		f := modeFields(mode, 0)
		f["guest"] = GuestTap
		f["ipam"] = hostLocal(dataDir, "10.1.2.0/24")
		f["resultsDir"] = resultsDir
		f["runtimeConfig"] = map[string]any{"ips": []string{addr + "/24"}, "mac": guestMAC}
		if from != "" {
			f["args"] = map[string]any{"cni": map[string]any{"podvirtHandoffFrom": from}}
		}
		a := newAttachment(n, newNS(t), id, "net1", conf("1.0.0", f))
		a.args.Args = "K8S_POD_UID=" + podUID + ";K8S_POD_NAMESPACE=" + namespace
		return a
	}
	const srcUID, dstUID, failedUID, strangerUID = "aa0c3a8e-0000-4000-8000-000000000001", "aa0c3a8e-0000-4000-8000-000000000002",
		"aa0c3a8e-0000-4000-8000-000000000003", "aa0c3a8e-0000-4000-8000-000000000004"
	source := attach("ctr-source", srcUID, "vms", "")
	source.addOK(t)
	t.Cleanup(func() { _ = source.del() })
	podLinkMAC := func(a *attachment) string {
		t.Helper()
		var mac string
		if err := a.pod.Do(func(ns.NetNS) error {
			l, err := netlinksafe.LinkByName("net1")
			if err == nil {
				mac = l.Attrs().HardwareAddr.String()
			}
			return err
		}); err != nil {
			t.Fatal(err)
		}
		return mac
	}
	holdsLease := func(want bool) {
		t.Helper()
		if got := leases(t, dataDir); slices.Equal(got, []string{addr}) != want {
			t.Fatalf("host-local leases %v; want %s held: %v", got, addr, want)
		}
	}

	// Not across namespaces.
	stranger := attach("ctr-stranger", strangerUID, "other", srcUID)
	if _, err := stranger.add(); err == nil || !strings.Contains(err.Error(), "another namespace") {
		t.Fatalf("ADD taking over a pod of another namespace: %v, want a refusal", err)
	}
	_ = stranger.del()

	// A target whose migration fails goes without touching the source.
	failed := attach("ctr-failed", failedUID, "vms", srcUID)
	res := failed.addOK(t)
	if ip, tap := guestIP(t, res); ip.String() != addr || tap.Mac != guestMAC {
		t.Fatalf("target guest got %s on %s, want the source's %s on %s", ip, tap.Mac, addr, guestMAC)
	}
	if err := failed.del(); err != nil {
		t.Fatal(err)
	}
	holdsLease(true)
	if mode == ModeMacvlan && podLinkMAC(source) != guestMAC {
		t.Fatalf("the source's macvlan lost the guest's MAC to a failed target")
	}

	target := attach("ctr-target", dstUID, "vms", srcUID)
	prev := target.addOK(t)
	t.Cleanup(func() { _ = target.del() })
	if mode == ModeMacvlan && podLinkMAC(target) == guestMAC {
		t.Fatal("the target's macvlan has the guest's MAC before the switch")
	}
	if pending, err := handoff.Pending(resultsDir, dstUID); err != nil || !pending {
		t.Fatalf("Pending before the switch = %v, %v", pending, err)
	}
	for range 2 { // idempotent
		if err := handoff.Complete(resultsDir, dstUID); err != nil {
			t.Fatal(err)
		}
	}
	if pending, err := handoff.Pending(resultsDir, dstUID); err != nil || pending {
		t.Fatalf("Pending after the switch = %v, %v", pending, err)
	}
	if mode == ModeMacvlan {
		if got, src := podLinkMAC(target), podLinkMAC(source); got != guestMAC || src == guestMAC {
			t.Fatalf("after the switch the target's macvlan has %s and the source's %s; want the guest's %s on the target only", got, src, guestMAC)
		}
	}
	if err := target.check(prev); err != nil {
		t.Errorf("CHECK of the target after the switch: %v", err)
	}
	if err := source.del(); err != nil {
		t.Fatal(err)
	}
	holdsLease(true)
	if err := target.del(); err != nil {
		t.Fatal(err)
	}
	holdsLease(false)
}
