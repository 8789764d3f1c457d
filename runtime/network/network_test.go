package network

import (
	"encoding/json"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// resultJSON is a podvirt-l2 bridge-mode guest-tap result of version ver.
func resultJSON(ver, podIf string) string {
	r := `{"cniVersion":"` + ver + `","interfaces":[
	 {"name":"pvbr0","mac":"0a:00:00:00:00:01"},
	 {"name":"veth1234","mac":"0a:00:00:00:00:02"},
	 {"name":"` + podIf + `","mac":"0a:00:00:00:00:03","sandbox":"/var/run/netns/pod"},
	 {"name":"` + podlink.BridgeName(podIf) + `","mac":"0a:00:00:00:00:04","sandbox":"/var/run/netns/pod"},
	 {"name":"` + podlink.TapName(podIf) + `","mac":"02:aa:bb:cc:dd:ee","mtu":1450,"sandbox":"/var/run/netns/pod"}],
	"ips":[{` + map[bool]string{true: `"version":"4",`, false: ""}[strings.HasPrefix(ver, "0.3")] + `"interface":4,"address":"10.4.0.7/24","gateway":"10.4.0.1"},
	       {` + map[bool]string{true: `"version":"6",`, false: ""}[strings.HasPrefix(ver, "0.3")] + `"interface":4,"address":"fd00::7/64"}],
	"routes":[{"dst":"0.0.0.0/0"},{"dst":"192.168.0.0/16","gw":"10.4.0.254"},{"dst":"172.16.0.0/12"},{"dst":"::/0"}],
	"dns":{"nameservers":["10.4.0.53","fd00::53"],"domain":"example.com","search":["example.com"]}}`
	return r
}

func TestGuestNIC(t *testing.T) {
	podIf := podlink.InterfaceName("l2")
	for _, ver := range []string{"0.3.1", "0.4.0", "1.0.0", "1.1.0"} {
		t.Run(ver, func(t *testing.T) {
			st := launchercmd.Networks{Attachments: []launchercmd.Attachment{{Name: "l2", Result: json.RawMessage(resultJSON(ver, podIf))}}}
			path := filepath.Join(t.TempDir(), "networks.json")
			b, _ := json.Marshal(st)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				t.Fatal(err)
			}
			loaded, err := Load(path)
			if err != nil {
				t.Fatal(err)
			}
			nics, err := GuestNICs(loaded)
			if err != nil {
				t.Fatal(err)
			}
			if len(nics) != 1 {
				t.Fatalf("%d NICs", len(nics))
			}
			n := nics[0]
			if n.Network != "l2" || n.Tap != podlink.TapName(podIf) || n.NetNS != "/var/run/netns/pod" || n.MAC.String() != "02:aa:bb:cc:dd:ee" {
				t.Errorf("NIC %+v", n)
			}
			l := n.Lease
			if l == nil {
				t.Fatal("no lease")
			}
			wantMTU := 1450
			if strings.HasPrefix(ver, "0.") {
				wantMTU = 0 // interfaces carry no MTU before 1.0.0
			}
			if l.Addr != netip.MustParsePrefix("10.4.0.7/24") || l.Router != netip.MustParseAddr("10.4.0.1") || l.MTU != wantMTU {
				t.Errorf("lease %+v", l)
			}
			if len(l.Routes) != 2 || l.Routes[0].Via != netip.MustParseAddr("10.4.0.254") || l.Routes[1].Via != netip.MustParseAddr("10.4.0.1") {
				t.Errorf("routes %+v", l.Routes)
			}
			if len(l.DNS) != 1 || l.Domain != "example.com" || len(l.Search) != 1 {
				t.Errorf("DNS %v %q %v", l.DNS, l.Domain, l.Search)
			}
		})
	}
}

func TestGuestNICErrors(t *testing.T) {
	for name, a := range map[string]launchercmd.Attachment{
		"no result":  {Name: "l2"},
		"not a tap":  {Name: "other", Result: json.RawMessage(resultJSON("1.1.0", podlink.InterfaceName("l2")))},
		"bad json":   {Name: "l2", Result: json.RawMessage(`{"cniVersion":`)},
		"no version": {Name: "l2", Result: json.RawMessage(`{"interfaces":[]}`)},
	} {
		if _, err := FromAttachment(a); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	// An L2-only network: a tap and no address.
	podIf := podlink.InterfaceName("l2")
	a := launchercmd.Attachment{Name: "l2", Result: json.RawMessage(`{"cniVersion":"1.1.0","interfaces":[{"name":"` + podlink.TapName(podIf) + `","mac":"02:aa:bb:cc:dd:ee","sandbox":"/x"}]}`)}
	n, err := FromAttachment(a)
	if err != nil || n.Lease != nil || n.Tap != podlink.TapName(podIf) {
		t.Errorf("L2-only: %+v %v", n, err)
	}
}
