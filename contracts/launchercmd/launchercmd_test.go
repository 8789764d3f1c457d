package launchercmd

import (
	"encoding/json"
	"testing"

	"google.golang.org/protobuf/proto"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestDomainStateOnTheWire: every domain state the VMI status knows comes
// out of a StatusResponse and a ShutdownResponse as it went in.
func TestDomainStateOnTheWire(t *testing.T) {
	for _, want := range append([]v1.DomainState{""}, v1.DomainStates...) {
		b, err := proto.Marshal(&StatusResponse{State: string(want)})
		if err != nil {
			t.Fatal(err)
		}
		var st StatusResponse
		if err := proto.Unmarshal(b, &st); err != nil {
			t.Fatal(err)
		}
		if got := st.DomainState(); got != want {
			t.Errorf("StatusResponse: sent %q, got %q", want, got)
		}
		if got := (&ShutdownResponse{State: string(want)}).DomainState(); got != want {
			t.Errorf("ShutdownResponse: sent %q, got %q", want, got)
		}
	}
}

func TestNetworksJSON(t *testing.T) {
	in := `{"networks":[{"name":"l2","interface":"pv0123456789","result":{"cniVersion":"1.1.0"}}]}`
	var n Networks
	if err := json.Unmarshal([]byte(in), &n); err != nil {
		t.Fatal(err)
	}
	if len(n.Attachments) != 1 || n.Attachments[0].Name != "l2" || n.Attachments[0].Interface != "pv0123456789" || string(n.Attachments[0].Result) != `{"cniVersion":"1.1.0"}` {
		t.Fatalf("decoded %+v", n)
	}
	out, err := json.Marshal(n)
	if err != nil || string(out) != in {
		t.Errorf("encoded %s, %v; want %s", out, err, in)
	}
}

func TestSocketPath(t *testing.T) {
	if got := SocketPath("", "u1"); got != v1.SocketDir+"/u1.sock" {
		t.Errorf("SocketPath default dir = %s", got)
	}
	if got := SocketPath("/x", "u1"); got != "/x/u1.sock" {
		t.Errorf("SocketPath = %s", got)
	}
}
