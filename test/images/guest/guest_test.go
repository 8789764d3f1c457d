package guest

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func buildOrFail(t *testing.T) Artifacts {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	art, err := Build(ctx)
	if err != nil {
		t.Fatalf("building the test guest: %v", err)
	}
	return art
}

func qemuOrFail(t *testing.T) string {
	t.Helper()
	for _, tool := range []string{"qemu-system-x86_64", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s not found (Debian qemu-system-x86, qemu-utils): run `make deps`", tool)
		}
	}
	p, _ := exec.LookPath("qemu-system-x86_64")
	return p
}

// overlay makes a qcow2 overlay of the guest disk in dir.
func overlay(t *testing.T, art Artifacts, dir string) string {
	t.Helper()
	p := filepath.Join(dir, "vm.qcow2")
	out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", art.Disk, "-F", "qcow2", p).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-img create overlay: %v: %s", err, out)
	}
	return p
}

// bootQEMU boots the guest under bare QEMU (TCG) with its serial console
// in a file and its monitor on a unix socket; QEMU is killed at cleanup.
func bootQEMU(t *testing.T, extra ...string) (console, monitor string, exited <-chan error) {
	qemu := qemuOrFail(t)
	art := buildOrFail(t)
	dir := t.TempDir()
	console = filepath.Join(dir, "console.log")
	monitor = filepath.Join(dir, "monitor.sock")
	args := []string{
		"-machine", "q35,accel=tcg", "-cpu", "qemu64", "-m", "256", "-smp", "1",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-serial", "file:" + console,
		"-monitor", "unix:" + monitor + ",server=on,wait=off",
		"-drive", "file=" + overlay(t, art, dir) + ",format=qcow2,if=virtio",
	}
	args = append(args, extra...)
	for i, a := range args {
		args[i] = strings.ReplaceAll(a, "@KERNEL@", art.Kernel)
		args[i] = strings.ReplaceAll(args[i], "@INITRD@", art.Initrd)
	}
	cmd := exec.Command(qemu, args...)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("starting qemu: %v", err)
	}
	done := make(chan error, 1)
	waited := make(chan struct{})
	go func() {
		err := cmd.Wait()
		if err != nil {
			err = fmt.Errorf("%w: %s", err, stderr.String())
		}
		done <- err
		close(waited)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-waited
	})
	return console, monitor, done
}

func TestBootFirmwareBareQEMU(t *testing.T) {
	console, monitor, exited := bootQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	start := time.Now()
	if _, err := WaitForOutput(ctx, console, 0, BootMarker); err != nil {
		t.Fatal(err)
	}
	t.Logf("boot marker after %s", time.Since(start).Round(time.Millisecond))

	// ACPI power button: the guest powers off and QEMU exits.
	c, err := net.Dial("unix", monitor)
	if err != nil {
		t.Fatalf("monitor: %v", err)
	}
	defer c.Close()
	// acpid may need a moment after the marker: press until QEMU exits.
	deadline := time.After(90 * time.Second)
	press := time.NewTicker(2 * time.Second)
	defer press.Stop()
	for {
		if _, err := io.WriteString(c, "system_powerdown\n"); err != nil && !errors.Is(err, net.ErrClosed) {
			t.Logf("monitor write: %v", err)
		}
		select {
		case err := <-exited:
			if err != nil {
				t.Fatalf("qemu exited with %v", err)
			}
			b, _ := os.ReadFile(console)
			if !strings.Contains(string(b), ShutdownMarker) {
				t.Fatalf("QEMU exited without the guest's %s; console:\n%s", ShutdownMarker, Tail(b, 1500))
			}
			return
		case <-deadline:
			b, _ := os.ReadFile(console)
			t.Fatalf("guest did not power off on ACPI power button; console:\n%s", Tail(b, 1500))
		case <-press.C:
		}
	}
}

func TestBootDirectKernelBareQEMU(t *testing.T) {
	console, _, _ := bootQEMU(t, "-kernel", "@KERNEL@", "-initrd", "@INITRD@", "-append", Cmdline)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if _, err := WaitForOutput(ctx, console, 0, BootMarker); err != nil {
		t.Fatal(err)
	}
}

func TestBuildIsCached(t *testing.T) {
	a := buildOrFail(t)
	start := time.Now()
	b := buildOrFail(t)
	if a != b {
		t.Fatalf("second build gave %+v, first %+v", b, a)
	}
	if d := time.Since(start); d > time.Minute {
		t.Fatalf("cached build took %s", d)
	}
	for _, f := range []string{a.Disk, a.Kernel, a.Initrd} {
		if st, err := os.Stat(f); err != nil || st.Size() == 0 {
			t.Fatalf("artifact %s: %v", f, err)
		}
	}
}

func TestContainerDisk(t *testing.T) {
	art := buildOrFail(t)
	path := filepath.Join(t.TempDir(), "guest.tar")
	if err := WriteContainerDisk(art, "podvirt.local/test-guest:1", path); err != nil {
		t.Fatal(err)
	}
	// The layer inside the OCI layout must hold disk/disk.qcow2.
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	var blobs int
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(h.Name, "blobs/") && h.Typeflag == tar.TypeReg {
			blobs++
		}
	}
	if blobs < 3 {
		t.Fatalf("OCI tar has %d blobs, want manifest, config and layer", blobs)
	}
	if !layerHasDisk(t, path) {
		t.Fatalf("no %s in the image layer", ContainerDiskPath)
	}
}
