package cli

import (
	"strings"
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestPause sets and removes the VMI's paused annotation through vm and
// vmi, refuses what makes no sense, and leaves the VM alone.
func TestPause(t *testing.T) {
	ns := namespace(t)
	vm := testVM(ns, "p", v1.RunStrategyAlways)
	create(t, vm)
	ownVMI(t, vm, v1.Running)
	vmBefore := getVM(t, ns, "p")

	paused := func() string { return getVMI(t, ns, "p").Annotations[v1.PausedAnnotation] }
	if out, err := podvirtctl(t, ns, "pause", "vm", "p"); err != nil || !strings.Contains(out, "vmi p was scheduled to pause") {
		t.Fatalf("pause vm: %q, %v", out, err)
	}
	if got := paused(); got != "true" {
		t.Fatalf("annotation %s=%q after pause, want true", v1.PausedAnnotation, got)
	}
	if _, err := podvirtctl(t, ns, "pause", "vmi", "p"); err == nil || !strings.Contains(err.Error(), "already paused") || !strings.Contains(err.Error(), "podvirtctl unpause vmi p") {
		t.Errorf("second pause: %v", err)
	}
	if out, err := podvirtctl(t, ns, "unpause", "vmi", "p"); err != nil || !strings.Contains(out, "vmi p was scheduled to unpause") {
		t.Fatalf("unpause vmi: %q, %v", out, err)
	}
	if vmi := getVMI(t, ns, "p"); vmi.Annotations != nil {
		if _, ok := vmi.Annotations[v1.PausedAnnotation]; ok {
			t.Fatalf("annotation still there after unpause: %v", vmi.Annotations)
		}
	}
	if _, err := podvirtctl(t, ns, "unpause", "vm", "p"); err == nil || !strings.Contains(err.Error(), "is not paused") {
		t.Errorf("unpause of a running guest: %v", err)
	}
	if after := getVM(t, ns, "p"); after.ResourceVersion != vmBefore.ResourceVersion {
		t.Errorf("pause/unpause changed the VM")
	}

	// A stopped VM, and a VMI that is not running yet.
	create(t, testVM(ns, "off", v1.RunStrategyHalted))
	if _, err := podvirtctl(t, ns, "pause", "vm", "off"); err == nil || !strings.Contains(err.Error(), "vm off is Stopped: start it with `podvirtctl start off`") {
		t.Errorf("pause of a stopped VM: %v", err)
	}
	if _, err := podvirtctl(t, ns, "pause", "vmi", "off"); err == nil || !strings.Contains(err.Error(), "vm off is Stopped") {
		t.Errorf("pause of a stopped VM's VMI: %v", err)
	}
	booting := testVM(ns, "booting", v1.RunStrategyAlways)
	create(t, booting)
	ownVMI(t, booting, v1.Scheduled)
	if _, err := podvirtctl(t, ns, "pause", "vm", "booting"); err == nil || !strings.Contains(err.Error(), "not running yet (Scheduled)") {
		t.Errorf("pause of a scheduled VMI: %v", err)
	}
	done := testVM(ns, "done", v1.RunStrategyManual)
	create(t, done)
	ownVMI(t, done, v1.Succeeded)
	if _, err := podvirtctl(t, ns, "unpause", "vmi", "done"); err == nil || !strings.Contains(err.Error(), "has ended (Succeeded)") {
		t.Errorf("unpause of a finished VMI: %v", err)
	}
	if _, err := podvirtctl(t, ns, "pause", "vmx", "p"); err == nil || !strings.Contains(err.Error(), "needs a kind (vm or vmi)") {
		t.Errorf("pause with a bad kind: %v", err)
	}
}
