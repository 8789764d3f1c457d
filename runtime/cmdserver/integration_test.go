package cmdserver_test

import (
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdclient"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/launcher"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestRealGuest boots the test guest under a private libvirtd through
// the launcher and drives it over the real command socket: Status,
// Pause, Status(Paused), Resume, Console (a command and its output),
// Shutdown.
func TestRealGuest(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root: runs a private libvirtd in its own mount namespace")
	}
	if err := libvirtd.CheckInstalled(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()

	// The private libvirtd, stopped at cleanup.
	ldir, err := os.MkdirTemp("", "podvirt-libvirtd-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(ldir) })
	sctx, scancel := context.WithTimeout(ctx, time.Minute)
	d, err := libvirtd.Start(sctx, libvirtd.Config{Dir: ldir, Private: true})
	scancel()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := d.Stop(); err != nil {
			t.Errorf("stopping libvirtd: %v", err)
		}
	})

	// The test guest as a VMI on a qcow2 overlay.
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "root.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", "qcow2", "-b", art.Disk, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("overlay: %v: %s", err, out)
	}
	uid, err := os.ReadFile("/proc/sys/kernel/random/uuid")
	if err != nil {
		t.Fatal(err)
	}
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "cmd", Namespace: "test", UID: types.UID(strings.TrimSpace(string(uid)))},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory:  v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}},
			},
			Volumes: []v1.Volume{
				{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}},
			},
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
	dumpConsole := func() string {
		b, _ := os.ReadFile(consoleLog)
		return guest.Tail(b, 1500)
	}

	l, err := launcher.New(d.URI, converter.DomainName(vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("closing launcher: %v", err)
		}
	})

	// Serve the socket, as the launcher does, before starting the domain.
	path := launchercmd.SocketPath(filepath.Join(dir, "sockets"), string(vmi.UID))
	srv := cmdserver.New(l, cmdserver.Config{VMI: vmi.Namespace + "/" + vmi.Name, UID: string(vmi.UID), DomainName: converter.DomainName(vmi), Grace: 90 * time.Second})
	if err := srv.ListenAndServe(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(5 * time.Second); err != nil {
			t.Error(err)
		}
	})
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })

	start := time.Now()
	if err := l.Start(xml); err != nil {
		t.Fatal(err)
	}
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	_, err = guest.WaitForOutput(wctx, consoleLog, 0, guest.BootMarker)
	wcancel()
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, dumpConsole())
	}
	t.Logf("boot marker %s after start", time.Since(start).Round(time.Millisecond))

	call := func() context.Context {
		cctx, ccancel := context.WithTimeout(ctx, 30*time.Second)
		t.Cleanup(ccancel)
		return cctx
	}
	wantState := func(want string) {
		t.Helper()
		st, err := c.Status(call(), &launchercmd.StatusRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if st.GetState() != want || st.GetUid() != string(vmi.UID) || st.GetVmi() != "test/cmd" {
			t.Fatalf("status %v, want state %s", st, want)
		}
	}

	wantState("Running")
	if _, err := c.Pause(call(), &launchercmd.PauseRequest{}); err != nil {
		t.Fatal(err)
	}
	wantState("Paused")
	_, err = c.Pause(call(), &launchercmd.PauseRequest{})
	if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || st.Message() != "pause vmi test/cmd: domain is Paused" {
		t.Fatalf("second pause: %v", err)
	}
	if _, err := c.Resume(call(), &launchercmd.ResumeRequest{}); err != nil {
		t.Fatal(err)
	}
	wantState("Running")

	t.Run("console", func(t *testing.T) {
		cctx, ccancel := context.WithTimeout(ctx, 90*time.Second)
		defer ccancel()
		s, err := c.Console(cctx)
		if err != nil {
			t.Fatal(err)
		}
		out := make(chan string, 100)
		recvErr := make(chan error, 1)
		go func() {
			for {
				m, err := s.Recv()
				if err != nil {
					recvErr <- err
					return
				}
				out <- string(m.GetData())
			}
		}()
		cmd := []byte("echo cmdserver-$((6*7))\n")
		if err := s.Send(&launchercmd.ConsoleData{Data: append([]byte("\n"), cmd...)}); err != nil {
			t.Fatal(err)
		}
		// Typed input may be lost while the shell starts; retype.
		resend := time.NewTicker(3 * time.Second)
		defer resend.Stop()
		var seen strings.Builder
		for !strings.Contains(seen.String(), "cmdserver-42") {
			select {
			case b := <-out:
				seen.WriteString(b)
			case <-resend.C:
				if err := s.Send(&launchercmd.ConsoleData{Data: cmd}); err != nil {
					t.Fatal(err)
				}
			case err := <-recvErr:
				t.Fatalf("console ended: %v; got %q", err, seen.String())
			case <-cctx.Done():
				t.Fatalf("no command output on the console stream; got %q; console log:\n%s", seen.String(), dumpConsole())
			}
		}
		if err := s.CloseSend(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-recvErr:
			if !errors.Is(err, io.EOF) {
				t.Fatalf("console after CloseSend: %v, want EOF", err)
			}
		case <-cctx.Done():
			t.Fatal("console stream did not end after CloseSend")
		}
	})

	t.Run("shutdown", func(t *testing.T) {
		sctx, scancel := context.WithTimeout(ctx, 2*time.Minute)
		defer scancel()
		start := time.Now()
		resp, err := c.Shutdown(sctx, &launchercmd.ShutdownRequest{})
		if err != nil {
			t.Fatalf("%v; console:\n%s", err, dumpConsole())
		}
		if !resp.GetGraceful() || resp.GetState() != "Shutdown" {
			t.Fatalf("shutdown %v; console:\n%s", resp, dumpConsole())
		}
		t.Logf("guest powered off in %s", time.Since(start).Round(time.Millisecond))
		select {
		case <-l.Done():
		default:
			t.Fatal("domain not gone after Shutdown returned")
		}
		wantState("Shutdown")
		_, err = c.Pause(call(), &launchercmd.PauseRequest{})
		if st, _ := status.FromError(err); st.Code() != codes.FailedPrecondition || st.Message() != "pause vmi test/cmd: domain is Shutdown" {
			t.Fatalf("pause after shutdown: %v", err)
		}
	})
}
