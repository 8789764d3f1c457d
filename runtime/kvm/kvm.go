// Package kvm tells whether this host can run hardware-accelerated guests.
// /dev/kvm existing is not enough, and neither is creating a VM: a node
// may expose the device without VMX/SVM (a software KVM such as PVM, as on
// our development machines), and then opening it, KVM_CREATE_VM and even
// running a few instructions work while QEMU hangs booting a normal guest.
// Probe therefore wants the CPU's hardware virtualization flag as well as
// a throwaway VM that really runs guest code.
package kvm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// DevicePath is the KVM device node.
const DevicePath = "/dev/kvm"

// The KVM API (linux/kvm.h). KVMIO is 0xAE.
const (
	kvmGetAPIVersion       = 0xAE00 // _IO(KVMIO, 0x00)
	kvmCreateVM            = 0xAE01 // _IO(KVMIO, 0x01)
	kvmGetVCPUMmapSize     = 0xAE04 // _IO(KVMIO, 0x04)
	kvmCreateVCPU          = 0xAE41 // _IO(KVMIO, 0x41)
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmRun                 = 0xAE80 // _IO(KVMIO, 0x80)

	kvmAPIVersion = 12 // the only stable KVM API version there has been
	kvmExitHLT    = 5
	// kvmRunExitReasonOffset is where struct kvm_run keeps exit_reason.
	kvmRunExitReasonOffset = 8
)

// kvmUserspaceMemoryRegion is struct kvm_userspace_memory_region.
type kvmUserspaceMemoryRegion struct {
	slot          uint32
	flags         uint32
	guestPhysAddr uint64
	memorySize    uint64
	userspaceAddr uint64
}

// A vCPU starts at the reset vector: CS base 0xffff0000, IP 0xfff0, i.e.
// physical 0xfffffff0, in real mode. The probe maps the page holding it
// and puts HLT there.
const (
	resetPage   = 0xfffff000
	resetOffset = 0xff0
	hlt         = 0xf4
)

// CPUInfo is where Probe reads the CPU flags.
const CPUInfo = "/proc/cpuinfo"

// Probe opens the KVM device at path, checks that the CPU has VMX or SVM,
// then creates a VM with one vCPU, runs a HLT at the x86 reset vector and
// expects the vCPU to exit on it. A nil error means libvirt can start a
// kvm domain here; otherwise the error says which step failed and why.
func Probe(path string) error {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("kvm probe on %s: "+format, append([]any{path}, a...)...)
	}
	kvm, err := unix.Open(path, unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fail("opening the device: %w", err)
	}
	defer unix.Close(kvm)

	v, err := unix.IoctlRetInt(kvm, kvmGetAPIVersion)
	if err != nil {
		return fail("not a KVM device (KVM_GET_API_VERSION: %w)", err)
	}
	if v != kvmAPIVersion {
		return fail("KVM API version %d, want %d", v, kvmAPIVersion)
	}
	if err := hardwareVirtualization(CPUInfo); err != nil {
		return fail("%w", err)
	}
	return runHLT(path, kvm)
}

// hardwareVirtualization checks that the CPU flags in cpuinfo include vmx
// (Intel VT-x) or svm (AMD-V); Linux clears them when firmware turns the
// feature off.
func hardwareVirtualization(cpuinfo string) error {
	f, err := os.Open(cpuinfo)
	if err != nil {
		return fmt.Errorf("reading CPU flags: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1024*1024)
	for sc.Scan() {
		key, value, ok := bytes.Cut(sc.Bytes(), []byte(":"))
		if !ok || string(bytes.TrimSpace(key)) != "flags" {
			continue
		}
		for _, flag := range bytes.Fields(value) {
			if string(flag) == "vmx" || string(flag) == "svm" {
				return nil
			}
		}
		return fmt.Errorf("the CPU has no vmx or svm flag in %s: no hardware virtualization (missing, off in firmware, or not passed to this VM); use domain type qemu (TCG)", cpuinfo)
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading CPU flags from %s: %w", cpuinfo, err)
	}
	return fmt.Errorf("no CPU flags in %s", cpuinfo)
}

// runHLT runs a one-instruction real-mode guest on the open KVM device
// kvm (path names it in errors).
func runHLT(path string, kvm int) error {
	fail := func(format string, a ...any) error {
		return fmt.Errorf("kvm probe on %s: "+format, append([]any{path}, a...)...)
	}
	vm, err := unix.IoctlRetInt(kvm, kvmCreateVM)
	if err != nil {
		return fail("KVM_CREATE_VM: %w (hardware virtualization missing or turned off?)", err)
	}
	defer unix.Close(vm)

	pageSize := unix.Getpagesize()
	mem, err := unix.Mmap(-1, 0, pageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fail("allocating guest memory: %w", err)
	}
	defer func() { _ = unix.Munmap(mem) }()
	mem[resetOffset] = hlt
	region := kvmUserspaceMemoryRegion{
		guestPhysAddr: resetPage,
		memorySize:    uint64(pageSize),
		userspaceAddr: uint64(uintptr(unsafe.Pointer(&mem[0]))), //nolint:gosec // KVM maps this host memory into the guest

	}
	//nolint:gosec // the ioctl reads struct kvm_userspace_memory_region
	if _, _, e := unix.Syscall(unix.SYS_IOCTL, uintptr(vm), kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region))); e != 0 {
		return fail("KVM_SET_USER_MEMORY_REGION: %w", e)
	}

	vcpu, err := unix.IoctlRetInt(vm, kvmCreateVCPU)
	if err != nil {
		return fail("KVM_CREATE_VCPU: %w", err)
	}
	defer unix.Close(vcpu)
	runSize, err := unix.IoctlRetInt(kvm, kvmGetVCPUMmapSize)
	if err != nil {
		return fail("KVM_GET_VCPU_MMAP_SIZE: %w", err)
	}
	run, err := unix.Mmap(vcpu, 0, runSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fail("mapping the vCPU's kvm_run: %w", err)
	}
	defer func() { _ = unix.Munmap(run) }()

	for {
		_, err = unix.IoctlRetInt(vcpu, kvmRun)
		if err != unix.EINTR { // the Go runtime's preemption signals
			break
		}
	}
	if err != nil {
		return fail("KVM_RUN of a real-mode guest: %w (the kernel's KVM cannot run normal guests: no usable VMX/SVM)", err)
	}
	if reason := binary.NativeEndian.Uint32(run[kvmRunExitReasonOffset:]); reason != kvmExitHLT {
		return fail("a real-mode guest exited with reason %d, want HLT (%d): the kernel's KVM cannot run normal guests", reason, kvmExitHLT)
	}
	return nil
}

// Usable reports whether Probe(DevicePath) succeeds.
func Usable() bool { return Probe(DevicePath) == nil }
