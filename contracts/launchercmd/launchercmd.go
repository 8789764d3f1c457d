// Package launchercmd is the protocol between the node daemon and a
// launcher: the gRPC Command service (command.proto) on the launcher's
// unix socket, where that socket is, what Start carries besides the VMI,
// and how the domain's state travels. The launcher serves it
// (runtime/cmdserver), the node daemon calls it (runtime/cmdclient); the
// two depend on this package, not on each other.
package launchercmd

import (
	"encoding/json"
	"path/filepath"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// SocketPath is the command socket of the VMI with uid in dir (empty:
// v1alpha1.SocketDir).
func SocketPath(dir, uid string) string {
	if dir == "" {
		dir = v1.SocketDir
	}
	return filepath.Join(dir, uid+".sock")
}

// Networks is the launcher's network input, StartRequest.networks: the
// CNI results of the launcher pod's L2 attachments, as the node daemon
// found them (or a test that ran the plugin itself wrote them for
// podvirt-launcher --networks):
//
//	{"networks": [
//	  {"name": "l2", "result": {"cniVersion": "1.1.0", "interfaces": [...], "ips": [...], ...}}
//	]}
//
// The launcher reads the tap, guest MAC and lease out of each result
// (runtime/network).
type Networks struct {
	Attachments []Attachment `json:"networks"`
}

// Attachment is the CNI result of one VMI network's pod interface.
type Attachment struct {
	// Name is the VMI network name.
	Name string `json:"name"`
	// Interface is the pod interface name the plugin was called with;
	// empty means podlink.InterfaceName(Name).
	Interface string `json:"interface,omitempty"`
	// Result is podvirt-l2's ADD result as it printed it, in any spec
	// version it speaks. The Multus network-status annotation alone is
	// not enough: its "ips" carry no prefix length and it has no routes.
	Result json.RawMessage `json:"result"`
}

// DomainState is the state the launcher reports: one of v1alpha1's
// domain states, or "" while it waits for Start. The wire carries the
// state's name, so the launcher, the protocol and the VMI status share
// one set of values.
func (x *StatusResponse) DomainState() v1.DomainState { return v1.DomainState(x.GetState()) }

// DomainState is the domain's final state after a shutdown.
func (x *ShutdownResponse) DomainState() v1.DomainState { return v1.DomainState(x.GetState()) }

// Readiness verdicts of StatusResponse.readiness.
const (
	Ready    = "Ready"
	NotReady = "NotReady"
)
