package guest

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Disk layout: 1 MiB for the MBR and the gap, a FAT16 boot partition with
// syslinux, the kernel and the initrd, then the ext4 root.
const (
	sector       = 512
	bootStart    = 2048           // sectors
	bootSizeKiB  = 40 * 1024      // FAT16 boot partition
	rootSizeMiB  = 64             // ext4 root partition
	rootFSLabel  = "podvirt-root" // found by root=LABEL=... in the initramfs
	bootFSLabel  = "PVBOOT"       // FAT label of the boot partition
	mbrPartTable = 446            // offset of the partition table in the MBR
	partFAT16LBA = 0x0e           // partition type: FAT16 (LBA)
	partLinux    = 0x83           // partition type: Linux
	diskRawName  = "disk.raw"     // scratch, not kept
	kernelDeb    = "kernel.deb"   // scratch, not kept
	initrdName   = "initrd.gz"    // kept
	kernelName   = "vmlinuz"      // kept
	diskName     = "disk.qcow2"   // kept
)

// build makes the guest in work/out from kernel package kpkg.
func build(ctx context.Context, work, kpkg string) error {
	out := filepath.Join(work, "out")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}

	// The kernel, straight from its Debian package.
	if err := run(ctx, work, "apt-get", "download", "-q", kpkg); err != nil {
		return fmt.Errorf("%w: downloading %s (run `apt-get update` / `make deps`): %w", ErrMissingTool, kpkg, err)
	}
	debs, _ := filepath.Glob(filepath.Join(work, kpkg+"_*.deb"))
	if len(debs) != 1 {
		return fmt.Errorf("apt-get download %s left %d .deb files", kpkg, len(debs))
	}
	kdir := filepath.Join(work, "kernel")
	if err := run(ctx, work, "dpkg-deb", "-x", debs[0], kdir); err != nil {
		return err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(kdir, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return fmt.Errorf("%s has %d vmlinuz files", kpkg, len(vmlinuz))
	}
	if err := copyFile(vmlinuz[0], filepath.Join(out, kernelName), 0o644); err != nil {
		return err
	}
	modDirs, _ := filepath.Glob(filepath.Join(kdir, "lib", "modules", "*", "kernel"))
	if len(modDirs) != 1 {
		return fmt.Errorf("%s has %d module trees", kpkg, len(modDirs))
	}
	modules, err := findModules(modDirs[0])
	if err != nil {
		return err
	}

	// initramfs: busybox, /init and the virtio modules.
	if err := writeInitrd(filepath.Join(out, initrdName), modules); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}

	// Root filesystem.
	root := filepath.Join(work, "root")
	if err := populateRoot(ctx, root, modules); err != nil {
		return fmt.Errorf("root filesystem: %w", err)
	}
	rootImg := filepath.Join(work, "root.img")
	if err := run(ctx, work, "mke2fs", "-q", "-F", "-t", "ext4", "-L", rootFSLabel, "-d", root, rootImg, fmt.Sprintf("%dM", rootSizeMiB)); err != nil {
		return err
	}

	// Boot partition: FAT16 with syslinux, kernel, initrd.
	bootImg := filepath.Join(work, "boot.img")
	if err := run(ctx, work, "mkfs.fat", "-C", "-F", "16", "-n", bootFSLabel, "-h", fmt.Sprint(bootStart), bootImg, fmt.Sprint(bootSizeKiB)); err != nil {
		return err
	}
	cfg := filepath.Join(work, "syslinux.cfg")
	if err := os.WriteFile(cfg, []byte(syslinuxCfg), 0o644); err != nil {
		return err
	}
	if err := run(ctx, work, "mcopy", "-i", bootImg, filepath.Join(out, kernelName), filepath.Join(out, initrdName), cfg, "::/"); err != nil {
		return err
	}
	if err := run(ctx, work, "syslinux", "--install", bootImg); err != nil {
		return err
	}

	// The whole disk, then qcow2.
	raw := filepath.Join(work, diskRawName)
	if err := assembleDisk(raw, bootImg, rootImg); err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	return run(ctx, work, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, filepath.Join(out, diskName))
}

// findModules maps module name to its .ko under the kernel's module tree,
// for the modules the guest loads.
func findModules(tree string) (map[string]string, error) {
	want := map[string]bool{}
	for _, m := range append(append([]string{}, initrdModules...), rootModules...) {
		want[m] = true
	}
	found := map[string]string{}
	err := filepath.WalkDir(tree, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name, ok := strings.CutSuffix(d.Name(), ".ko")
		if ok && want[name] {
			found[name] = p
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	// A module may be built in; only the disk and NIC drivers must be
	// there somewhere.
	for _, m := range []string{"virtio_blk", "virtio_net", "virtio_pci"} {
		if found[m] == "" {
			return nil, fmt.Errorf("kernel has no module %s", m)
		}
	}
	return found, nil
}

func writeInitrd(path string, modules map[string]string) error {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	cw := newCpio(zw)
	for _, d := range []string{"bin", "dev", "lib", "lib/modules", "proc", "sys", "newroot"} {
		cw.dir(d, 0o755)
	}
	cw.node("dev/console", 0o020600, 5, 1)
	bb, err := os.ReadFile(busyboxBin)
	if err != nil {
		return err
	}
	cw.file("bin/busybox", 0o755, bb)
	cw.symlink("bin/sh", "busybox")
	cw.file("init", 0o755, []byte(initramfsInit))
	for _, m := range initrdModules {
		if p := modules[m]; p != "" {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			cw.file("lib/modules/"+m+".ko", 0o644, b)
		}
	}
	if err := cw.close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	return os.WriteFile(path, buf.Bytes(), 0o644)
}

func populateRoot(ctx context.Context, root string, modules map[string]string) error {
	for _, d := range []string{"bin", "sbin", "usr/bin", "usr/sbin", "dev", "proc", "sys", "run", "tmp", "root", "lib/modules", "var/run", "etc/init.d", "etc/acpi/PWRF"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(busyboxBin, filepath.Join(root, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	list, err := exec.CommandContext(ctx, busyboxBin, "--list-full").Output()
	if err != nil {
		return fmt.Errorf("busybox --list-full: %w", err)
	}
	for _, applet := range strings.Fields(string(list)) {
		dst := filepath.Join(root, applet)
		if applet == "bin/busybox" {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := os.Symlink("/bin/busybox", dst); err != nil && !os.IsExist(err) {
			return err
		}
	}
	for _, f := range rootFiles() {
		p := filepath.Join(root, f.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, []byte(f.data), os.FileMode(f.mode)); err != nil {
			return err
		}
		if err := os.Chmod(p, os.FileMode(f.mode)); err != nil {
			return err
		}
	}
	for _, m := range rootModules {
		if p := modules[m]; p != "" {
			if err := copyFile(p, filepath.Join(root, "lib", "modules", m+".ko"), 0o644); err != nil {
				return err
			}
		}
	}
	programs, err := hostProgramFiles()
	if err != nil {
		return err
	}
	return copyHostPrograms(root, programs)
}

// assembleDisk writes a raw disk: syslinux's MBR code, a partition table
// with the boot partition (active) and the root, and both images.
func assembleDisk(path, bootImg, rootImg string) error {
	mbr, err := os.ReadFile(mbrBin)
	if err != nil {
		return err
	}
	if len(mbr) > mbrPartTable {
		return fmt.Errorf("%s is %d bytes, more than the MBR boot code area", mbrBin, len(mbr))
	}
	bootSectors, err := sectors(bootImg)
	if err != nil {
		return err
	}
	rootSectors, err := sectors(rootImg)
	if err != nil {
		return err
	}
	rootStart := bootStart + bootSectors
	head := make([]byte, bootStart*sector)
	copy(head, mbr)
	putPart(head[mbrPartTable:], true, partFAT16LBA, bootStart, bootSectors)
	putPart(head[mbrPartTable+16:], false, partLinux, rootStart, rootSectors)
	head[510], head[511] = 0x55, 0xaa

	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write(head); err != nil {
		return err
	}
	for _, img := range []string{bootImg, rootImg} {
		src, err := os.Open(img)
		if err != nil {
			return err
		}
		_, err = io.Copy(f, src)
		src.Close()
		if err != nil {
			return err
		}
	}
	return f.Close()
}

func sectors(path string) (uint32, error) {
	st, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	if st.Size()%sector != 0 {
		return 0, fmt.Errorf("%s is not a whole number of sectors", path)
	}
	return uint32(st.Size() / sector), nil
}

// putPart writes one MBR partition entry addressed by LBA (the CHS fields
// say "use LBA").
func putPart(e []byte, active bool, typ byte, start, count uint32) {
	if active {
		e[0] = 0x80
	}
	copy(e[1:4], []byte{0xfe, 0xff, 0xff})
	e[4] = typ
	copy(e[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(e[8:], start)
	binary.LittleEndian.PutUint32(e[12:], count)
}

func copyFile(src, dst string, mode os.FileMode) error {
	b, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	if err := os.WriteFile(dst, b, mode); err != nil {
		return err
	}
	return os.Chmod(dst, mode)
}
