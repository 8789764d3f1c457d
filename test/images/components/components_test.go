package components

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/images/oci"
)

// TestLauncherImageRunsLibvirtAndQEMU builds the launcher image, imports it
// into a private containerd, runs it with runc and checks, inside the
// container, that the launcher links, and that libvirt's QEMU driver finds a
// working QEMU and the firmware (libvirt's embedded driver probes the real
// qemu-system-x86_64 for its capabilities).
func TestLauncherImageRunsLibvirtAndQEMU(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	socket := startContainerd(t)
	var progress bytes.Buffer
	imgs, err := Build(ctx, Options{Progress: &progress}, Launcher)
	if err != nil {
		t.Fatal(err)
	}
	imported, err := Import(ctx, []string{socket}, imgs, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(imported, []string{Ref(Launcher)}) {
		t.Errorf("first Import reported %v imported, want [%s]", imported, Ref(Launcher))
	}
	digest, err := imgs[0].Image.Digest()
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := oci.Present(ctx, socket, Ref(Launcher), digest); err != nil || !ok {
		t.Fatalf("after Import, Present(%s, %s) = %v, %v; want true", Ref(Launcher), digest, ok, err)
	}
	// A second import of the same image is skipped.
	progress.Reset()
	imported, err = Import(ctx, []string{socket}, imgs, &progress)
	if err != nil {
		t.Fatal(err)
	}
	if len(imported) > 0 || !strings.Contains(progress.String(), "already in containerd") {
		t.Errorf("second Import did not skip the unchanged image; progress:\n%s", progress.String())
	}

	script := `set -e
podvirt-launcher version
libvirtd --version
virtlogd --version
qemu-img --version | head -1
test -s /usr/share/OVMF/OVMF_CODE_4M.fd && test -s /usr/share/OVMF/OVMF_VARS_4M.fd
cat /etc/passwd
mkdir -p /tmp/lv
virsh -c 'qemu:///embed?root=/tmp/lv' domcapabilities --virttype qemu --arch x86_64 --machine q35
`
	out := ctrRun(ctx, t, socket, Ref(Launcher), "/bin/sh", "-c", script)
	for _, want := range []string{"podvirt-launcher dev", "libvirtd (libvirt) 9.", "qemu-img version 7.",
		"libvirt-qemu:x:64055:64055:", "<path>/usr/bin/qemu-system-x86_64</path>", "<value>/usr/share/OVMF/OVMF_CODE_4M.fd</value>"} {
		if !strings.Contains(out, want) {
			t.Errorf("launcher container output lacks %q:\n%s", want, out)
		}
	}
}

// TestComponentImagesRun builds every other image and runs its programs
// inside a container.
func TestComponentImagesRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	socket := startContainerd(t)
	names := []string{Controller, Handler, CSI, CSIProvisioner, CSISnapshotter, SnapshotController, CSIResizer}
	imgs, err := Build(ctx, Options{}, names...)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Import(ctx, []string{socket}, imgs, nil); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		args []string
		want string
	}{
		{Controller, []string{"/usr/bin/podvirt-controller", "version"}, "podvirt-controller dev"},
		{Handler, []string{"/usr/bin/podvirt-handler", "version"}, "podvirt-handler dev"},
		{Handler, []string{"/usr/bin/podvirt-l2"}, "CNI plugin podvirt-l2 dev"},
		{CSI, []string{"/bin/sh", "-c", "qemu-img --version && losetup --version && prlimit --version && xz --version && test -s /etc/ssl/certs/ca-certificates.crt && podvirt-csi version"}, "podvirt-csi dev"},
		{CSIProvisioner, []string{"/csi-provisioner", "--version"}, deps.Version("csi-sidecars")},
		{CSISnapshotter, []string{"/csi-snapshotter", "--version"}, deps.Version("csi-sidecars")},
		{SnapshotController, []string{"/snapshot-controller", "--version"}, deps.Version("csi-sidecars")},
		{CSIResizer, []string{"/csi-resizer", "--version"}, deps.Version("csi-sidecars")},
	} {
		t.Run(tc.name+" "+tc.args[0], func(t *testing.T) {
			if out := ctrRun(ctx, t, socket, Ref(tc.name), tc.args...); !strings.Contains(out, tc.want) {
				t.Errorf("%s in %s: output lacks %q:\n%s", strings.Join(tc.args, " "), Ref(tc.name), tc.want, out)
			}
		})
	}
}

// startContainerd runs a private containerd (no CRI) with its state in a
// temporary directory and returns its socket; it is stopped, and its
// containers' mounts undone, when the test ends.
func startContainerd(t *testing.T) string {
	t.Helper()
	bin, err := deps.System("containerd")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := deps.System("runc"); err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "pvimg-")
	if err != nil {
		t.Fatal(err)
	}
	socket := filepath.Join(dir, "c.sock")
	config := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = %q
[ttrpc]
  address = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), socket, socket+".ttrpc")
	if err := os.WriteFile(filepath.Join(dir, "config.toml"), []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "--config", filepath.Join(dir, "config.toml"))
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		logf.Close()
		// Snapshots of containers still mounted (a test that failed
		// mid-run) are unmounted before the directory goes.
		if mounts, err := os.ReadFile("/proc/self/mounts"); err == nil {
			for line := range strings.Lines(string(mounts)) {
				if f := strings.Fields(line); len(f) > 1 && strings.HasPrefix(f[1], dir) {
					_ = exec.Command("umount", "-l", f[1]).Run()
				}
			}
		}
		_ = os.RemoveAll(dir)
	})
	deadline := time.Now().Add(time.Minute)
	for {
		if exec.Command("ctr", "--address", socket, "version").Run() == nil {
			return socket
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(logf.Name())
			t.Fatalf("containerd at %s not ready within a minute; its log:\n%s", socket, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// ctrRun runs args in a fresh container of ref (host network, removed
// afterwards) and returns its output, failing the test when it fails.
func ctrRun(ctx context.Context, t *testing.T, socket, ref string, args ...string) string {
	t.Helper()
	id := fmt.Sprintf("t%d", time.Now().UnixNano())
	cmd := exec.CommandContext(ctx, "ctr", append([]string{"--address", socket, "--namespace", "k8s.io",
		"run", "--rm", "--net-host", ref, id}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("ctr run %s %s: %v:\n%s", ref, strings.Join(args, " "), err, out)
	}
	return string(out)
}
