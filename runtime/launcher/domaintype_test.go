package launcher

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/kvm"
)

func TestDefaultDomainType(t *testing.T) {
	old := KVMDevice
	t.Cleanup(func() { KVMDevice = old })
	KVMDevice = filepath.Join(t.TempDir(), "kvm")
	if got := DefaultDomainType(); got != converter.DomainQEMU {
		t.Fatalf("without %s: %s", KVMDevice, got)
	}
	// A device node that exists is not enough: it must be a KVM that runs
	// guests.
	if err := os.WriteFile(KVMDevice, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if got := DefaultDomainType(); got != converter.DomainQEMU {
		t.Fatalf("with a regular file at %s: %s", KVMDevice, got)
	}
	KVMDevice = kvm.DevicePath
	want := converter.DomainQEMU
	if kvm.Probe(kvm.DevicePath) == nil {
		want = converter.DomainKVM
	}
	if got := DefaultDomainType(); got != want {
		t.Fatalf("on this host (kvm.Probe: %v): %s, want %s", kvm.Probe(kvm.DevicePath), got, want)
	}
}
