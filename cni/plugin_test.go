package cni

import (
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/containernetworking/plugins/pkg/testutils"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// modeFields is the mode-specific part of a test config.
func modeFields(mode string, vlan int) map[string]any {
	f := map[string]any{"mode": mode}
	switch mode {
	case ModeMacvlan:
		f["master"] = testMaster
	case ModeBridge:
		f["bridge"] = testBridge
	}
	if vlan != 0 {
		f["vlan"] = vlan
	}
	return f
}

// TestAddCheckDel runs ADD → CHECK → STATUS → DEL → DEL in a fresh netns for
// every mode, guest kind, VLAN setting and spec version.
func TestAddCheckDel(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		for _, guest := range []string{GuestNone, GuestTap} {
			for _, vlan := range []int{0, 42} {
				for _, ver := range specVersions {
					t.Run(fmt.Sprintf("%s/guest=%s/vlan=%d/%s", mode, guest, vlan, ver), func(t *testing.T) {
						testAddCheckDel(t, mode, guest, vlan, ver)
					})
				}
			}
		}
	}
}

func testAddCheckDel(t *testing.T, mode, guest string, vlan int, ver string) {
	n := newNode(t)
	pod := newNS(t)
	dataDir := t.TempDir()
	fields := modeFields(mode, vlan)
	fields["guest"] = guest
	fields["mtu"] = 1400
	fields["ipam"] = hostLocal(dataDir, "10.1.2.0/24")
	const mac = "02:00:00:aa:bb:01"
	fields["mac"] = mac
	resultsDir := filepath.Join(t.TempDir(), "cni-results")
	fields["resultsDir"] = resultsDir
	a := newAttachment(n, pod, "ctr-"+mode, "net1", conf(ver, fields))
	const podUID = "0b7e4f52-1d3a-4c1e-9f4e-6a1de0c0ffee"
	a.args.Args = "K8S_POD_UID=" + podUID

	if vlan != 0 && !vlanSupported(t, mode) {
		expectCleanFailure(t, a, dataDir, types.ErrInvalidNetworkConfig, "vlan: ")
		t.Skipf("%s: checked that ADD fails cleanly, naming vlan", vlanKernelGap(mode))
	}

	r, err := a.add()
	if err != nil {
		t.Fatalf("ADD: %v", err)
	}
	if r.Version() != ver {
		t.Errorf("result version %s, want %s", r.Version(), ver)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		t.Fatal(err)
	}

	// The IP goes to the pod link, or to the guest's tap.
	ip, ipIf := guestIP(t, res)
	wantIPIf := "net1"
	if guest == GuestTap {
		wantIPIf = podlink.TapName("net1")
	}
	if ipIf.Name != wantIPIf || ipIf.Sandbox != pod.Path() {
		t.Errorf("IP %s is on %q (sandbox %q), want %q in %q", ip, ipIf.Name, ipIf.Sandbox, wantIPIf, pod.Path())
	}
	if ipIf.Mac != mac {
		t.Errorf("MAC of %q in result is %s, want %s", ipIf.Name, ipIf.Mac, mac)
	}
	if got := leases(t, dataDir); len(got) != 1 || got[0] != ip.String() {
		t.Errorf("host-local leases %v, want [%s]", got, ip)
	}
	// A guest's result is saved for the node daemon, as printed.
	saved, err := cniresults.Load(resultsDir, podUID)
	if err != nil {
		t.Fatal(err)
	}
	if guest == GuestNone && len(saved) != 0 {
		t.Errorf("guest none: results saved: %s", saved)
	}
	if guest == GuestTap {
		printed, _ := json.Marshal(r)
		if !jsonEqual(saved["net1"], printed) {
			t.Errorf("saved result for net1:\n%s\nwant what ADD printed:\n%s", saved["net1"], printed)
		}
	}

	err = pod.Do(func(ns.NetNS) error {
		l, err := netlinksafe.LinkByName("net1")
		if err != nil {
			return err
		}
		if l.Attrs().MTU != 1400 {
			t.Errorf("net1 MTU %d, want 1400", l.Attrs().MTU)
		}
		switch mode {
		case ModeMacvlan:
			if _, ok := l.(*netlink.Macvlan); !ok {
				t.Errorf("net1 is a %s, want macvlan", l.Type())
			}
		case ModeBridge:
			if _, ok := l.(*netlink.Veth); !ok {
				t.Errorf("net1 is a %s, want veth", l.Type())
			}
		}
		addrs, err := netlinksafe.AddrList(l, netlink.FAMILY_V4)
		if err != nil {
			return err
		}
		if guest == GuestNone && (len(addrs) != 1 || !addrs[0].IP.Equal(ip)) {
			t.Errorf("net1 addresses %v, want %s", addrs, ip)
		}
		if guest == GuestTap {
			if len(addrs) != 0 {
				t.Errorf("net1 has addresses %v; the pod must have none on the guest path", addrs)
			}
			tap, err := netlinksafe.LinkByName(podlink.TapName("net1"))
			if err != nil {
				return err
			}
			if tt, ok := tap.(*netlink.Tuntap); !ok || tt.Mode != netlink.TUNTAP_MODE_TAP {
				t.Errorf("%s is a %s, want a tap", podlink.TapName("net1"), tap.Type())
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	if testutils.SpecVersionHasCHECK(ver) {
		if err := a.check(r); err != nil {
			t.Errorf("CHECK: %v", err)
		}
	}
	if testutils.SpecVersionHasSTATUS(ver) {
		if err := a.status(); err != nil {
			t.Errorf("STATUS: %v", err)
		}
	}

	if err := a.del(); err != nil {
		t.Fatalf("DEL: %v", err)
	}
	if got := linkNames(t, pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("links left in the pod after DEL: %v", got)
	}
	if mode == ModeBridge {
		if got := bridgePorts(t, n, testBridge); len(got) != 0 {
			t.Errorf("ports left on the node bridge after DEL: %v", got)
		}
	}
	if got := leases(t, dataDir); len(got) != 0 {
		t.Errorf("leases left after DEL: %v", got)
	}
	if saved, err := cniresults.Load(resultsDir, podUID); err != nil || len(saved) != 0 {
		t.Errorf("results left after DEL: %s (%v)", saved, err)
	}
	if err := a.del(); err != nil {
		t.Errorf("second DEL: %v", err)
	}
}

// jsonEqual reports whether a and b are the same JSON value.
func jsonEqual(a, b []byte) bool {
	var va, vb any
	if json.Unmarshal(a, &va) != nil || json.Unmarshal(b, &vb) != nil {
		return false
	}
	return reflect.DeepEqual(va, vb)
}

// expectCleanFailure runs an ADD that must fail with CNI error code and a
// message starting with msgPrefix, leave no link in the pod, no port on the
// node bridge and no lease, and be followed by DELs that succeed.
func expectCleanFailure(t *testing.T, a *attachment, dataDir string, code uint, msgPrefix string) {
	t.Helper()
	_, err := a.add()
	if err == nil {
		t.Fatal("ADD succeeded, want an error")
	}
	// skel turns a plain error into an internal one.
	e := types.NewError(types.ErrInternal, err.Error(), "")
	errors.As(err, &e)
	if e.Code != code || !strings.HasPrefix(e.Msg, msgPrefix) {
		t.Errorf("ADD: got code %d %q, want code %d and a message starting with %q", e.Code, e.Msg, code, msgPrefix)
	}
	if got := linkNames(t, a.pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("links left in the pod after failed ADD: %v", got)
	}
	if slices.Contains(linkNames(t, a.node), testBridge) {
		if got := bridgePorts(t, a.node, testBridge); len(got) != 0 {
			t.Errorf("ports left on the node bridge after failed ADD: %v", got)
		}
	}
	if got := leases(t, dataDir); len(got) != 0 {
		t.Errorf("leases left after failed ADD: %v", got)
	}
	for i := range 2 {
		if err := a.del(); err != nil {
			t.Errorf("DEL #%d after failed ADD: %v", i+1, err)
		}
	}
}

// The address the controller reserved for a VM reaches host-local through
// runtimeConfig.ips (Multus passes it when the NAD declares the ips
// capability): the guest gets exactly it, and another pod asking for the
// same address is refused, naming it, and leaves nothing behind.
func TestRequestedAddress(t *testing.T) {
	requireRoot(t)
	useCNIPath(t, upstreamPluginDir(t))
	n := newNode(t)
	dataDir := t.TempDir()
	attach := func(id, podUID string) *attachment {
		f := modeFields(ModeBridge, 0)
		f["guest"] = GuestTap
		f["ipam"] = hostLocal(dataDir, "10.1.2.0/24")
		f["resultsDir"] = t.TempDir()
		f["runtimeConfig"] = map[string]any{"ips": []string{"10.1.2.77/24"}, "mac": "02:70:76:00:00:07"}
		a := newAttachment(n, newNS(t), id, "net1", conf("1.0.0", f))
		a.args.Args = "K8S_POD_UID=" + podUID
		return a
	}
	first := attach("ctr-first", "5d0c3a8e-0000-4000-8000-000000000001")
	res := first.addOK(t)
	t.Cleanup(func() { _ = first.del() })
	if ip, ipIf := guestIP(t, res); ip.String() != "10.1.2.77" || ipIf.Mac != "02:70:76:00:00:07" {
		t.Fatalf("guest got %s on MAC %s, want the requested 10.1.2.77 on 02:70:76:00:00:07", ip, ipIf.Mac)
	}
	second := attach("ctr-second", "5d0c3a8e-0000-4000-8000-000000000002")
	if _, err := second.add(); err == nil || !strings.Contains(err.Error(), "10.1.2.77") {
		t.Fatalf("second ADD for a held address: %v, want an error naming 10.1.2.77", err)
	}
	if got := linkNames(t, second.pod); !slices.Equal(got, []string{"lo"}) {
		t.Errorf("links left in the second pod after its failed ADD: %v", got)
	}
	if got := leases(t, dataDir); !slices.Equal(got, []string{"10.1.2.77"}) {
		t.Errorf("host-local leases %v, want only the first pod's 10.1.2.77", got)
	}
	if err := second.del(); err != nil {
		t.Errorf("DEL after failed ADD: %v", err)
	}
}
