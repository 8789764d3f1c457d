package components

import "github.com/podvirt/podvirt/test/images/debian"

// The system users and groups the libvirt/QEMU packages' maintainer
// scripts would create: libvirt's QEMU driver refuses to start unless its
// default user and group (libvirt-qemu:libvirt-qemu) exist, although the
// launcher runs QEMU as root (its qemu.conf).
var (
	kvmGroup         = debian.Group{Name: "kvm", GID: 36}
	libvirtGroup     = debian.Group{Name: "libvirt", GID: 990}
	libvirtQEMUGroup = debian.Group{Name: "libvirt-qemu", GID: 64055}
	libvirtQEMUUser  = debian.User{Name: "libvirt-qemu", UID: 64055, GID: 64055, Home: "/var/lib/libvirt", Groups: []string{"kvm"}}
)

// launcherRoot is the launcher's Debian root: libvirtd and virtlogd (Debian
// 12's libvirt 9.0 has no modular daemons), the QEMU driver, QEMU for x86,
// qemu-img, OVMF (UEFI), passt (the pod network's user-mode backend), virsh
// for debugging, and a shell (the launcher starts libvirtd through
// /bin/sh). No libvirt-daemon-system: it brings polkit, iptables and
// systemd units the launcher does not use.
var launcherRoot = debian.Spec{
	Packages: []string{
		"libvirt-daemon", "libvirt-daemon-driver-qemu", "libvirt-clients",
		"qemu-system-x86", "qemu-utils", "ovmf", "passt",
		"dash", "coreutils", "base-files",
	},
	Groups: []debian.Group{kvmGroup, libvirtGroup, libvirtQEMUGroup},
	Users:  []debian.User{libvirtQEMUUser},
	Remove: []string{
		// OVMF: only the 4M firmware and its variable store template (what
		// runtime/converter points at), and the descriptor naming them.
		"usr/share/OVMF/*", "usr/share/ovmf", "usr/share/qemu/OVMF.fd",
		"usr/share/qemu/firmware/40-*", "usr/share/qemu/firmware/50-*",
		// firmware of the architectures qemu-system-data also serves
		"usr/share/qemu/hppa-firmware.img", "usr/share/qemu/openbios-*", "usr/share/qemu/opensbi-*",
		"usr/share/qemu/palcode-*", "usr/share/qemu/s390-*", "usr/share/qemu/skiboot.lid",
		"usr/share/qemu/slof.bin", "usr/share/qemu/vof.bin", "usr/share/qemu/QEMU,*",
		"usr/share/qemu/*.dtb", "usr/share/qemu/npcm7xx_bootrom.bin", "usr/share/qemu/u-boot*",
	},
	Keep: []string{"usr/share/OVMF/OVMF_CODE_4M.fd", "usr/share/OVMF/OVMF_VARS_4M.fd"},
}

// csiRoot is the CSI driver's Debian root: qemu-img (image checks and
// conversion), losetup and mount (block volumes), prlimit (qemu-img under
// resource limits), cp (copies), xz (.xz images) and CA certificates
// (registries over TLS).
var csiRoot = debian.Spec{
	Packages: []string{
		"qemu-utils", "util-linux", "mount", "xz-utils", "ca-certificates",
		"dash", "coreutils", "base-files",
	},
}
