// Package podlink names the links inside a launcher pod that more than
// one component must agree on: the controller asks Multus for an
// interface per VMI network, podvirt-l2 builds the guest's tap (and, in
// bridge mode, an in-pod bridge) next to it, and the node daemon and the
// launcher find the tap by the same name.
package podlink

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash/fnv"
	"net"
)

// maxLen is the longest link name Linux takes (IFNAMSIZ-1).
const maxLen = 15

// InterfaceName is the name, inside the launcher pod, of the interface
// Multus attaches for network: "pv" and 10 hex digits of its hash, so it
// is stable, unique per network and fits IFNAMSIZ.
func InterfaceName(network string) string {
	sum := sha256.Sum256([]byte(network))
	return "pv" + hex.EncodeToString(sum[:])[:10]
}

// TapName is the name of the guest tap that goes with pod link ifName.
func TapName(ifName string) string { return derivedName("tap", ifName) }

// BridgeName is the name of the in-pod bridge (bridge mode, guest "tap")
// that goes with pod link ifName.
func BridgeName(ifName string) string { return derivedName("br", ifName) }

// TapForNetwork is the tap podvirt-l2 makes for the VMI network named
// network when the controller attaches it under InterfaceName.
func TapForNetwork(network string) string { return TapName(InterfaceName(network)) }

// derivedName is prefix+ifName, or prefix and a hash of ifName when that is
// longer than a link name may be.
func derivedName(prefix, ifName string) string {
	if n := prefix + ifName; len(n) <= maxLen {
		return n
	}
	h := fnv.New32a()
	_, _ = h.Write([]byte(ifName))
	return fmt.Sprintf("%s%08x", prefix, h.Sum32())
}

// RandomMAC is a random locally administered unicast MAC: a guest's when
// none was asked for, or a stand-in for a pod link that must not hold its
// guest's (a same-node migration's, contracts/cniresults).
func RandomMAC() (net.HardwareAddr, error) {
	hw := make(net.HardwareAddr, 6)
	if _, err := rand.Read(hw); err != nil {
		return nil, fmt.Errorf("generating a MAC: %w", err)
	}
	hw[0] = hw[0]&^1 | 2
	return hw, nil
}
