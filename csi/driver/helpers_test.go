package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/volume"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/internal/testlog"
)

// requireTools fails the test when what the driver runs is missing.
func requireTools(t testing.TB) {
	t.Helper()
	for _, tool := range []string{volume.QemuImg, volume.Losetup, "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("%s is not installed: run 'make deps' (qemu-utils, util-linux, mount)", tool)
		}
	}
	if os.Geteuid() != 0 {
		t.Fatal("the CSI driver tests mount and attach loop devices: run them as root")
	}
}

// testDriver is a Driver served on a socket in a temporary directory.
type testDriver struct {
	*Driver
	dir, endpoint string
	conn          *grpc.ClientConn
	srv           *Server
}

// startDriver starts a driver on stateDir (a new directory when empty) and
// stops it, releasing every loop device and mount it left, when the test
// ends.
func startDriver(t testing.TB, stateDir string, opts Options) *testDriver {
	t.Helper()
	requireTools(t)
	if stateDir == "" {
		stateDir = t.TempDir()
	}
	opts.StateDir = stateDir
	if opts.NodeID == "" {
		opts.NodeID = "node-a"
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(testlog.Writer(t), &slog.HandlerOptions{Level: slog.LevelInfo}))
	}
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	// Unix socket paths are limited to 108 bytes: keep it short.
	sockDir, err := os.MkdirTemp("", "csi-")
	if err != nil {
		t.Fatal(err)
	}
	td := &testDriver{Driver: d, dir: stateDir, endpoint: "unix://" + filepath.Join(sockDir, "csi.sock")}
	td.srv, err = d.Listen(td.endpoint, nil)
	if err != nil {
		t.Fatal(err)
	}
	go td.srv.Serve()
	td.conn, err = grpc.NewClient(td.endpoint, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		td.stop()
		os.RemoveAll(sockDir)
		cleanupMountsAndLoops(t, stateDir)
	})
	return td
}

func (td *testDriver) stop() {
	if td.srv == nil {
		return
	}
	td.conn.Close()
	td.srv.Stop()
	td.Close()
	td.srv = nil
}

func (td *testDriver) controller() csi.ControllerClient { return csi.NewControllerClient(td.conn) }
func (td *testDriver) node() csi.NodeClient             { return csi.NewNodeClient(td.conn) }

// cleanupMountsAndLoops removes what a failed test may leave: mounts of
// the volume directories and loop devices backed by their disks.
func cleanupMountsAndLoops(t testing.TB, stateDir string) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disks, _ := filepath.Glob(filepath.Join(stateDir, "volumes", "*", volume.DiskName))
	for _, disk := range disks {
		if err := volume.DetachLoopsOf(ctx, disk); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Errorf("cleanup: %v", err)
		return
	}
	// Mount points under the test's temporary root, newest first.
	root := filepath.Dir(stateDir) + "/"
	lines := strings.Split(string(mi), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 4 && strings.HasPrefix(f[4], root) {
			if out, err := exec.Command("umount", f[4]).CombinedOutput(); err != nil {
				t.Errorf("cleanup: umount %s: %v: %s", f[4], err, out)
			} else {
				t.Logf("cleanup: unmounted %s left by the test", f[4])
			}
		}
	}
}

// loopsOf lists the loop devices attached to the disks under stateDir.
func loopsOf(t testing.TB, stateDir string) []string {
	t.Helper()
	var out []string
	disks, _ := filepath.Glob(filepath.Join(stateDir, "volumes", "*", volume.DiskName))
	for _, disk := range disks {
		devs, err := volume.LoopsOf(context.Background(), disk)
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Fatal(err)
		}
		out = append(out, devs...)
	}
	return out
}

// childEnv makes the test binary a driver process (see TestMain), so a test
// can kill it as a crash would.
const childEnv = "PODVIRT_CSI_TEST_DRIVER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(childEnv); dir != "" {
		if err := serveChild(dir); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// serveChild runs a driver with a real image cache on stateDir, serving
// <stateDir>/../csi.sock until it is killed.
func serveChild(stateDir string) error {
	if err := os.MkdirAll(stateDir, 0o755); err != nil {
		return err
	}
	cache, err := importer.NewCache(filepath.Join(stateDir, "cache"), 1<<30, nil)
	if err != nil {
		return err
	}
	d, err := New(Options{NodeID: "node-a", StateDir: stateDir, Cache: cache})
	if err != nil {
		return err
	}
	srv, err := d.Listen(childSocket(stateDir), nil)
	if err != nil {
		return err
	}
	return srv.Serve()
}

func childSocket(stateDir string) string { return filepath.Join(filepath.Dir(stateDir), "c.sock") }

type childDriver struct {
	cmd  *exec.Cmd
	conn *grpc.ClientConn
}

// startChildDriver runs the driver in a child process on stateDir.
func startChildDriver(t *testing.T, stateDir string) *childDriver {
	t.Helper()
	if len(childSocket(stateDir)) > 100 {
		t.Fatalf("socket path %s is too long for a unix socket", childSocket(stateDir))
	}
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), childEnv+"="+stateDir)
	cmd.Stdout, cmd.Stderr = testlog.Writer(t), testlog.Writer(t)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &childDriver{cmd: cmd}
	t.Cleanup(func() { c.kill(t) })
	sock := childSocket(stateDir)
	polltest.Until(t, 30*time.Second, "the driver process's socket", func() bool {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			conn.Close()
		}
		return err == nil
	})
	var err error
	if c.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		t.Fatal(err)
	}
	return c
}

// kill ends the process with SIGKILL, as a crash would.
func (c *childDriver) kill(t *testing.T) {
	if c.cmd.ProcessState != nil {
		return
	}
	if c.conn != nil {
		c.conn.Close()
	}
	_ = c.cmd.Process.Kill()
	_ = c.cmd.Wait()
}
