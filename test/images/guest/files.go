package guest

import "strings"

// initramfsInit is /init of the initramfs: load the virtio modules (they
// are modular in every Debian kernel), find the root named by root= on the
// kernel command line and switch to it.
const initramfsInit = `#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev /newroot /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
for m in virtio_ring virtio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci virtio_blk failover net_failover virtio_net; do
	[ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
root=
for a in $(cat /proc/cmdline); do
	case "$a" in root=*) root=${a#root=} ;; esac
done
i=0
while :; do
	dev=$root
	case "$root" in LABEL=*|UUID=*) dev=$(findfs "$root" 2>/dev/null) ;; esac
	[ -n "$dev" ] && [ -b "$dev" ] && break
	i=$((i+1))
	if [ $i -gt 1500 ]; then echo "podvirt-initramfs: root $root not found"; exec sh; fi
	usleep 20000
done
mount -t ext4 -o rw "$dev" /newroot || { echo "podvirt-initramfs: mounting $dev failed"; exec sh; }
umount /proc /sys
mount --move /dev /newroot/dev
exec switch_root /newroot /sbin/init
`

// rootFile is one file written into the root filesystem.
type rootFile struct {
	path string
	mode uint32
	data string
}

// rootFiles are the root filesystem's own files (busybox and its applet
// links are added separately).
func rootFiles() []rootFile {
	return []rootFile{
		{"etc/inittab", 0o644, `::sysinit:/etc/init.d/rcS
ttyS0::respawn:-/bin/sh
::ctrlaltdel:/sbin/poweroff
::shutdown:/bin/umount -a -r
`},
		{"etc/init.d/rcS", 0o755, `#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
grep -q ' /dev ' /proc/mounts || mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /run /tmp
mount -t devpts devpts /dev/pts
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
hostname podvirt-guest
for m in ` + strings.Join(rootModules, " ") + `; do
	[ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko 2>/dev/null
done
echo "` + BootMarker + ` uptime=$(cut -d' ' -f1 /proc/uptime)"
acpid -c /etc/acpi -l /dev/null
ip link set lo up
/etc/cloud-init.sh
# ssh: root logs in with the keys cloud-init gave it, never a password;
# host keys are made at the first connection.
mkdir -p /etc/dropbear
dropbear -R -s -p 22
# QEMU's guest agent, on the virtio-serial port the host named for it.
for p in /sys/class/virtio-ports/*; do
	[ "$(cat "$p/name" 2>/dev/null)" = org.qemu.guest_agent.0 ] && qemu-ga -d -m virtio-serial -p "/dev/${p##*/}"
done
for d in /sys/class/net/*; do
	n=${d##*/}
	[ "$n" = lo ] && continue
	ip link set "$n" up
	udhcpc -f -S -i "$n" -s /etc/udhcpc.script -T 1 -t 100000 -x hostname:"$(hostname)" >/dev/null 2>&1 &
done
`},
		{"etc/udhcpc.script", 0o755, `#!/bin/sh
case "$1" in
deconfig)
	ip -4 addr flush dev "$interface"
	ip link set "$interface" up
	;;
bound|renew)
	ip -4 addr flush dev "$interface"
	ifconfig "$interface" "$ip" netmask "${subnet:-255.255.255.0}" up
	if [ -n "$staticroutes" ]; then
		set -- $staticroutes
		while [ $# -ge 2 ]; do ip route add "$1" via "$2" dev "$interface" 2>/dev/null; shift 2; done
	fi
	for r in $router; do ip route add default via "$r" dev "$interface" 2>/dev/null; break; done
	if [ -n "$dns" ]; then
		: > /etc/resolv.conf
		[ -n "$domain" ] && echo "search $domain" >> /etc/resolv.conf
		for s in $dns; do echo "nameserver $s" >> /etc/resolv.conf; done
	fi
	echo "` + IPMarker + ` $interface $(ip -4 -o addr show dev "$interface" | awk '{print $4}')" > /dev/console
	;;
esac
`},
		{"etc/cloud-init.sh", 0o755, `#!/bin/sh
# NoCloud: a filesystem labelled cidata (ISO 9660 or FAT) holding meta-data
# and user-data. Applies the hostname (cloud-config hostname:, else
# meta-data local-hostname), runs user-data that is a script, or adds the
# ssh_authorized_keys of a #cloud-config to root's and runs its runcmd
# list, then prints the marker.
mkdir -p /run/cidata
dev=$(findfs LABEL=cidata 2>/dev/null) || dev=$(findfs LABEL=CIDATA 2>/dev/null) || dev=
found=
for d in $dev /dev/vd? /dev/sd?; do
	[ -b "$d" ] || continue
	for fs in iso9660 vfat; do
		if mount -t $fs -o ro "$d" /run/cidata 2>/dev/null; then
			[ -f /run/cidata/meta-data ] && { found=$d; break 2; }
			umount /run/cidata
		fi
	done
done
[ -n "$found" ] || exit 0
ud=/run/cidata/user-data
h=$(sed -n 's/^local-hostname:[ ]*//p' /run/cidata/meta-data 2>/dev/null | head -n 1 | tr -d "\"' ")
if head -n 1 $ud 2>/dev/null | grep -q '^#cloud-config'; then
	c=$(sed -n 's/^hostname:[ ]*//p' $ud | head -n 1 | tr -d "\"' ")
	[ -n "$c" ] && h=$c
fi
[ -n "$h" ] && hostname "$h"
if head -n 1 $ud 2>/dev/null | grep -q '^#!'; then
	cp $ud /run/user-data
	chmod +x /run/user-data
	/run/user-data
elif head -n 1 $ud 2>/dev/null | grep -q '^#cloud-config'; then
	mkdir -p /root/.ssh
	chmod 700 /root/.ssh
	awk -f /etc/cloud-config-keys.awk $ud >> /root/.ssh/authorized_keys
	awk -f /etc/cloud-config-runcmd.awk $ud > /run/runcmd.sh
	sh /run/runcmd.sh
fi
echo "` + CloudInitMarker + ` hostname=$(hostname)"
`},
		{"etc/cloud-config-keys.awk", 0o644, `# Prints the ssh_authorized_keys of a #cloud-config, one key a line: a
# block list ("- ssh-ed25519 AAAA... comment") or a flow list ("[k1, k2]").
/^ssh_authorized_keys:[ \t]*\[/ {
	sub(/^ssh_authorized_keys:[ \t]*\[/, "")
	sub(/\][ \t]*$/, "")
	n = split($0, k, ",")
	for (i = 1; i <= n; i++) {
		gsub(/^[ \t"']+|[ \t"']+$/, "", k[i])
		if (k[i] != "") print k[i]
	}
	next
}
/^ssh_authorized_keys:[ \t]*$/ { r = 1; next }
r && /^[^ \t#-]/ { r = 0 }
r && /^[ \t]*-[ \t]+/ {
	sub(/^[ \t]*-[ \t]+/, "")
	gsub(/^["']|["'][ \t]*$/, "")
	print
}
`},
		{"etc/cloud-config-runcmd.awk", 0o644, `# Prints the runcmd list of a #cloud-config, one shell command a line.
# An item is a string ("- echo hi", quoted or not), run by sh, or a flow
# list ("- [echo, hi]"), whose words are passed as they are (each is
# single-quoted for sh). A word may not hold a comma.
/^runcmd:[ \t]*$/ { r = 1; next }
r && /^[^ \t#-]/ { r = 0 }
r && /^[ \t]*-[ \t]+/ {
	sub(/^[ \t]*-[ \t]+/, "")
	sub(/[ \t]+$/, "")
	if ($0 ~ /^\[.*\]$/) {
		n = split(substr($0, 2, length($0) - 2), w, ",")
		line = ""
		for (i = 1; i <= n; i++) {
			gsub(/^[ \t]+|[ \t]+$/, "", w[i])
			gsub(/^["']|["']$/, "", w[i])
			gsub(/'/, "'\"'\"'", w[i])
			line = line (i > 1 ? " " : "") "'" w[i] "'"
		}
		print line
	} else if ($0 ~ /^".*"$/ || $0 ~ /^'.*'$/) {
		print substr($0, 2, length($0) - 2)
	} else {
		print
	}
}
`},
		{"etc/acpi/PWRF/00000080", 0o755, `#!/bin/sh
echo "` + ShutdownMarker + `" > /dev/console
poweroff
`},
		{"etc/profile", 0o644, "export PS1='podvirt# '\nexport HOME=/root\n"},
		{"etc/passwd", 0o644, "root:x:0:0:root:/root:/bin/sh\n"},
		{"etc/group", 0o644, "root:x:0:\n"},
		{"etc/shells", 0o644, "/bin/sh\n"},
		{"etc/hostname", 0o644, "podvirt-guest\n"},
		{"etc/resolv.conf", 0o644, ""},
	}
}

// syslinuxCfg boots the kernel on the boot partition straight away.
const syslinuxCfg = `DEFAULT linux
PROMPT 0
TIMEOUT 0
LABEL linux
  KERNEL /vmlinuz
  INITRD /initrd.gz
  APPEND ` + Cmdline + `
`

// Kernel modules: in the initramfs (to reach the root disk and the NICs)
// and in the root filesystem (power button, cloud-init disk formats, the
// balloon that reports memory, the guest agent's virtio-serial), loaded in this order: isofs needs cdrom's
// symbols.
var (
	initrdModules = []string{"virtio_ring", "virtio", "virtio_pci_modern_dev", "virtio_pci_legacy_dev", "virtio_pci", "virtio_blk", "failover", "net_failover", "virtio_net"}
	rootModules   = []string{"evdev", "button", "fat", "vfat", "cdrom", "isofs", "nls_cp437", "nls_ascii", "nls_utf8", "nls_iso8859-1", "virtio_balloon", "virtio_console"}
)
