package launcher

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/runtime/migrationproxy"
	"github.com/podvirt/podvirt/test/harness/durations"
	"github.com/podvirt/podvirt/test/images/guest"
)

// BenchmarkMigrateVsVirsh migrates the same VM (256 MiB of RAM; a data disk
// that is an overlay with 64 MiB written on a base both sides hold; the
// root disk an overlay of the test guest) between two private libvirtds:
// by the launcher (MigrateTo through the token-checked proxy, as between
// two launcher pods) and by `virsh migrate --live --p2p --copy-storage-inc`
// of the same domain XML straight between the daemons, alternating which
// goes first. It reports the medians of the migration's wall time and
// their ratio (goal ≤ 1.15), the downtime (goal ≤ 500 ms) and the disk
// bytes copied against the overlays' allocation (goal ≤ 1.1):
//
//	go test -run '^$' -bench MigrateVsVirsh -benchtime 3x ./runtime/launcher/
func BenchmarkMigrateVsVirsh(b *testing.B) {
	if _, err := exec.LookPath("virsh"); err != nil {
		b.Fatal("virsh not found (Debian libvirt-clients): run `make deps`")
	}
	src, dst := startDaemon(b), startDaemon(b)
	// A fresh libvirtd probes QEMU's capabilities before its first
	// domain: seconds under TCG, which only the first run would pay.
	for _, d := range []*libvirtd.Daemon{src, dst} {
		if out, err := exec.Command("virsh", "-c", d.URI, "domcapabilities", "--virttype", "qemu").CombinedOutput(); err != nil {
			b.Fatalf("virsh domcapabilities: %v: %s", err, out)
		}
	}
	runs := max(b.N, 3)
	var viaLauncher, viaVirsh, downL, downV []time.Duration
	var copied, written []int64
	b.ResetTimer()
	for i := range runs {
		first := i%2 == 0
		for _, useLauncher := range []bool{first, !first} {
			b.StopTimer()
			m := newBenchMigrant(b, src, dst, fmt.Sprintf("m%d%v", i, useLauncher))
			b.StartTimer()
			if useLauncher {
				took, down, disk := m.viaLauncher(b)
				viaLauncher, downL = append(viaLauncher, took), append(downL, down)
				copied, written = append(copied, disk), append(written, m.written)
			} else {
				took, down := m.viaVirsh(b)
				viaVirsh, downV = append(viaVirsh, took), append(downV, down)
			}
			b.StopTimer()
			m.close(b)
			b.StartTimer()
		}
	}
	b.StopTimer()
	l, v := durations.Median(viaLauncher), durations.Median(viaVirsh)
	var worstCopy float64
	for i := range copied {
		worstCopy = max(worstCopy, float64(copied[i])/float64(written[i]))
	}
	b.ReportMetric(float64(l.Milliseconds()), "launcher-ms")
	b.ReportMetric(float64(v.Milliseconds()), "virsh-ms")
	b.ReportMetric(float64(l)/float64(v), "launcher/virsh")
	b.ReportMetric(float64(durations.Median(downL).Milliseconds()), "downtime-ms")
	b.ReportMetric(worstCopy, "disk-copied/written")
	b.Logf("migration, median of %d: launcher %s (downtime %s), virsh %s (downtime %s), ratio %.3f (goal ≤ 1.15); disk copied ÷ overlays' allocation ≤ %.2f (goal ≤ 1.1); launcher %v; virsh %v",
		runs, l.Round(time.Millisecond), durations.Median(downL), v.Round(time.Millisecond), durations.Median(downV), float64(l)/float64(v), worstCopy,
		durations.Rounded(viaLauncher), durations.Rounded(viaVirsh))
}

// benchMigrant is a booted VM on src and its empty target on dst.
type benchMigrant struct {
	src, dst *libvirtd.Daemon
	vm       *testVM
	l        *Launcher
	destXML  string
	dir      string
	written  int64 // the overlays' allocation on the source
}

func newBenchMigrant(b *testing.B, src, dst *libvirtd.Daemon, name string) *benchMigrant {
	b.Helper()
	art, err := guest.Build(context.Background())
	if err != nil {
		b.Fatal(err)
	}
	vm := newTestVM(b, name)
	srcDir, dstDir := filepath.Dir(vm.console), b.TempDir()
	// The data disk's base, on both "nodes"; 64 MiB written into its
	// overlay. Each disk has its own directory and its base is base.img,
	// as in a CSI volume: any other name is a snapshot layer, which the
	// launcher would merge into the top before moving (layers.go).
	srcData, dstDataDir := filepath.Join(srcDir, "data"), filepath.Join(dstDir, "data")
	for _, d := range []string{srcData, dstDataDir} {
		if err := os.Mkdir(d, 0o755); err != nil {
			b.Fatal(err)
		}
	}
	base := filepath.Join(srcData, "base.img")
	qemuImg(b, "create", "-q", "-f", "qcow2", base, "128M")
	qemuIO(b, "-f", "qcow2", "-c", "write -P 0x11 0 32M", base)
	data := filepath.Join(srcData, "data.qcow2")
	qemuImg(b, "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", data)
	qemuIO(b, "-f", "qcow2", "-c", "write -P 0x5a 64M 64M", data)
	withData(vm.vmi)
	vm.xml = render(b, vm.vmi, srcDir, filepath.Join(srcDir, "root.qcow2"), data)

	for _, f := range [][2]string{{art.Disk, filepath.Join(dstDir, "base.img")}, {base, filepath.Join(dstDataDir, "base.img")}} {
		if err := os.Link(f[0], f[1]); err != nil {
			b.Fatal(err)
		}
	}
	root, dstData := filepath.Join(dstDir, "root.qcow2"), filepath.Join(dstDataDir, "data.qcow2")
	qemuImg(b, "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", root)
	qemuImg(b, "create", "-q", "-f", "qcow2", "-b", "base.img", "-F", "qcow2", dstData)
	destXML := render(b, vm.vmi, dstDir, root, dstData)

	l, err := New(src.URI, converter.DomainName(vm.vmi))
	if err != nil {
		b.Fatal(err)
	}
	if err := l.Start(vm.xml); err != nil {
		b.Fatal(err)
	}
	waitConsole(b, vm.console, 0, guest.BootMarker, bootTimeout)
	m := &benchMigrant{src: src, dst: dst, vm: vm, l: l, destXML: destXML, dir: srcDir}
	m.written = allocated(b, filepath.Join(srcDir, "root.qcow2")) + allocated(b, data)
	return m
}

// viaLauncher migrates through the launcher's proxy and returns the wall
// time, the downtime and the disk bytes copied.
func (m *benchMigrant) viaLauncher(b *testing.B) (time.Duration, time.Duration, int64) {
	b.Helper()
	token, err := migrationproxy.NewToken()
	if err != nil {
		b.Fatal(err)
	}
	target, err := New(m.dst.URI, converter.DomainName(m.vm.vmi))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = target.Close() }()
	socks := func(d *libvirtd.Daemon) MigrationSockets {
		s := MigrationSockets{Daemon: libvirtd.MigrationDir, Visible: d.Visible(libvirtd.MigrationDir)}
		if err := os.MkdirAll(s.Visible, 0o700); err != nil {
			b.Fatal(err)
		}
		return s
	}
	in, err := target.AwaitIncoming("127.0.0.1:0", token, m.dst.Socket, socks(m.dst))
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = in.Close() }()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	start := time.Now()
	st, err := m.l.MigrateTo(ctx, socks(m.src), MigrateOptions{Target: in.Addr(), Token: token, CertificateSHA256: in.CertificateSHA256(), DestXML: m.destXML}, nil)
	if err != nil {
		b.Fatal(err)
	}
	took := time.Since(start)
	if err := in.Wait(ctx); err != nil {
		b.Fatal(err)
	}
	if d, err := target.domain(); err == nil {
		_ = d.Destroy()
	}
	return took, st.Downtime, int64(st.DiskProcessed)
}

// viaVirsh migrates with virsh, straight between the daemons, and returns
// the wall time and the downtime.
func (m *benchMigrant) viaVirsh(b *testing.B) (time.Duration, time.Duration) {
	b.Helper()
	d, err := m.l.domain()
	if err != nil {
		b.Fatal(err)
	}
	disks, err := writableDisks(d)
	if err != nil {
		b.Fatal(err)
	}
	xmlPath := filepath.Join(m.dir, "dest.xml")
	if err := os.WriteFile(xmlPath, []byte(m.destXML), 0o644); err != nil {
		b.Fatal(err)
	}
	// Both QEMUs see /tmp alike: the sockets meet there.
	shared, err := os.MkdirTemp("", "podvirt-virsh-migrate-")
	if err != nil {
		b.Fatal(err)
	}
	defer os.RemoveAll(shared)
	dom := converter.DomainName(m.vm.vmi)
	start := time.Now()
	out, err := exec.Command("virsh", "-c", m.src.URI, "migrate", "--live", "--p2p", "--persistent", "--copy-storage-inc",
		"--migrate-disks", strings.Join(disks, ","), "--xml", xmlPath,
		"--migrateuri", "unix://"+filepath.Join(shared, "migration.sock"), "--disks-uri", "unix://"+filepath.Join(shared, "disks.sock"),
		dom, "qemu+unix:///system?socket="+m.dst.Socket).CombinedOutput()
	if err != nil {
		b.Fatalf("virsh migrate: %v: %s", err, out)
	}
	took := time.Since(start)
	info, _ := exec.Command("virsh", "-c", m.dst.URI, "domjobinfo", dom, "--completed").CombinedOutput()
	var down time.Duration
	if mm := regexp.MustCompile(`Total downtime:\s+(\d+) ms`).FindSubmatch(info); mm != nil {
		ms, _ := strconv.Atoi(string(mm[1]))
		down = time.Duration(ms) * time.Millisecond
	}
	_ = exec.Command("virsh", "-c", m.dst.URI, "destroy", dom).Run()
	_ = exec.Command("virsh", "-c", m.dst.URI, "undefine", "--nvram", dom).Run()
	return took, down
}

func (m *benchMigrant) close(b *testing.B) {
	if err := m.l.Close(); err != nil {
		b.Logf("closing %s: %v", m.vm.vmi.Name, err)
	}
	if c, err := libvirt.NewConnect(m.dst.URI); err == nil {
		if d, err := c.LookupDomainByName(converter.DomainName(m.vm.vmi)); err == nil {
			_ = d.Destroy()
			_ = d.UndefineFlags(libvirt.DOMAIN_UNDEFINE_NVRAM)
			_ = d.Free()
		}
		_, _ = c.Close()
	}
}
