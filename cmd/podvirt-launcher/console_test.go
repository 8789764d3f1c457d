package main

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/launcher"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/images/guest"
)

// buildLauncher builds this command, as the launcher image holds it.
func buildLauncher(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "podvirt-launcher")
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Fatal("the go command is not on PATH")
	}
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v: %s", err, out)
	}
	return bin
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestConsoleSubcommand runs `podvirt-launcher console` as podvirtctl
// does through pods/exec (stdin and stdout piped, the VMI's UID in
// $PODVIRT_VMI_UID) against a launcher's command socket with the test
// guest running under a private libvirtd: a command typed in comes back
// with its output, closing stdin ends the session cleanly, and once the
// guest is gone the subcommand says so.
func TestConsoleSubcommand(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: runs a private libvirtd in its own mount namespace")
	}
	if err := libvirtd.CheckInstalled(); err != nil {
		t.Fatal(err)
	}
	bin := buildLauncher(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	d, err := libvirtd.Start(ctx, libvirtd.Config{Dir: filepath.Join(dir, "libvirt"), Private: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping libvirtd: %v", err)
		}
	})

	overlay := filepath.Join(dir, "root.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", art.Disk, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("overlay: %v: %s", err, out)
	}
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "con", Namespace: "test", UID: types.UID("7f6d3c1e-2a4b-4c5d-8e9f-0a1b2c3d4e5f")},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain:  v1.DomainSpec{Memory: v1.Memory{Guest: resource.MustParse("256Mi")}, Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}}},
			Volumes: []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}}},
		},
	}
	consoleLog := filepath.Join(dir, "console.log")
	xml, err := converter.ConvertXML(vmi, converter.Options{
		DomainType: converter.DomainQEMU,
		Disks:      map[string]converter.DiskSource{"root": {Path: overlay, Format: diskmeta.FormatQCOW2}},
		ConsoleLog: consoleLog,
	})
	if err != nil {
		t.Fatal(err)
	}
	l, err := launcher.New(d.URI, converter.DomainName(vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l.Close() })
	socketDir := filepath.Join(dir, "sockets")
	srv := cmdserver.New(l, cmdserver.Config{VMI: "test/con", UID: string(vmi.UID), DomainName: converter.DomainName(vmi), Grace: 5 * time.Second})
	if err := srv.ListenAndServe(launchercmd.SocketPath(socketDir, string(vmi.UID))); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop(time.Second) })
	if err := l.Start(xml); err != nil {
		t.Fatal(err)
	}
	if _, err := guest.WaitForOutput(ctx, consoleLog, 0, guest.BootMarker); err != nil {
		t.Fatal(err)
	}

	console := func(ctx context.Context) (*exec.Cmd, *os.File, *syncBuffer, *syncBuffer) {
		cmd := exec.CommandContext(ctx, bin, "console", "--socket-dir", socketDir)
		cmd.Env = append(os.Environ(), UIDEnv+"="+string(vmi.UID))
		stdin, err := cmd.StdinPipe()
		if err != nil {
			t.Fatal(err)
		}
		var out, errOut syncBuffer
		cmd.Stdout, cmd.Stderr = &out, &errOut
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		return cmd, stdin.(*os.File), &out, &errOut
	}

	t.Run("command", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		cmd, stdin, out, errOut := console(ctx)
		deadline := time.Now().Add(90 * time.Second)
		for !strings.Contains(out.String(), "console-42") {
			if time.Now().After(deadline) {
				t.Fatalf("no command output through the console subcommand; stdout:\n%s\nstderr:\n%s", guest.Tail([]byte(out.String()), 1500), errOut.String())
			}
			if _, err := stdin.Write([]byte("echo console-$((6*7))\n")); err != nil {
				t.Fatalf("writing to the console: %v; stderr: %s", err, errOut.String())
			}
			time.Sleep(2 * time.Second)
		}
		// Closing stdin (the exec stream's end) ends the session.
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Fatalf("console exited with %v after stdin closed; stderr: %s", err, errOut.String())
		}
	})

	t.Run("guest-gone", func(t *testing.T) {
		graceful, err := l.Shutdown(ctx, 90*time.Second)
		if err != nil || !graceful {
			t.Fatalf("shutdown: graceful=%v err=%v", graceful, err)
		}
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd, stdin, _, errOut := console(ctx)
		defer stdin.Close()
		err = cmd.Wait()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 {
			t.Fatalf("console of a powered-off guest: %v, want exit 1; stderr: %s", err, errOut.String())
		}
		if msg := errOut.String(); !strings.Contains(msg, "podvirt-launcher console: console vmi test/con: domain is Shutdown") || !strings.Contains(msg, "no console") {
			t.Fatalf("stderr %q does not say the guest has no console", msg)
		}
	})
}

// TestVNCSubcommand runs `podvirt-launcher vnc` against a real QEMU VNC
// server on a unix socket in the run dir: the RFB greeting comes through
// stdout, and closing stdin ends the session.
func TestVNCSubcommand(t *testing.T) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		t.Fatal("qemu-system-x86_64 not found (Debian qemu-system-x86): run `make deps`")
	}
	bin := buildLauncher(t)
	runDir := t.TempDir()
	sock := filepath.Join(runDir, launcher.VNCSocketName)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	q := exec.CommandContext(ctx, qemu, "-machine", "q35,accel=tcg", "-nodefaults", "-no-user-config", "-display", "none", "-vga", "std", "-vnc", "unix:"+sock)
	var qerr syncBuffer
	q.Stderr = &qerr
	if err := q.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = q.Process.Kill(); _ = q.Wait() })
	for deadline := time.Now().Add(time.Minute); ; time.Sleep(50 * time.Millisecond) {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU made no VNC socket %s: %s", sock, qerr.String())
		}
	}

	cmd := exec.CommandContext(ctx, bin, "vnc", "--run-dir", runDir)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut syncBuffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); !strings.HasPrefix(out.String(), "RFB 003.008\n"); time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("no RFB greeting through the vnc subcommand: stdout %q, stderr %q", out.String(), errOut.String())
		}
	}
	stdin.Close()
	if err := cmd.Wait(); err != nil {
		t.Fatalf("vnc exited with %v after stdin closed; stderr: %s", err, errOut.String())
	}

	// No VNC socket: the error says what to check.
	cmd = exec.CommandContext(ctx, bin, "vnc", "--run-dir", t.TempDir())
	msg, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(msg), "is VNC enabled on this VMI") {
		t.Fatalf("vnc without a socket: %v: %s", err, msg)
	}
}
