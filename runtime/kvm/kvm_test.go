package kvm

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestProbeHost checks Probe on this host's /dev/kvm against what the
// host really has: success exactly when the device exists and the CPU
// flags say VMX or SVM.
func TestProbeHost(t *testing.T) {
	err := Probe(DevicePath)
	_, statErr := os.Stat(DevicePath)
	flagsErr := hardwareVirtualization(CPUInfo)
	switch {
	case statErr != nil:
		if !errors.Is(err, fs.ErrNotExist) {
			t.Fatalf("without %s: Probe = %v, want a not-exist error", DevicePath, err)
		}
	case flagsErr != nil:
		if err == nil || !strings.Contains(err.Error(), "no vmx or svm") {
			t.Fatalf("CPU without VMX/SVM: Probe = %v, want an error naming vmx/svm", err)
		}
	default:
		if err != nil {
			t.Fatalf("CPU with VMX/SVM and %s: Probe = %v", DevicePath, err)
		}
	}
	if got := Usable(); got != (err == nil) {
		t.Errorf("Usable() = %v, Probe error %v", got, err)
	}
}

// TestRunHLT runs the probe's one-instruction guest on this host's KVM,
// whatever the CPU flags say: the ioctl path must work wherever the
// kernel's KVM runs guest code.
func TestRunHLT(t *testing.T) {
	fd, err := unix.Open(DevicePath, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, unix.ENOENT) {
		t.Skipf("%s does not exist on this host: no KVM to run a guest on (hardware, not installable by make deps)", DevicePath)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := runHLT(DevicePath, fd); err != nil {
		t.Fatal(err)
	}
}

func TestProbeNotKVM(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "kvm")
	if err := Probe(missing); !errors.Is(err, fs.ErrNotExist) || !strings.Contains(err.Error(), missing) {
		t.Errorf("Probe(%s) = %v, want a not-exist error naming the path", missing, err)
	}
	if err := Probe("/dev/null"); err == nil || !strings.Contains(err.Error(), "not a KVM device") {
		t.Errorf("Probe(/dev/null) = %v, want 'not a KVM device'", err)
	}
	regular := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(regular, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := Probe(regular); err == nil || !strings.Contains(err.Error(), "not a KVM device") {
		t.Errorf("Probe(regular file) = %v, want 'not a KVM device'", err)
	}
}

func TestHardwareVirtualization(t *testing.T) {
	for _, tc := range []struct {
		name, cpuinfo string
		ok            bool
	}{
		{"intel", "processor\t: 0\nflags\t\t: fpu vme de vmx sse\n", true},
		{"amd", "processor\t: 0\nflags\t\t: fpu svm lm\n", true},
		{"none", "processor\t: 0\nflags\t\t: fpu vme de pse tsc msr pae lm\n", false},
		{"vmx only in another field", "model name\t: vmx svm\nflags\t\t: fpu\n", false},
		{"no flags line", "processor\t: 0\n", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "cpuinfo")
			if err := os.WriteFile(path, []byte(tc.cpuinfo), 0o600); err != nil {
				t.Fatal(err)
			}
			if err := hardwareVirtualization(path); (err == nil) != tc.ok {
				t.Errorf("hardwareVirtualization = %v, want ok=%v", err, tc.ok)
			}
		})
	}
}
