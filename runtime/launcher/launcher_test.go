package launcher

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/images/guest"
)

// startDaemon runs a private libvirtd for the test, stopped at cleanup.
func startDaemon(t testing.TB) *libvirtd.Daemon { return startDaemonIn(t, nil) }

// startDaemonIn runs a private libvirtd for the test, stopped at cleanup.
// With a pod netns it runs inside it, as in a launcher pod: QEMU then opens
// the pod's tap by name.
func startDaemonIn(t testing.TB, pod ns.NetNS) *libvirtd.Daemon {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: runs a private libvirtd in its own mount namespace")
	}
	if err := libvirtd.CheckInstalled(); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "podvirt-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var d *libvirtd.Daemon
	start := func(ns.NetNS) error {
		var err error
		d, err = libvirtd.Start(ctx, libvirtd.Config{Dir: dir, Private: true})
		return err
	}
	if pod != nil {
		// The daemon is forked from a thread inside the pod's netns.
		err = pod.Do(start)
	} else {
		err = start(nil)
	}
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping libvirtd: %v", err)
		}
		_ = os.RemoveAll(dir)
	})
	return d
}

// testVM is the test guest as a VMI booting through its own firmware
// from a qcow2 overlay, with a NoCloud disk.
type testVM struct {
	vmi     *v1.VirtualMachineInstance
	xml     string
	console string
}

func newTestVM(t testing.TB, name string) *testVM {
	t.Helper()
	dir, overlay := guestOverlay(t)
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "test", UID: types.UID(newUID(t))},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory:  v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}, {Name: "ci"}}},
			},
			Volumes: []v1.Volume{
				{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}},
				{Name: "ci", VolumeSource: v1.VolumeSource{CloudInitNoCloud: &v1.CloudInitNoCloudSource{UserData: userData(name)}}},
			},
		},
	}
	return renderTestVM(t, vmi, dir, overlay, converter.Options{})
}

// renderTestVM renders vmi with opts, its root disk on overlay and its
// NoCloud disk (the second volume) and console log under dir.
func renderTestVM(t testing.TB, vmi *v1.VirtualMachineInstance, dir, overlay string, opts converter.Options) *testVM {
	t.Helper()
	opts.DomainType = converter.DomainQEMU
	opts.Disks = map[string]converter.DiskSource{"root": {Path: overlay, Format: diskmeta.FormatQCOW2}}
	opts.CloudInitDisk = filepath.Join(dir, "cloud-init.iso")
	opts.ConsoleLog = filepath.Join(dir, "console.log")
	writeSeed(t, vmi, opts.CloudInitDisk)
	xml, err := converter.ConvertXML(vmi, opts)
	if err != nil {
		t.Fatal(err)
	}
	return &testVM{vmi: vmi, xml: xml, console: opts.ConsoleLog}
}

// userData is the test VMs' cloud-init user-data: a script printing
// userDataToken(name), computed in the guest so the token appears nowhere
// else.
func userData(name string) string {
	return "#!/bin/sh\necho \"user-data-$((6*7))-" + name + "\"\n"
}

func userDataToken(name string) string { return "user-data-42-" + name }

func newUID(t testing.TB) string {
	b, err := os.ReadFile("/proc/sys/kernel/random/uuid")
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

func startVM(t testing.TB, d *libvirtd.Daemon, vm *testVM) *Launcher {
	t.Helper()
	l, err := New(d.URI, converter.DomainName(vm.vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing launcher: %v", err)
		}
	})
	if err := l.Start(vm.xml); err != nil {
		t.Fatal(err)
	}
	return l
}

func waitConsole(t testing.TB, path string, from int64, marker string, timeout time.Duration) int64 {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	off, err := guest.WaitForOutput(ctx, path, from, marker)
	if err != nil {
		t.Fatal(err)
	}
	return off
}

// TestLifecycle boots the test guest through libvirt, types a command on the serial console, pauses and resumes it, and shuts
// it down gracefully.
func TestLifecycle(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "life")
	start := time.Now()
	l := startVM(t, d, vm)
	off := waitConsole(t, vm.console, 0, guest.BootMarker, 3*time.Minute)
	t.Logf("boot marker %s after start", time.Since(start).Round(time.Millisecond))
	// The guest read the NoCloud disk: it took the VMI's name as hostname
	// and ran the user-data, whose output only that script can print.
	waitConsole(t, vm.console, 0, userDataToken("life"), time.Minute)
	waitConsole(t, vm.console, 0, guest.CloudInitMarker+" hostname=life", time.Minute)
	if s, _ := l.State(); s != v1.DomainRunning {
		t.Fatalf("state %s after boot, want Running", s)
	}

	t.Run("console", func(t *testing.T) {
		c, err := l.Console()
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		lines := make(chan string, 100)
		go func() {
			sc := bufio.NewScanner(c)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		deadline := time.After(60 * time.Second)
		resend := time.NewTicker(3 * time.Second)
		defer resend.Stop()
		if _, err := c.Write([]byte("\necho console-$((6*7))\n")); err != nil {
			t.Fatal(err)
		}
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					t.Fatal("console closed")
				}
				if strings.Contains(line, "console-42") {
					return
				}
			case <-resend.C:
				_, _ = c.Write([]byte("echo console-$((6*7))\n"))
			case <-deadline:
				b, _ := os.ReadFile(vm.console)
				t.Fatalf("no command output on the console; log:\n%s", guest.Tail(b, 1500))
			}
		}
	})

	t.Run("pause-resume", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.Pause(); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitState(ctx, v1.DomainPaused); err != nil {
			t.Fatal(err)
		}
		// The controller's Paused condition takes this reason.
		if _, reason := l.State(); reason != v1.DomainReasonPausedByUser {
			t.Errorf("paused with reason %q, want %s", reason, v1.DomainReasonPausedByUser)
		}
		if err := l.Resume(); err != nil {
			t.Fatal(err)
		}
		if err := l.WaitState(ctx, v1.DomainRunning); err != nil {
			t.Fatal(err)
		}
		if _, reason := l.State(); reason != "Unpaused" {
			t.Errorf("resumed with reason %q, want Unpaused", reason)
		}
	})

	t.Run("graceful-shutdown", func(t *testing.T) {
		_ = off
		grace := 90 * time.Second
		start := time.Now()
		graceful, err := l.Shutdown(context.Background(), grace)
		if err != nil {
			t.Fatal(err)
		}
		if !graceful {
			b, _ := os.ReadFile(vm.console)
			t.Fatalf("guest did not power off within %s; console:\n%s", grace, guest.Tail(b, 1500))
		}
		t.Logf("guest powered off in %s", time.Since(start).Round(time.Millisecond))
		waitConsole(t, vm.console, 0, guest.ShutdownMarker, time.Second)
		if s, reason := l.State(); s != v1.DomainShutdown || reason != "Shutdown" {
			t.Fatalf("state %s (%s) after shutdown, want Shutdown (Shutdown)", s, reason)
		}
	})
}

// TestDestroyAfterGrace: a guest that ignores ACPI (paused) is destroyed
// when the grace period ends.
func TestDestroyAfterGrace(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "stubborn")
	l := startVM(t, d, vm)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := l.WaitState(ctx, v1.DomainRunning); err != nil {
		t.Fatal(err)
	}
	if err := l.Pause(); err != nil {
		t.Fatal(err)
	}
	graceful, err := l.Shutdown(ctx, 3*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if graceful {
		t.Fatal("a paused guest powered off by itself")
	}
	select {
	case <-l.Done():
	default:
		t.Fatal("domain not gone after destroy")
	}
	if s, reason := l.State(); s != v1.DomainShutdown || reason != "Destroyed" {
		t.Errorf("after destroy: %s (%s), want Shutdown (Destroyed)", s, reason)
	}
}

// writeSeed writes the NoCloud disk of vmi's second volume at iso.
func writeSeed(t testing.TB, vmi *v1.VirtualMachineInstance, iso string) {
	t.Helper()
	files, err := converter.NoCloudFiles(vmi, vmi.Spec.Volumes[1].CloudInitNoCloud, converter.NoCloudSecrets{})
	if err != nil {
		t.Fatal(err)
	}
	if err := converter.WriteNoCloudISO(iso, files); err != nil {
		t.Fatal(err)
	}
}

// guestOverlay builds the test guest (cached) and makes a qcow2 overlay on
// its disk in a new directory, returned with it.
func guestOverlay(t testing.TB) (dir, overlay string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// The base named relatively as base.img, as in a CSI volume.
	dir = t.TempDir()
	if err := os.Symlink(art.Disk, filepath.Join(dir, "base.img")); err != nil {
		t.Fatal(err)
	}
	overlay = filepath.Join(dir, "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("overlay: %v: %s", err, out)
	}
	return dir, overlay
}
