package launcher

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/migrationproxy"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestLiveMigrationCopiesOnlyTheOverlay moves a booted guest between two
// launchers' libvirtds through the migration proxy, as between two pods:
// the root disk is an overlay on a base both sides hold, so only the
// overlay's data crosses; a data disk frozen under a snapshot layer
// crosses whole. The guest
// keeps running on the target with the data.
func TestLiveMigrationCopiesOnlyTheOverlay(t *testing.T) {
	src, dst := startDaemon(t), startDaemon(t)
	vm := newTestVM(t, "migrant")
	art, err := guest.Build(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	// A data disk the guest leaves alone, 24 MiB written, then frozen by
	// a snapshot (csi/volume.Freeze): the data is in a layer under an
	// empty overlay, and must cross all the same.
	srcDir := filepath.Dir(vm.console)
	layer := filepath.Join(srcDir, "layer-s.img")
	qemuImg(t, "create", "-q", "-f", "qcow2", layer, "64M")
	qemuIO(t, "-f", "qcow2", "-c", "write -P 0x5a 0 24M", layer)
	data := filepath.Join(srcDir, "data.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "layer-s.img", "-F", "qcow2", data, "64M")
	withData(vm.vmi)
	vm.xml = render(t, vm.vmi, srcDir, filepath.Join(srcDir, "root.qcow2"), data)
	l := startVM(t, src, vm)
	waitConsole(t, vm.console, 0, guest.BootMarker, 3*time.Minute)

	// The target: the same base under another path (its node's cache), an
	// empty overlay on it, an empty data disk of the same size.
	dstDir := t.TempDir()
	base := filepath.Join(dstDir, "base.qcow2")
	if err := os.Link(art.Disk, base); err != nil {
		t.Fatal(err)
	}
	root := filepath.Join(dstDir, "root.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", base, "-F", "qcow2", root)
	dstData := filepath.Join(dstDir, "data.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", dstData, "64M")
	destXML := render(t, vm.vmi, dstDir, root, dstData)

	token, err := migrationproxy.NewToken()
	if err != nil {
		t.Fatal(err)
	}
	target, err := New(dst.URI, converter.DomainName(vm.vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = target.Close() })
	in, err := target.AwaitIncoming("127.0.0.1:0", token, dst.Socket, socketsOf(t, dst))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()

	written := allocated(t, filepath.Join(srcDir, "root.qcow2")) + allocated(t, data) + allocated(t, layer)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var calls int
	stats, err := l.MigrateTo(ctx, socketsOf(t, src), MigrateOptions{Target: in.Addr(), Token: token, CertificateSHA256: in.CertificateSHA256(), DestXML: destXML}, func(MigrationStats) { calls++ })
	if err != nil {
		t.Fatal(err)
	}
	if err := in.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Done():
	case <-ctx.Done():
		t.Fatal("the source domain is still there after the migration")
	}
	arrived, err := in.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("source: %+v; target: %+v; %d progress reports; overlay+data allocated %d bytes", stats, arrived, calls, written)
	if stats.DiskProcessed == 0 || int64(stats.DiskProcessed) > written+written/10+4<<20 {
		t.Errorf("copied %d disk bytes for %d written (base %d): more than the overlays", stats.DiskProcessed, written, allocated(t, art.Disk))
	}
	if st, _ := target.State(); st != v1.DomainRunning {
		t.Fatalf("target domain %s, want Running", st)
	}
	// The guest answers on the target's console (the log file is appended to).
	d, err := target.domain()
	if err != nil {
		t.Fatal(err)
	}
	if err := d.DestroyFlags(libvirt.DOMAIN_DESTROY_GRACEFUL); err != nil {
		t.Fatal(err)
	}
	<-target.Done()
	if out, err := exec.Command("qemu-io", "-r", "-f", "qcow2", "-c", "read -P 0x5a 0 24M", dstData).CombinedOutput(); err != nil || strings.Contains(string(out), "Pattern verification failed") {
		t.Fatalf("the data disk on the target lacks what was written: %v: %s", err, out)
	}
	if got := allocated(t, root); got > allocated(t, filepath.Join(srcDir, "root.qcow2"))+4<<20 {
		t.Errorf("the target overlay allocates %d bytes: the base was copied into it", got)
	}
}

// TestLiveMigrationProxyRefusesStrangers: the target's proxy carries only
// a connection with the token over TLS to its own certificate: a wrong
// token, a source that does not speak TLS, or a source pinning another
// certificate gets nothing through.
func TestLiveMigrationProxyRefusesStrangers(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "real.sock")
	real, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer real.Close()
	go func() {
		for {
			c, err := real.Accept()
			if err != nil {
				return
			}
			_, _ = c.Write([]byte("hello"))
			_ = c.Close()
		}
	}()
	token, _ := migrationproxy.NewToken()
	tgt, err := migrationproxy.ListenTarget("127.0.0.1:0", token, map[migrationproxy.Channel]string{migrationproxy.Libvirt: sock})
	if err != nil {
		t.Fatal(err)
	}
	defer tgt.Close()
	other, _ := migrationproxy.NewToken()
	otherSum := make([]byte, len(tgt.CertificateSHA256()))
	// through reads what a source socket of the migration's libvirt
	// channel gets from the target.
	through := func(t *testing.T, token, sum []byte) string {
		t.Helper()
		src := t.TempDir()
		s, err := migrationproxy.ListenSource(src, tgt.Addr(), token, sum)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
		c, err := net.Dial("unix", filepath.Join(src, migrationproxy.Libvirt.SocketName()))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		return string(b)
	}
	if got := through(t, token, tgt.CertificateSHA256()); got != "hello" {
		t.Fatalf("the migration's own source read %q, want hello", got)
	}
	refused := tgt.Refused()
	for _, tc := range []struct {
		name       string
		token, sum []byte
	}{
		{"wrong token", other, tgt.CertificateSHA256()},
		{"another certificate pinned", token, otherSum},
	} {
		if got := through(t, tc.token, tc.sum); got != "" {
			t.Errorf("%s: read %q through the proxy", tc.name, got)
		}
	}
	// Plain TCP with the right token: no TLS, no way in.
	c, err := net.Dial("tcp", tgt.Addr())
	if err != nil {
		t.Fatal(err)
	}
	_, _ = c.Write(append(append([]byte(nil), token...), byte(migrationproxy.Libvirt)))
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); strings.Contains(string(b), "hello") {
		t.Errorf("a plain TCP client read %q through the proxy", b)
	}
	_ = c.Close()
	polltest.Eventually(t, 5*time.Second, "the target refused the three", func() (bool, string) {
		n := tgt.Refused() - refused
		return n == 3, fmt.Sprintf("refused %d", n)
	})
}

func withData(vmi *v1.VirtualMachineInstance) {
	vmi.Spec.Domain.Devices.Disks = append(vmi.Spec.Domain.Devices.Disks, v1.Disk{Name: "data"})
	vmi.Spec.Volumes = append(vmi.Spec.Volumes, v1.Volume{Name: "data",
		VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}}})
}

// render is the VM's domain for one side: its disks, cloud-init and
// console under dir.
func render(t testing.TB, vmi *v1.VirtualMachineInstance, dir, root, data string) string {
	t.Helper()
	return renderDisks(t, vmi, dir, map[string]string{"root": root, "data": data})
}

// renderDisks is the VM's domain with its qcow2 disks (volume → image),
// cloud-init and console under dir.
func renderDisks(t testing.TB, vmi *v1.VirtualMachineInstance, dir string, disks map[string]string) string {
	t.Helper()
	iso := filepath.Join(dir, "cloud-init.iso")
	if _, err := os.Stat(iso); err != nil {
		writeSeed(t, vmi, iso)
	}
	sources := map[string]converter.DiskSource{}
	for vol, path := range disks {
		sources[vol] = converter.DiskSource{Path: path, Format: diskmeta.FormatQCOW2}
	}
	xml, err := converter.ConvertXML(vmi, converter.Options{
		DomainType:    converter.DomainQEMU,
		Disks:         sources,
		CloudInitDisk: iso,
		ConsoleLog:    filepath.Join(dir, "console.log"),
	})
	if err != nil {
		t.Fatal(err)
	}
	return xml
}

func socketsOf(t testing.TB, d *libvirtd.Daemon) MigrationSockets {
	t.Helper()
	s := MigrationSockets{Daemon: libvirtd.MigrationDir, Visible: d.Visible(libvirtd.MigrationDir)}
	if err := os.MkdirAll(s.Visible, 0o700); err != nil {
		t.Fatal(err)
	}
	return s
}

func qemuImg(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

func qemuIO(t testing.TB, args ...string) {
	t.Helper()
	if out, err := exec.Command("qemu-io", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-io %v: %v: %s", args, err, out)
	}
}

// allocated is what a file occupies on disk.
func allocated(t testing.TB, p string) int64 {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}
