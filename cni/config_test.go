package cni

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/contracts/podlink"
)

func TestLoadConf(t *testing.T) {
	base := `"cniVersion":"1.1.0","name":"n","type":"podvirt-l2"`
	cases := []struct {
		name, json, args string
		wantCode         uint   // 0: no error
		wantMsg          string // prefix of the error message
		check            func(t *testing.T, n *NetConf)
	}{
		{name: "macvlan defaults", json: `{` + base + `,"mode":"macvlan","master":"eth0"}`, check: func(t *testing.T, n *NetConf) {
			if n.macvlanMode != netlink.MACVLAN_MODE_BRIDGE || n.Guest != GuestNone || n.mac != nil {
				t.Errorf("got macvlanMode %v guest %q mac %v", n.macvlanMode, n.Guest, n.mac)
			}
		}},
		{name: "bridge defaults", json: `{` + base + `,"mode":"bridge"}`, check: func(t *testing.T, n *NetConf) {
			if n.Bridge != DefaultBridge {
				t.Errorf("bridge %q, want %q", n.Bridge, DefaultBridge)
			}
		}},
		{name: "everything", json: `{` + base + `,"mode":"macvlan","master":"eth0","macvlanMode":"vepa","vlan":7,"mtu":1400,"mac":"02:00:00:00:00:01","guest":"tap","tapOwner":107,"tapGroup":107,"ipam":{"type":"static"}}`,
			check: func(t *testing.T, n *NetConf) {
				if n.macvlanMode != netlink.MACVLAN_MODE_VEPA || n.VLAN != 7 || n.MTU != 1400 || n.mac.String() != "02:00:00:00:00:01" || *n.TapOwner != 107 || n.IPAM.Type != "static" {
					t.Errorf("got %+v", n)
				}
			}},
		{name: "mac priority", json: `{` + base + `,"mode":"bridge","mac":"02:00:00:00:00:01","args":{"cni":{"mac":"02:00:00:00:00:03"}},"runtimeConfig":{"mac":"02:00:00:00:00:04"}}`, args: "IgnoreUnknown=1;MAC=02:00:00:00:00:02;K8S_POD_NAME=p",
			check: func(t *testing.T, n *NetConf) {
				if n.mac.String() != "02:00:00:00:00:04" {
					t.Errorf("mac %s, want runtimeConfig's", n.mac)
				}
			}},
		{name: "mac from CNI_ARGS", json: `{` + base + `,"mode":"bridge","mac":"02:00:00:00:00:01"}`, args: "MAC=02:00:00:00:00:02;K8S_POD_NAMESPACE=ns",
			check: func(t *testing.T, n *NetConf) {
				if n.mac.String() != "02:00:00:00:00:02" {
					t.Errorf("mac %s, want CNI_ARGS'", n.mac)
				}
			}},

		{name: "not json", json: `{`, wantCode: types.ErrDecodingFailure, wantMsg: "decoding network config"},
		{name: "vlan wrong type", json: `{` + base + `,"mode":"bridge","vlan":"7"}`, wantCode: types.ErrDecodingFailure, wantMsg: "decoding network config"},
		{name: "no mode", json: `{` + base + `}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mode: required"},
		{name: "bad mode", json: `{` + base + `,"mode":"ipvlan"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mode: must be"},
		{name: "no master", json: `{` + base + `,"mode":"macvlan"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "master: required"},
		{name: "bad master", json: `{` + base + `,"mode":"macvlan","master":"a/b"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "master: invalid link name"},
		{name: "master in bridge mode", json: `{` + base + `,"mode":"bridge","master":"eth0"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "master: only valid in macvlan mode"},
		{name: "bridge in macvlan mode", json: `{` + base + `,"mode":"macvlan","master":"eth0","bridge":"br0"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "bridge: only valid in bridge mode"},
		{name: "bad bridge", json: `{` + base + `,"mode":"bridge","bridge":"waytoolongbridgename"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "bridge: invalid link name"},
		{name: "uplink", json: `{` + base + `,"mode":"bridge","uplink":"eth1"}`, check: func(t *testing.T, n *NetConf) {
			if n.Uplink != "eth1" || n.Bridge != DefaultBridge {
				t.Errorf("uplink %q bridge %q, want eth1 on %q", n.Uplink, n.Bridge, DefaultBridge)
			}
		}},
		{name: "uplink in macvlan mode", json: `{` + base + `,"mode":"macvlan","master":"eth0","uplink":"eth1"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "uplink: only valid in bridge mode"},
		{name: "bad uplink", json: `{` + base + `,"mode":"bridge","uplink":"eth 1"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "uplink: invalid link name"},
		{name: "long uplink", json: `{` + base + `,"mode":"bridge","uplink":"waytoolonguplinkname"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "uplink: invalid link name"},
		{name: "uplink is the bridge", json: `{` + base + `,"mode":"bridge","bridge":"br0","uplink":"br0"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: `uplink: "br0" is the bridge itself`},
		{name: "bad macvlanMode", json: `{` + base + `,"mode":"macvlan","master":"eth0","macvlanMode":"source"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "macvlanMode: must be"},
		{name: "macvlanMode in bridge mode", json: `{` + base + `,"mode":"bridge","macvlanMode":"vepa"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "macvlanMode: only valid"},
		{name: "vlan too big", json: `{` + base + `,"mode":"bridge","vlan":4095}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "vlan: must be between 0 and 4094"},
		{name: "vlan negative", json: `{` + base + `,"mode":"bridge","vlan":-1}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "vlan: must be between"},
		{name: "vlan link name too long", json: `{` + base + `,"mode":"macvlan","master":"enp0s31f6abcd","vlan":4000}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "master: "},
		{name: "mtu negative", json: `{` + base + `,"mode":"bridge","mtu":-1}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu: must be between"},
		{name: "mtu tiny", json: `{` + base + `,"mode":"bridge","mtu":10}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mtu: must be at least 68"},
		{name: "bad guest", json: `{` + base + `,"mode":"bridge","guest":"macvtap"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "guest: must be"},
		{name: "tapOwner without tap", json: `{` + base + `,"mode":"bridge","tapOwner":1}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "tapOwner: only valid"},
		{name: "bad mac", json: `{` + base + `,"mode":"bridge","mac":"nope"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mac: invalid MAC"},
		{name: "multicast mac", json: `{` + base + `,"mode":"bridge","mac":"01:00:5e:00:00:01"}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "mac: invalid MAC \"01:00:5e:00:00:01\": multicast"},
		{name: "zero mac", json: `{` + base + `,"mode":"bridge","runtimeConfig":{"mac":"00:00:00:00:00:00"}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "runtimeConfig.mac: invalid MAC"},
		{name: "long mac", json: `{` + base + `,"mode":"bridge","args":{"cni":{"mac":"02:00:00:00:00:00:00:01"}}}`, wantCode: types.ErrInvalidNetworkConfig, wantMsg: "args.cni.mac: invalid MAC"},
		{name: "bad CNI_ARGS mac", json: `{` + base + `,"mode":"bridge"}`, args: "MAC=zz", wantCode: types.ErrInvalidNetworkConfig, wantMsg: "CNI_ARGS MAC: invalid MAC"},
		{name: "unknown CNI_ARGS", json: `{` + base + `,"mode":"bridge"}`, args: "FOO=bar", wantCode: types.ErrInvalidEnvironmentVariables, wantMsg: "CNI_ARGS: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			n, err := loadConf([]byte(c.json), c.args)
			if c.wantCode == 0 {
				if err != nil {
					t.Fatalf("loadConf: %v", err)
				}
				c.check(t, n)
				return
			}
			var e *types.Error
			if !errors.As(err, &e) {
				t.Fatalf("got %v, want CNI error %d", err, c.wantCode)
			}
			if e.Code != c.wantCode || !strings.HasPrefix(e.Msg, c.wantMsg) {
				t.Errorf("got code %d %q, want code %d and a message starting with %q", e.Code, e.Msg, c.wantCode, c.wantMsg)
			}
		})
	}
}

// TestDerivedNamesAreLinkNames: the names podlink derives pass the
// plugin's own link name check.
func TestDerivedNamesAreLinkNames(t *testing.T) {
	long := "abcdefghijklmno" // 15, the longest link name
	for _, n := range []string{podlink.TapName(long), podlink.BridgeName(long)} {
		if validLinkName("x", n) != nil {
			t.Errorf("derived name %q is not a valid link name", n)
		}
	}
}

// FuzzLoadConf: no input makes config parsing panic, every failure is a CNI
// error, and every accepted config is one the commands can act on.
func FuzzLoadConf(f *testing.F) {
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","type":"podvirt-l2","mode":"macvlan","master":"eth0","vlan":7,"guest":"tap"}`), "")
	f.Add([]byte(`{"cniVersion":"1.1.0","name":"n","mode":"bridge","bridge":"br0","uplink":"eth1","vlan":7}`), "")
	f.Add([]byte(`{"cniVersion":"1.0.0","name":"n","mode":"bridge","bridge":"br0","mtu":9000,"mac":"02:00:00:00:00:01","ipam":{"type":"host-local"}}`), "MAC=02:00:00:00:00:02")
	f.Add([]byte(`{"mode":"bridge","runtimeConfig":{"mac":"x"},"args":{"cni":{"mac":"y"}}}`), "IgnoreUnknown=1;A=b")
	f.Add([]byte(`{"mode":"macvlan","master":"","macvlanMode":"passthru","tapOwner":-1}`), "==;")
	f.Add([]byte(`null`), "")
	f.Fuzz(func(t *testing.T, data []byte, args string) {
		n, err := loadConf(data, args)
		if err != nil {
			var e *types.Error
			if !errors.As(err, &e) || e.Code == 0 || e.Msg == "" {
				t.Fatalf("error %v is not a CNI error with code and message", err)
			}
			return
		}
		switch n.Mode {
		case ModeMacvlan:
			if validLinkName("master", n.Master) != nil || n.Uplink != "" {
				t.Fatalf("accepted master %q uplink %q", n.Master, n.Uplink)
			}
		case ModeBridge:
			if validLinkName("bridge", n.Bridge) != nil {
				t.Fatalf("accepted bridge %q", n.Bridge)
			}
			if n.Uplink != "" && (validLinkName("uplink", n.Uplink) != nil || n.Uplink == n.Bridge) {
				t.Fatalf("accepted uplink %q on bridge %q", n.Uplink, n.Bridge)
			}
		default:
			t.Fatalf("accepted mode %q", n.Mode)
		}
		if n.VLAN < 0 || n.VLAN > 4094 || n.MTU < 0 || (n.Guest != GuestNone && n.Guest != GuestTap) {
			t.Fatalf("accepted %+v", n)
		}
		if n.mac != nil && (len(n.mac) != 6 || n.mac[0]&1 != 0) {
			t.Fatalf("accepted MAC %s", n.mac)
		}
	})
}

// TestExampleNADs checks that the example NetworkAttachmentDefinitions under
// charts/ carry configs podvirt-l2 accepts.
func TestExampleNADs(t *testing.T) {
	files, err := filepath.Glob("../charts/podvirt/examples/nad-*.yaml")
	if err != nil || len(files) < 2 {
		t.Fatalf("example NADs: %v %v", files, err)
	}
	for _, f := range files {
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			// The config is the block scalar after "config: |".
			_, block, ok := strings.Cut(string(b), "config: |\n")
			if !ok || !strings.Contains(string(b), "kind: NetworkAttachmentDefinition") {
				t.Fatal("not a NetworkAttachmentDefinition with a config block")
			}
			n, err := loadConf([]byte(block), "")
			if err != nil {
				t.Fatalf("config: %v", err)
			}
			mode := strings.TrimSuffix(strings.TrimPrefix(filepath.Base(f), "nad-"), ".yaml")
			if n.Mode != mode || n.Name != "l2-"+mode || n.Guest != GuestTap || n.IPAM.Type != "host-local" {
				t.Errorf("unexpected config %+v", n)
			}
		})
	}
}
