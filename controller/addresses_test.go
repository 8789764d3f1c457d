package controller

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"

	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/types"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller/identity"
	"github.com/podvirt/podvirt/internal/polltest"
)

// l2NAD makes the NAD "l2" in ns: podvirt-l2 with host-local handing out
// 192.168.50.first-192.168.50.last.
func l2NAD(t *testing.T, ns string, first, last int) {
	t.Helper()
	config := fmt.Sprintf(`{"cniVersion":"1.0.0","name":"l2","type":"podvirt-l2","mode":"bridge","bridge":"br0","guest":"tap",
"capabilities":{"mac":true,"ips":true},"ipam":{"type":"host-local","ranges":[[{"subnet":"192.168.50.0/24","rangeStart":"192.168.50.%d","rangeEnd":"192.168.50.%d","gateway":"192.168.50.1"}]]}}`, first, last)
	nad := &unstructured.Unstructured{}
	nad.SetGroupVersionKind(nadKind)
	nad.SetNamespace(ns)
	nad.SetName("l2")
	if err := unstructured.SetNestedField(nad.Object, config, "spec", "config"); err != nil {
		t.Fatal(err)
	}
	create(t, nad)
}

// l2VM is testVM with a second interface on the NAD "l2".
func l2VM(ns, name string, strategy v1alpha1.RunStrategy) *v1alpha1.VirtualMachine {
	vm := testVM(ns, name, strategy)
	spec := &vm.Spec.Template.Spec
	spec.Domain.Devices.Interfaces = append(spec.Domain.Devices.Interfaces, v1alpha1.Interface{Name: "l2", Binding: v1alpha1.InterfaceBindingTap})
	spec.Networks = append(spec.Networks, v1alpha1.Network{Name: "l2", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "l2"}}})
	return vm
}

// waitIdentity waits until the controller recorded a MAC for every
// interface of the VM and an address for its "l2" one, and returns the VM.
func waitIdentity(t *testing.T, ns, name string) *v1alpha1.VirtualMachine {
	t.Helper()
	var vm *v1alpha1.VirtualMachine
	polltest.Eventually(t, wait, "VM "+name+" has MACs and an address", func() (bool, string) {
		vm = getVM(t, ns, name)
		for _, ifc := range vm.Spec.Template.Spec.Domain.Devices.Interfaces {
			if ifc.MACAddress == "" || ifc.Name == "l2" && ifc.IPAddress == "" {
				return false, fmt.Sprintf("interfaces %+v", vm.Spec.Template.Spec.Domain.Devices.Interfaces)
			}
		}
		return true, ""
	})
	return vm
}

// networksAnnotation is the launcher pod's Multus request of vmi.
func networksAnnotation(t *testing.T, vmi *v1alpha1.VirtualMachineInstance) []multusSelection {
	t.Helper()
	var sel []multusSelection
	raw := launcherPodOf(t, vmi).Annotations[v1alpha1.MultusNetworksAnnotation]
	if err := json.Unmarshal([]byte(raw), &sel); err != nil {
		t.Fatalf("launcher pod's networks annotation %q: %v", raw, err)
	}
	return sel
}

// A VM gets its MACs and its L2 address when it is created; every VMI of
// it, after a restart and after stop and start, uses the same ones, and
// its launcher pod asks the network for them. Deleting the VM frees them.
func TestIdentityKeptAcrossRestarts(t *testing.T) {
	ns := namespace(t)
	l2NAD(t, ns, 10, 20)
	create(t, l2VM(ns, "pet", v1alpha1.RunStrategyAlways))
	vm := waitIdentity(t, ns, "pet")
	ifaces := vm.Spec.Template.Spec.Domain.Devices.Interfaces
	macRange, _ := identity.ParseMACRange(identity.DefaultMACRange)
	for _, ifc := range ifaces {
		if !macRange.Contains(ifc.MACAddress) {
			t.Errorf("interface %s: MAC %s is outside the range %s", ifc.Name, ifc.MACAddress, macRange)
		}
	}
	if ifaces[0].MACAddress == ifaces[1].MACAddress {
		t.Fatalf("both interfaces got MAC %s", ifaces[0].MACAddress)
	}
	if got := ifaces[1].IPAddress; got != "192.168.50.10/24" {
		t.Fatalf("l2 address %s, want the lowest of the range, 192.168.50.10/24", got)
	}

	same := func(vmi *v1alpha1.VirtualMachineInstance, when string) {
		t.Helper()
		got := vmi.Spec.Domain.Devices.Interfaces
		for i := range ifaces {
			if got[i].MACAddress != ifaces[i].MACAddress || got[i].IPAddress != ifaces[i].IPAddress {
				t.Fatalf("%s: VMI interface %s has MAC %s address %q, want %s %q", when, got[i].Name, got[i].MACAddress, got[i].IPAddress, ifaces[i].MACAddress, ifaces[i].IPAddress)
			}
		}
		sel := networksAnnotation(t, vmi)
		if len(sel) != 1 || sel[0].MAC != ifaces[1].MACAddress || len(sel[0].IPs) != 1 || sel[0].IPs[0] != ifaces[1].IPAddress {
			t.Fatalf("%s: launcher pod asks the network for %+v, want MAC %s and ips [%s]", when, sel, ifaces[1].MACAddress, ifaces[1].IPAddress)
		}
	}
	vmi := waitVMI(t, ns, "pet", "", "")
	same(vmi, "first start")

	// Restart: the VMI goes, Always makes a new one.
	if err := k8s.Delete(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	vmi = waitVMI(t, ns, "pet", vmi.UID, "")
	same(vmi, "after a restart")

	setRunStrategy(t, ns, "pet", v1alpha1.RunStrategyHalted)
	waitNoVMI(t, ns, "pet")
	setRunStrategy(t, ns, "pet", v1alpha1.RunStrategyAlways)
	same(waitVMI(t, ns, "pet", vmi.UID, ""), "after stop and start")

	// A second VM gets the next address; once the first is deleted, a third
	// gets the freed one.
	create(t, l2VM(ns, "second", v1alpha1.RunStrategyHalted))
	if got := waitIdentity(t, ns, "second").Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress; got != "192.168.50.11/24" {
		t.Fatalf("second VM's address %s, want 192.168.50.11/24", got)
	}
	if err := k8s.Delete(context.Background(), getVM(t, ns, "pet")); err != nil {
		t.Fatal(err)
	}
	polltest.Eventually(t, wait, "VM pet is gone", func() (bool, string) {
		err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: "pet"}, &v1alpha1.VirtualMachine{})
		return err != nil, "still there"
	})
	create(t, l2VM(ns, "third", v1alpha1.RunStrategyHalted))
	if got := waitIdentity(t, ns, "third").Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress; got != "192.168.50.10/24" {
		t.Fatalf("third VM's address %s, want the deleted VM's 192.168.50.10/24", got)
	}
}

// Twenty VMs created at once get twenty different MACs per interface and
// twenty different addresses.
func TestIdentityUniqueWhenCreatedTogether(t *testing.T) {
	ns := namespace(t)
	l2NAD(t, ns, 100, 119)
	const n = 20
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() { create(t, l2VM(ns, fmt.Sprintf("vm-%d", i), v1alpha1.RunStrategyHalted)) })
	}
	wg.Wait()
	macs, addrs := map[string]string{}, map[string]string{}
	for i := range n {
		name := fmt.Sprintf("vm-%d", i)
		for _, ifc := range waitIdentity(t, ns, name).Spec.Template.Spec.Domain.Devices.Interfaces {
			if other, ok := macs[ifc.MACAddress]; ok {
				t.Errorf("MAC %s given to %s and %s", ifc.MACAddress, other, name)
			}
			macs[ifc.MACAddress] = name
			if ifc.IPAddress == "" {
				continue
			}
			if other, ok := addrs[ifc.IPAddress]; ok {
				t.Errorf("address %s given to %s and %s", ifc.IPAddress, other, name)
			}
			addrs[ifc.IPAddress] = name
		}
	}
	if len(addrs) != n {
		t.Fatalf("%d addresses for %d VMs", len(addrs), n)
	}
	// The range is full: one more VM is refused, and says why.
	create(t, l2VM(ns, "one-too-many", v1alpha1.RunStrategyAlways))
	refused(t, ns, "one-too-many", ReasonNoFreeAddress, "every address of its range 192.168.50.100-192.168.50.119 is reserved")
}

// refused waits for the VM's Failure condition with reason and a message
// holding want, and checks the VM has no VMI.
func refused(t *testing.T, ns, name, reason, want string) {
	t.Helper()
	polltest.Eventually(t, wait, "VM "+name+" refused with "+reason, func() (bool, string) {
		c := meta.FindStatusCondition(getVM(t, ns, name).Status.Conditions, ConditionFailure)
		if c == nil {
			return false, "no Failure condition"
		}
		return c.Reason == reason && strings.Contains(c.Message, want), c.Reason + ": " + c.Message
	})
	if vmi := getVMI(t, ns, name); vmi != nil {
		t.Fatalf("refused VM %s has a VMI", name)
	}
}

// What a user sets is checked: a MAC or address another VM holds and an
// address outside the network's range are refused with the reason; an
// address inside it is recorded with the network's prefix and used.
func TestIdentityPinnedByUser(t *testing.T) {
	ns := namespace(t)
	l2NAD(t, ns, 10, 20)
	create(t, l2VM(ns, "first", v1alpha1.RunStrategyHalted))
	first := waitIdentity(t, ns, "first").Spec.Template.Spec.Domain.Devices.Interfaces

	sameMAC := l2VM(ns, "same-mac", v1alpha1.RunStrategyAlways)
	sameMAC.Spec.Template.Spec.Domain.Devices.Interfaces[1].MACAddress = strings.ToUpper(first[1].MACAddress)
	create(t, sameMAC)
	refused(t, ns, "same-mac", ReasonMACInUse, "is already taken by VM "+ns+"/first")

	sameIP := l2VM(ns, "same-ip", v1alpha1.RunStrategyAlways)
	sameIP.Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress = "192.168.50.10"
	create(t, sameIP)
	refused(t, ns, "same-ip", ReasonAddressInUse, "address 192.168.50.10 on network "+ns+"/l2 is already taken by VM "+ns+"/first")

	outside := l2VM(ns, "outside", v1alpha1.RunStrategyAlways)
	outside.Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress = "192.168.50.200"
	create(t, outside)
	refused(t, ns, "outside", ReasonAddressOutOfRange, "outside the range 192.168.50.10-192.168.50.20")

	pinned := l2VM(ns, "pinned", v1alpha1.RunStrategyAlways)
	pinned.Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress = "192.168.50.15"
	create(t, pinned)
	polltest.Eventually(t, wait, "the pinned address recorded with its prefix", func() (bool, string) {
		got := getVM(t, ns, "pinned").Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress
		return got == "192.168.50.15/24", got
	})
	sel := networksAnnotation(t, waitVMI(t, ns, "pinned", "", ""))
	if len(sel) != 1 || len(sel[0].IPs) != 1 || sel[0].IPs[0] != "192.168.50.15/24" {
		t.Fatalf("launcher pod asks for %+v, want ips [192.168.50.15/24]", sel)
	}

	// The refused VM starts once its address is fixed.
	polltest.Eventually(t, wait, "outside's address changed", func() (bool, string) {
		vm := getVM(t, ns, "outside")
		vm.Spec.Template.Spec.Domain.Devices.Interfaces[1].IPAddress = ""
		err := k8s.Update(context.Background(), vm)
		return err == nil, fmt.Sprint(err)
	})
	waitVMI(t, ns, "outside", "", "")
	polltest.Eventually(t, wait, "the Failure condition gone after the fix", func() (bool, string) {
		c := meta.FindStatusCondition(getVM(t, ns, "outside").Status.Conditions, ConditionFailure)
		return c == nil, fmt.Sprint(c)
	})
}

// A VM that lists no interfaces gets one on the pod network, with a MAC,
// as in KubeVirt; autoattachPodInterface: false keeps it without a NIC.
func TestPodInterfaceByDefault(t *testing.T) {
	ns := namespace(t)
	bare := testVM(ns, "bare", v1alpha1.RunStrategyHalted)
	bare.Spec.Template.Spec.Networks, bare.Spec.Template.Spec.Domain.Devices.Interfaces = nil, nil
	create(t, bare)
	none := testVM(ns, "none", v1alpha1.RunStrategyHalted)
	none.Spec.Template.Spec.Networks, none.Spec.Template.Spec.Domain.Devices.Interfaces = nil, nil
	none.Spec.Template.Spec.Domain.Devices.AutoattachPodInterface = new(false)
	create(t, none)

	polltest.Eventually(t, wait, "a VM without interfaces gets one NIC on the pod network, named default, with a MAC", func() (bool, string) {
		spec := getVM(t, ns, "bare").Spec.Template.Spec
		ifc := spec.PodInterface()
		return ifc != nil && ifc.Name == v1alpha1.DefaultPodNetwork && len(spec.Networks) == 1 && ifc.MACAddress != "",
			fmt.Sprintf("networks %+v, interfaces %+v", spec.Networks, spec.Domain.Devices.Interfaces)
	})
	polltest.Eventually(t, wait, "VM none is reconciled (Stopped)", func() (bool, string) {
		st := getVM(t, ns, "none").Status.PrintableStatus
		return st == v1alpha1.PrintableStatusStopped, string(st)
	})
	if spec := getVM(t, ns, "none").Spec.Template.Spec; len(spec.Networks) != 0 || len(spec.Domain.Devices.Interfaces) != 0 {
		t.Errorf("autoattachPodInterface: false, yet the VM got networks %+v, interfaces %+v", spec.Networks, spec.Domain.Devices.Interfaces)
	}
}
