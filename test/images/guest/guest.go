// Package guest builds podvirt's test guest from Debian packages, with no
// internet: the Debian cloud kernel, a busybox initramfs that loads the
// virtio modules and switches to an ext4 root, and a bootable disk (MBR,
// syslinux on a FAT boot partition, the ext4 root as partition 2) that
// firmware boots like a real cloud image. The kernel and initrd are also
// kept apart for direct kernel boot.
//
// The guest prints BootMarker on its serial console, gets its address by
// DHCP (busybox udhcpc) and prints it (IPMarker), serves a root shell on
// the serial console, reads cloud-init NoCloud data (a disk labelled
// "cidata", ISO 9660 or FAT: it sets the hostname, runs user-data that is
// a script or a #cloud-config's runcmd, then prints CloudInitMarker) and
// powers off on an ACPI power-button event.
//
// A build is cached under $PODVIRT_CACHE (default ~/.cache/podvirt) in
// guest-<hash of the inputs>/, so only the first call is slow (~5 s plus
// the kernel package download).
//
// The guest also runs an ssh server (dropbear; root logs in with the keys
// cloud-init gave it) and QEMU's guest agent on its virtio-serial channel.
package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
)

// Markers the guest prints on its serial console.
const (
	// BootMarker is printed once the root filesystem runs its init.
	BootMarker = "PODVIRT-GUEST-BOOTED"
	// IPMarker precedes "<ifname> <ip>/<prefix>" once DHCP has bound.
	IPMarker = "PODVIRT-GUEST-IP"
	// CloudInitMarker precedes "hostname=<name>" once NoCloud data is read.
	CloudInitMarker = "PODVIRT-GUEST-CLOUDINIT"
	// ShutdownMarker is printed when the guest starts powering off.
	ShutdownMarker = "PODVIRT-GUEST-POWEROFF"
)

// recipeVersion changes whenever the build steps change in a way the
// hashed inputs do not show.
const recipeVersion = "6"

// kernelMeta is the Debian metapackage that names the current cloud kernel.
const kernelMeta = "linux-image-cloud-amd64"

// Artifacts are the files of a built guest. They are shared by every user
// of the cache: treat them as read-only and boot from an overlay of Disk.
type Artifacts struct {
	Dir     string // the cache directory holding everything below
	Disk    string // bootable qcow2 (MBR + syslinux + ext4 root on partition 2)
	Kernel  string // vmlinuz, for direct kernel boot
	Initrd  string // gzip'd newc initramfs, for direct kernel boot
	Cmdline string // kernel command line for direct kernel boot
}

// Cmdline is the kernel command line the bootloader uses; direct kernel
// boot should pass the same.
const Cmdline = "console=ttyS0 root=LABEL=podvirt-root quiet panic=-1"

var (
	buildMu sync.Mutex // one build at a time in this process
)

// CacheDir is $PODVIRT_CACHE, or ~/.cache/podvirt.
func CacheDir() string {
	if d := os.Getenv("PODVIRT_CACHE"); d != "" {
		return d
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = os.TempDir()
	}
	return filepath.Join(home, ".cache", "podvirt")
}

// ErrMissingTool is wrapped by errors about a host tool or package the
// build needs; the message names `make deps`.
var ErrMissingTool = errors.New("missing build tool")

// tools the build runs, and the Debian package each comes from.
var tools = map[string]string{
	"apt-get":   "apt",
	"apt-cache": "apt",
	"dpkg-deb":  "dpkg",
	"busybox":   "busybox-static",
	"mke2fs":    "e2fsprogs",
	"mkfs.fat":  "dosfstools",
	"mcopy":     "mtools",
	"syslinux":  "syslinux",
	"qemu-img":  "qemu-utils",
}

// Files from Debian packages that go into the image.
const (
	mbrBin     = "/usr/lib/syslinux/mbr/mbr.bin" // syslinux-common
	busyboxBin = "/bin/busybox"                  // busybox-static
)

// CheckTools reports the first tool or file the build needs that is missing.
func CheckTools() error {
	for tool, pkg := range tools {
		if _, err := exec.LookPath(tool); err != nil {
			return fmt.Errorf("%w: %s (Debian package %s) not found: run `make deps`", ErrMissingTool, tool, pkg)
		}
	}
	for _, f := range append([]struct{ path, pkg string }{{mbrBin, "syslinux-common"}, {busyboxBin, "busybox-static"}}, hostPrograms...) {
		if _, err := os.Stat(f.path); err != nil {
			return fmt.Errorf("%w: %s (Debian package %s) not found: run `make deps`", ErrMissingTool, f.path, f.pkg)
		}
	}
	out, err := exec.Command(busyboxBin, "--list").Output()
	if err != nil || !strings.Contains(string(out), "\nudhcpc\n") {
		return fmt.Errorf("%w: %s is not a full busybox (need busybox-static): run `make deps`", ErrMissingTool, busyboxBin)
	}
	return nil
}

// Build returns the test guest, building it into the cache when missing.
func Build(ctx context.Context) (Artifacts, error) {
	if err := CheckTools(); err != nil {
		return Artifacts{}, err
	}
	kpkg, kver, err := kernelPackage(ctx)
	if err != nil {
		return Artifacts{}, err
	}
	key, err := inputsHash(kpkg, kver)
	if err != nil {
		return Artifacts{}, err
	}
	dir := filepath.Join(CacheDir(), "guest-"+key)
	art := Artifacts{
		Dir:     dir,
		Disk:    filepath.Join(dir, "disk.qcow2"),
		Kernel:  filepath.Join(dir, "vmlinuz"),
		Initrd:  filepath.Join(dir, "initrd.gz"),
		Cmdline: Cmdline,
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	if _, err := os.Stat(filepath.Join(dir, "complete")); err == nil {
		return art, nil
	}
	if err := os.MkdirAll(CacheDir(), 0o755); err != nil {
		return Artifacts{}, err
	}
	tmp, err := os.MkdirTemp(CacheDir(), ".guest-build-")
	if err != nil {
		return Artifacts{}, err
	}
	defer os.RemoveAll(tmp)
	if err := build(ctx, tmp, kpkg); err != nil {
		return Artifacts{}, fmt.Errorf("build test guest (kernel %s %s): %w", kpkg, kver, err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "out", "complete"), []byte(kpkg+" "+kver+"\n"), 0o644); err != nil {
		return Artifacts{}, err
	}
	_ = os.RemoveAll(dir) // a partial directory from a crashed build
	if err := os.Rename(filepath.Join(tmp, "out"), dir); err != nil {
		return Artifacts{}, err
	}
	return art, nil
}

// kernelPackage resolves the cloud kernel metapackage to the versioned
// kernel package and its candidate version, from the local apt lists.
func kernelPackage(ctx context.Context) (name, version string, err error) {
	out, err := exec.CommandContext(ctx, "apt-cache", "depends", kernelMeta).Output()
	if err != nil {
		return "", "", fmt.Errorf("%w: apt-cache depends %s: %w (run `apt-get update` / `make deps`)", ErrMissingTool, kernelMeta, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			name = f[1]
			break
		}
	}
	if name == "" {
		return "", "", fmt.Errorf("%w: %s names no kernel package in the apt lists (run `apt-get update` / `make deps`)", ErrMissingTool, kernelMeta)
	}
	out, err = exec.CommandContext(ctx, "apt-cache", "show", "--no-all-versions", name).Output()
	if err != nil {
		return "", "", fmt.Errorf("apt-cache show %s: %w", name, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Version: "); ok {
			return name, strings.TrimSpace(v), nil
		}
	}
	return "", "", fmt.Errorf("apt-cache show %s: no Version", name)
}

// inputsHash names a build by everything that goes into it.
func inputsHash(kpkg, kver string) (string, error) {
	h := sha256.New()
	fmt.Fprintf(h, "recipe %s\nkernel %s %s\n", recipeVersion, kpkg, kver)
	programs, err := hostProgramFiles()
	if err != nil {
		return "", err
	}
	for _, f := range append([]string{busyboxBin, mbrBin}, programs...) {
		b, err := os.ReadFile(f)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s %x\n", f, sha256.Sum256(b))
	}
	for _, f := range rootFiles() {
		fmt.Fprintf(h, "%s %o %s\n", f.path, f.mode, f.data)
	}
	fmt.Fprintf(h, "initramfs %s\ncmdline %s\n", initramfsInit, Cmdline)
	return hex.EncodeToString(h.Sum(nil))[:16], nil
}

func run(ctx context.Context, dir string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
