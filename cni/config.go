package cni

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"

	"github.com/containernetworking/cni/pkg/types"
	"github.com/containernetworking/cni/pkg/utils"
	"github.com/vishvananda/netlink"

	"github.com/podvirt/podvirt/contracts/cniresults"
)

// Modes: how the pod's link reaches the shared L2.
const (
	ModeMacvlan = "macvlan" // a macvlan child of the node's master link
	ModeBridge  = "bridge"  // a veth whose node end is a port of a Linux bridge
)

// Guest kinds: what, besides the pod's link, the plugin prepares for a VM.
const (
	GuestNone = "none" // the pod itself uses the link and gets the IP
	GuestTap  = "tap"  // a tap for QEMU; the IP is for the guest, not the pod
)

// DefaultBridge is the node bridge used in bridge mode when "bridge" is unset.
const DefaultBridge = "podvirt0"

// NetConf is podvirt-l2's network configuration (a NAD's "config").
type NetConf struct {
	types.NetConf

	// Mode is "macvlan" or "bridge" (required).
	Mode string `json:"mode"`
	// Master is the macvlan parent on the node (macvlan mode, required).
	Master string `json:"master,omitempty"`
	// MacvlanMode is the macvlan mode: bridge (default), private, vepa, passthru.
	MacvlanMode string `json:"macvlanMode,omitempty"`
	// Bridge is the node bridge (bridge mode); created when missing.
	Bridge string `json:"bridge,omitempty"`
	// Uplink is a node link (NIC, bond, VLAN link) that ADD makes a port of
	// the bridge (bridge mode), so that the bridges of all nodes share one
	// L2 segment; with a VLAN it carries that VLAN tagged. Empty: the
	// bridge reaches no further than the node.
	Uplink string `json:"uplink,omitempty"`
	// VLAN tags the attachment: the bridge port's PVID in bridge mode, a
	// <master>.<vlan> parent in macvlan mode. 0 means untagged.
	VLAN int `json:"vlan,omitempty"`
	// MTU of the pod's link (and tap); 0 keeps the kernel's default.
	MTU int `json:"mtu,omitempty"`
	// MAC of the attachment: the pod link's for guest "none", the guest's
	// for guest "tap". runtimeConfig.mac, args.cni.mac and CNI_ARGS MAC
	// override it.
	MAC string `json:"mac,omitempty"`
	// Guest is "none" (default) or "tap".
	Guest string `json:"guest,omitempty"`
	// TapOwner and TapGroup let a process with that uid/gid open the tap
	// without CAP_NET_ADMIN (guest "tap" only; both default to 0).
	TapOwner *uint32 `json:"tapOwner,omitempty"`
	TapGroup *uint32 `json:"tapGroup,omitempty"`
	// ResultsDir is where, with guest "tap", ADD saves its result for the
	// node daemon, keyed by pod UID and interface (see package
	// contracts/cniresults); default cniresults.DefaultDir.
	ResultsDir string `json:"resultsDir,omitempty"`

	RuntimeConfig struct {
		MAC string `json:"mac,omitempty"`
	} `json:"runtimeConfig,omitempty"`
	Args struct {
		CNI struct {
			MAC string `json:"mac,omitempty"`
			// HandoffFrom is the UID of a pod on this node whose
			// attachment of the same interface this one takes over at a
			// same-node live migration's switch (contracts/cniresults);
			// the controller passes it as the Multus selection's cni-args.
			HandoffFrom string `json:"podvirtHandoffFrom,omitempty"`
		} `json:"cni,omitempty"`
	} `json:"args,omitempty"`

	// Resolved by loadConf.
	macvlanMode  netlink.MacvlanMode
	mac          net.HardwareAddr
	podUID       string // CNI_ARGS K8S_POD_UID, which Multus passes
	podNamespace string // CNI_ARGS K8S_POD_NAMESPACE
}

// envArgs are the CNI_ARGS keys podvirt-l2 understands; the K8S_* ones are
// what kubelet and Multus pass: K8S_POD_UID keys the saved result of a
// guest "tap" ADD, the others are accepted and ignored.
type envArgs struct {
	types.CommonArgs
	MAC                        types.UnmarshallableString `json:"mac,omitempty"`
	K8S_POD_NAME               types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_NAMESPACE          types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_INFRA_CONTAINER_ID types.UnmarshallableString //nolint:revive // CNI_ARGS key
	K8S_POD_UID                types.UnmarshallableString //nolint:revive // CNI_ARGS key
}

// configError is a CNI "invalid network config" error naming the field.
func configError(field, format string, a ...any) *types.Error {
	return types.NewError(types.ErrInvalidNetworkConfig, field+": "+fmt.Sprintf(format, a...), "")
}

// loadConf decodes and validates a network configuration and applies the
// MAC overrides from CNI_ARGS (cniArgs), args.cni and runtimeConfig, in
// that order of increasing priority. It looks nothing up on the node.
func loadConf(stdin []byte, cniArgs string) (*NetConf, error) {
	n := &NetConf{}
	if err := json.Unmarshal(stdin, n); err != nil {
		return nil, types.NewError(types.ErrDecodingFailure, fmt.Sprintf("decoding network config: %v", err), "")
	}
	if n.Guest == "" {
		n.Guest = GuestNone
	}

	switch n.Mode {
	case ModeMacvlan:
		if n.Master == "" {
			return nil, configError("master", "required in macvlan mode")
		}
		if err := validLinkName("master", n.Master); err != nil {
			return nil, err
		}
		if n.Bridge != "" {
			return nil, configError("bridge", "only valid in bridge mode")
		}
		if n.Uplink != "" {
			return nil, configError("uplink", "only valid in bridge mode (macvlan mode reaches the segment through master)")
		}
		m, err := macvlanModeFromString(n.MacvlanMode)
		if err != nil {
			return nil, err
		}
		n.macvlanMode = m
		if n.VLAN != 0 {
			if err := validLinkName("master", vlanLinkName(n.Master, n.VLAN)); err != nil {
				return nil, configError("master", "%q is too long to name its VLAN %d link %q", n.Master, n.VLAN, vlanLinkName(n.Master, n.VLAN))
			}
		}
	case ModeBridge:
		if n.Master != "" {
			return nil, configError("master", "only valid in macvlan mode")
		}
		if n.MacvlanMode != "" {
			return nil, configError("macvlanMode", "only valid in macvlan mode")
		}
		if n.Bridge == "" {
			n.Bridge = DefaultBridge
		}
		if err := validLinkName("bridge", n.Bridge); err != nil {
			return nil, err
		}
		if n.Uplink != "" {
			if err := validLinkName("uplink", n.Uplink); err != nil {
				return nil, err
			}
			if n.Uplink == n.Bridge {
				return nil, configError("uplink", "%q is the bridge itself; name the node link that leads to the other nodes", n.Uplink)
			}
		}
	case "":
		return nil, configError("mode", "required, one of %q or %q", ModeMacvlan, ModeBridge)
	default:
		return nil, configError("mode", "must be %q or %q, got %q", ModeMacvlan, ModeBridge, n.Mode)
	}

	if n.VLAN < 0 || n.VLAN > 4094 {
		return nil, configError("vlan", "must be between 0 and 4094, got %d", n.VLAN)
	}
	if n.MTU < 0 || n.MTU > 65535 {
		return nil, configError("mtu", "must be between 0 and 65535, got %d", n.MTU)
	}
	if n.MTU != 0 && n.MTU < 68 {
		return nil, configError("mtu", "must be at least 68, got %d", n.MTU)
	}

	if n.ResultsDir == "" {
		n.ResultsDir = cniresults.DefaultDir
	}
	if !filepath.IsAbs(n.ResultsDir) {
		return nil, configError("resultsDir", "must be an absolute path, got %q", n.ResultsDir)
	}
	switch n.Guest {
	case GuestNone:
		if n.TapOwner != nil || n.TapGroup != nil {
			return nil, configError("tapOwner", "only valid with guest %q", GuestTap)
		}
	case GuestTap:
	default:
		return nil, configError("guest", "must be %q or %q, got %q", GuestNone, GuestTap, n.Guest)
	}

	// MAC: the config's own, then CNI_ARGS, args.cni, runtimeConfig.
	macField, mac := "mac", n.MAC
	if cniArgs != "" {
		e := envArgs{}
		if err := types.LoadArgs(cniArgs, &e); err != nil {
			return nil, types.NewError(types.ErrInvalidEnvironmentVariables, fmt.Sprintf("CNI_ARGS: %v", err), "")
		}
		if e.MAC != "" {
			macField, mac = "CNI_ARGS MAC", string(e.MAC)
		}
		n.podUID = string(e.K8S_POD_UID)
		n.podNamespace = string(e.K8S_POD_NAMESPACE)
	}
	if n.Args.CNI.HandoffFrom != "" && n.Guest != GuestTap {
		return nil, configError("args.cni.podvirtHandoffFrom", "only valid with guest %q (a VM's attachment)", GuestTap)
	}
	if n.Args.CNI.MAC != "" {
		macField, mac = "args.cni.mac", n.Args.CNI.MAC
	}
	if n.RuntimeConfig.MAC != "" {
		macField, mac = "runtimeConfig.mac", n.RuntimeConfig.MAC
	}
	if mac != "" {
		hw, err := parseUnicastMAC(mac)
		if err != nil {
			return nil, configError(macField, "%v", err)
		}
		n.mac = hw
	}
	return n, nil
}

// parseUnicastMAC accepts a 6-byte unicast Ethernet address.
func parseUnicastMAC(s string) (net.HardwareAddr, error) {
	hw, err := net.ParseMAC(s)
	if err != nil {
		return nil, fmt.Errorf("invalid MAC %q", s)
	}
	if len(hw) != 6 {
		return nil, fmt.Errorf("invalid MAC %q: want 6 bytes, got %d", s, len(hw))
	}
	if hw[0]&1 == 1 {
		return nil, fmt.Errorf("invalid MAC %q: multicast", s)
	}
	if string(hw) == string(make([]byte, 6)) {
		return nil, fmt.Errorf("invalid MAC %q: all zeros", s)
	}
	return hw, nil
}

func validLinkName(field, name string) *types.Error {
	if err := utils.ValidateInterfaceName(name); err != nil {
		return configError(field, "invalid link name %q: %s", name, err.Msg)
	}
	return nil
}

func macvlanModeFromString(s string) (netlink.MacvlanMode, error) {
	switch s {
	case "", "bridge":
		return netlink.MACVLAN_MODE_BRIDGE, nil
	case "private":
		return netlink.MACVLAN_MODE_PRIVATE, nil
	case "vepa":
		return netlink.MACVLAN_MODE_VEPA, nil
	case "passthru":
		return netlink.MACVLAN_MODE_PASSTHRU, nil
	}
	return 0, configError("macvlanMode", "must be one of bridge, private, vepa, passthru, got %q", s)
}

func macvlanModeString(m netlink.MacvlanMode) string {
	switch m {
	case netlink.MACVLAN_MODE_BRIDGE:
		return "bridge"
	case netlink.MACVLAN_MODE_PRIVATE:
		return "private"
	case netlink.MACVLAN_MODE_VEPA:
		return "vepa"
	case netlink.MACVLAN_MODE_PASSTHRU:
		return "passthru"
	case netlink.MACVLAN_MODE_SOURCE:
		return "source"
	}
	return fmt.Sprintf("mode(%d)", m)
}

// vlanLinkName is the node link that carries VLAN vlan of master in
// macvlan mode.
func vlanLinkName(master string, vlan int) string {
	return fmt.Sprintf("%s.%d", master, vlan)
}
