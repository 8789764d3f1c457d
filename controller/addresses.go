package controller

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller/identity"
)

// VM field indexes: which VMs hold a MAC, and an address on a network.
const (
	indexMAC     = "podvirt.io/mac"
	indexAddress = "podvirt.io/address"
)

// Reasons a VM's MAC or address is refused.
const (
	ReasonMACInUse          = "MACInUse"
	ReasonNoFreeMAC         = "NoFreeMAC"
	ReasonAddressInUse      = "AddressInUse"
	ReasonAddressOutOfRange = "AddressOutOfRange"
	ReasonNoFreeAddress     = "NoFreeAddress"
	ReasonNetworkUnusable   = "NetworkUnusable"
)

var nadKind = schema.GroupVersionKind{Group: "k8s.cni.cncf.io", Version: "v1", Kind: "NetworkAttachmentDefinition"}

// refusal is why a VM cannot get the identity its spec asks for; the VM
// does not start until the user changes the spec or the holder goes.
type refusal struct{ reason, msg string }

func (r *refusal) Error() string { return r.msg }

func macIndex(obj client.Object) []string {
	var keys []string
	for _, ifc := range obj.(*v1alpha1.VirtualMachine).Spec.Template.Spec.Domain.Devices.Interfaces {
		if ifc.MACAddress != "" {
			keys = append(keys, strings.ToLower(ifc.MACAddress))
		}
	}
	return keys
}

func addressIndex(obj client.Object) []string {
	vm := obj.(*v1alpha1.VirtualMachine)
	var keys []string
	for _, ifc := range vm.Spec.Template.Spec.Domain.Devices.Interfaces {
		nad := networkOf(vm, ifc.Name)
		if nad == "" || ifc.IPAddress == "" {
			continue
		}
		if a, err := addressOf(ifc.IPAddress); err == nil {
			keys = append(keys, addressKey(nad, a))
		}
	}
	return keys
}

// addressOf is an ipAddress without its prefix.
func addressOf(s string) (netip.Addr, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Addr(), nil
	}
	return netip.ParseAddr(s)
}

func addressKey(nad string, a netip.Addr) string { return nad + "=" + a.String() }

// networkOf is "namespace/name" of the NetworkAttachmentDefinition the
// interface iface of vm is on, or "" when it is not on a Multus network.
func networkOf(vm *v1alpha1.VirtualMachine, iface string) string {
	return specNetwork(vm.Namespace, &vm.Spec.Template.Spec, iface)
}

// specNetwork is networkOf for the spec of a VM or VMI in namespace ns.
func specNetwork(ns string, spec *v1alpha1.VirtualMachineInstanceSpec, iface string) string {
	for _, n := range spec.Networks {
		if n.Name != iface || n.Multus == nil {
			continue
		}
		return qualifiedNAD(ns, n.Multus.NetworkName)
	}
	return ""
}

// qualifiedNAD is "namespace/name" of a NetworkAttachmentDefinition
// named "namespace/name" or "name" (in ns).
func qualifiedNAD(ns, name string) string {
	if n, nad, ok := strings.Cut(name, "/"); ok {
		return n + "/" + nad
	}
	return ns + "/" + name
}

// assignIdentity gives every interface of vm a MAC and, on an L2 network
// whose IPAM takes requests, an address, recording both in vm's spec; it
// checks the ones the user set. It reports whether it changed vm, and a
// *refusal when the spec asks for what another VM holds or a network
// cannot give.
func (r *VMReconciler) assignIdentity(ctx context.Context, vm *v1alpha1.VirtualMachine) (bool, error) {
	owner := string(vm.UID)
	changed := defaultPodInterface(&vm.Spec.Template.Spec)
	ifaces := vm.Spec.Template.Spec.Domain.Devices.Interfaces
	for i := range ifaces {
		ifc := &ifaces[i]
		if ifc.MACAddress == "" {
			mac, err := r.freeMAC(ctx, owner)
			if err != nil {
				return false, err
			}
			ifc.MACAddress, changed = mac, true
		} else {
			mac := strings.ToLower(ifc.MACAddress)
			holder, err := r.holder(ctx, vm, indexMAC, mac)
			if err != nil {
				return false, err
			}
			if holder != "" || !r.claim(indexMAC, mac, owner) {
				return false, &refusal{ReasonMACInUse, fmt.Sprintf(
					"interface %s: MAC %s is already taken by VM %s; set another macAddress, or remove it to get a free one", ifc.Name, ifc.MACAddress, orStarting(holder))}
			}
		}

		nad := networkOf(vm, ifc.Name)
		if nad == "" {
			continue
		}
		pool, err := r.pool(ctx, nad)
		if err != nil {
			return false, err
		}
		if pool == nil {
			continue // the network's IPAM takes no requests: its address is the IPAM's
		}
		if ifc.IPAddress == "" {
			recorded, err := r.freeAddress(ctx, nad, pool, owner)
			if err != nil {
				return false, err
			}
			ifc.IPAddress, changed = recorded, true
			continue
		}
		a, recorded, err := pool.ParseAddress(ifc.IPAddress)
		if err != nil {
			return false, &refusal{ReasonAddressOutOfRange, fmt.Sprintf("interface %s: ipAddress %s: %v", ifc.Name, ifc.IPAddress, err)}
		}
		if !pool.Contains(a) {
			return false, &refusal{ReasonAddressOutOfRange, fmt.Sprintf(
				"interface %s: ipAddress %s is outside the range %s of network %s (gateway %s); pick one inside it, or remove ipAddress to get a free one", ifc.Name, ifc.IPAddress, pool, nad, pool.Gateway)}
		}
		key := addressKey(nad, a)
		holder, err := r.holder(ctx, vm, indexAddress, key)
		if err != nil {
			return false, err
		}
		if holder != "" || !r.claim(indexAddress, key, owner) {
			return false, &refusal{ReasonAddressInUse, fmt.Sprintf(
				"interface %s: address %s on network %s is already taken by VM %s; set another ipAddress, or remove it to get a free one", ifc.Name, a, nad, orStarting(holder))}
		}
		if recorded != ifc.IPAddress {
			ifc.IPAddress, changed = recorded, true
		}
	}
	return changed, nil
}

// defaultPodInterface gives a spec without interfaces and networks its
// NIC on the pod network (unless autoattachPodInterface is false), and
// reports whether it did.
func defaultPodInterface(spec *v1alpha1.VirtualMachineInstanceSpec) bool {
	devices := &spec.Domain.Devices
	if len(spec.Networks) > 0 || len(devices.Interfaces) > 0 || !devices.PodInterfaceByDefault() {
		return false
	}
	spec.Networks = []v1alpha1.Network{{Name: v1alpha1.DefaultPodNetwork, NetworkSource: v1alpha1.NetworkSource{Pod: &v1alpha1.PodNetwork{}}}}
	devices.Interfaces = []v1alpha1.Interface{{Name: v1alpha1.DefaultPodNetwork}}
	return true
}

func orStarting(holder string) string {
	if holder == "" {
		return "being created at the same time"
	}
	return holder
}

// holder is the VM other than vm that holds key in index, "" if none. Of
// two VMs that ask for the same value, the older keeps it.
func (r *VMReconciler) holder(ctx context.Context, vm *v1alpha1.VirtualMachine, index, key string) (string, error) {
	vms, err := r.holding(ctx, index, key)
	for i := range vms {
		o := &vms[i]
		if o.UID == vm.UID {
			continue
		}
		if o.CreationTimestamp.Before(&vm.CreationTimestamp) ||
			o.CreationTimestamp.Equal(&vm.CreationTimestamp) && o.Namespace+"/"+o.Name < vm.Namespace+"/"+vm.Name {
			return o.Namespace + "/" + o.Name, nil
		}
	}
	return "", err
}

// free reports whether no VM but owner holds key in index and claims it
// for owner. Owner itself may hold it: a reconcile of a VM the cache shows
// older than its last write gets the value that write recorded.
func (r *VMReconciler) free(ctx context.Context, index, key, owner string) (bool, error) {
	vms, err := r.holding(ctx, index, key)
	if err != nil {
		return false, err
	}
	for _, vm := range vms {
		if string(vm.UID) != owner {
			return false, nil
		}
	}
	return r.claim(index, key, owner), nil
}

// holding lists the VMs the cache's index shows holding key.
func (r *VMReconciler) holding(ctx context.Context, index, key string) ([]v1alpha1.VirtualMachine, error) {
	vms := &v1alpha1.VirtualMachineList{}
	if err := r.Client.List(ctx, vms, client.MatchingFields{index: key}); err != nil {
		return nil, fmt.Errorf("looking up VMs by %s %s: %w", index, key, err)
	}
	return vms.Items, nil
}

// claim claims key of index for owner until the cache shows who holds it.
func (r *VMReconciler) claim(index, key, owner string) bool {
	return r.claims.Claim(index+"/"+key, owner, r.now())
}

// freeMAC is a MAC of the range no VM holds, tried from a random place so
// that controllers of clusters sharing an L2 rarely pick the same.
func (r *VMReconciler) freeMAC(ctx context.Context, owner string) (string, error) {
	macs := r.Config.MACRange
	start := rand.Uint64N(macs.Size()) //nolint:gosec // spreads picks, guards nothing: uniqueness comes from the index
	for i := range min(macs.Size(), 1<<20) {
		mac := macs.At((start + i) % macs.Size())
		ok, err := r.free(ctx, indexMAC, mac, owner)
		if err != nil || ok {
			return mac, err
		}
	}
	return "", &refusal{ReasonNoFreeMAC, fmt.Sprintf("every MAC of the range %s is taken: widen the controller's MAC range (chart value controller.macRange)", macs)}
}

// freeAddress is the lowest address of pool no VM holds on nad, with the
// pool's prefix.
func (r *VMReconciler) freeAddress(ctx context.Context, nad string, pool *identity.Pool, owner string) (string, error) {
	for a := pool.First; !pool.Last.Less(a); a = a.Next() {
		if !pool.Contains(a) {
			continue
		}
		ok, err := r.free(ctx, indexAddress, addressKey(nad, a), owner)
		if err != nil {
			return "", err
		}
		if ok {
			return pool.WithPrefix(a), nil
		}
	}
	return "", &refusal{ReasonNoFreeAddress, fmt.Sprintf("network %s: every address of its range %s is reserved by a VM; widen the range in its IPAM config, or delete VMs", nad, pool)}
}

// pool reads the address range of the NetworkAttachmentDefinition nad.
func (r *VMReconciler) pool(ctx context.Context, nad string) (*identity.Pool, error) {
	ns, name, _ := strings.Cut(nad, "/")
	obj := &unstructured.Unstructured{}
	obj.SetGroupVersionKind(nadKind)
	if err := r.APIReader.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, obj); err != nil {
		if client.IgnoreNotFound(err) == nil {
			return nil, &refusal{ReasonNetworkUnusable, fmt.Sprintf("network %s: no NetworkAttachmentDefinition of that name; create it, or fix the VM's multus networkName", nad)}
		}
		return nil, fmt.Errorf("reading NetworkAttachmentDefinition %s: %w", nad, err)
	}
	config, _, _ := unstructured.NestedString(obj.Object, "spec", "config")
	pool, err := identity.PoolFromConfig(config)
	if err != nil {
		return nil, &refusal{ReasonNetworkUnusable, fmt.Sprintf("network %s: %v; fix its spec.config", nad, err)}
	}
	return pool, nil
}

// asRefusal unwraps a refusal from err.
func asRefusal(err error) (*refusal, bool) {
	var r *refusal
	ok := errors.As(err, &r)
	return r, ok
}

// identityOf says each interface's MAC and address, for the event.
func identityOf(vm *v1alpha1.VirtualMachine) string {
	var parts []string
	for _, ifc := range vm.Spec.Template.Spec.Domain.Devices.Interfaces {
		part := "interface " + ifc.Name + ": MAC " + ifc.MACAddress
		if ifc.IPAddress != "" {
			part += ", address " + ifc.IPAddress
		}
		parts = append(parts, part)
	}
	return strings.Join(parts, "; ")
}
