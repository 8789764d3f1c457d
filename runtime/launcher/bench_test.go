package launcher

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/harness/durations"
	"github.com/podvirt/podvirt/test/images/guest"
)

// BenchmarkBootVsVirsh measures launcher start → guest boot marker against
// a bare `virsh define` + `virsh start` of the same domain XML, on the same
// private libvirtd, each run on a fresh qcow2 overlay of the test guest
// (with its NoCloud disk), alternating which goes first. It runs at least
// 5 of each (with -benchtime 5x, after a one-pair probe run) and reports
// the medians and their ratio (goal ≤ 1.10):
//
//	go test -run '^$' -bench BootVsVirsh -benchtime 5x ./runtime/launcher/
func BenchmarkBootVsVirsh(b *testing.B) {
	if _, err := exec.LookPath("virsh"); err != nil {
		b.Fatal("virsh not found (Debian libvirt-clients): run `make deps`")
	}
	d := startDaemon(b)
	runs := bootRuns(b)
	var viaLauncher, viaVirsh []time.Duration
	b.ResetTimer()
	for i := range runs {
		launcherFirst := i%2 == 0
		for _, useLauncher := range []bool{launcherFirst, !launcherFirst} {
			if useLauncher {
				viaLauncher = append(viaLauncher, bootWithLauncher(b, d, fmt.Sprintf("bl%d", i)))
			} else {
				viaVirsh = append(viaVirsh, bootWithVirsh(b, d, fmt.Sprintf("bv%d", i)))
			}
		}
	}
	b.StopTimer()
	l, v := durations.Median(viaLauncher), durations.Median(viaVirsh)
	b.ReportMetric(float64(l.Milliseconds()), "launcher-ms")
	b.ReportMetric(float64(v.Milliseconds()), "virsh-ms")
	b.ReportMetric(float64(l)/float64(v), "launcher/virsh")
	b.Logf("boot marker, median of %d: launcher %s, virsh %s, ratio %.3f (goal ≤ 1.10); launcher %v; virsh %v",
		runs, l.Round(time.Millisecond), v.Round(time.Millisecond), float64(l)/float64(v), durations.Rounded(viaLauncher), durations.Rounded(viaVirsh))
}

const bootTimeout = 3 * time.Minute

// bootRuns is how many boots of each kind to time: b.N with -benchtime Nx
// (the framework's 1-run probe before it then costs one pair only), and
// at least 5 otherwise, since one boot takes longer than any time-based
// -benchtime.
func bootRuns(b *testing.B) int {
	if f := flag.Lookup("test.benchtime"); f != nil && strings.HasSuffix(f.Value.String(), "x") {
		if b.N > 1 && b.N < 5 {
			b.Fatalf("-benchtime %s: the median needs at least 5 runs (-benchtime 5x)", f.Value)
		}
		return b.N
	}
	return max(b.N, 5)
}

// bootWithLauncher starts a fresh test VM through the launcher and returns
// the time from launcher start to the boot marker; the domain is removed.
func bootWithLauncher(b *testing.B, d *libvirtd.Daemon, name string) time.Duration {
	b.Helper()
	b.StopTimer()
	vm := newTestVM(b, name)
	b.StartTimer()
	start := time.Now()
	l, err := New(d.URI, converter.DomainName(vm.vmi))
	if err != nil {
		b.Fatal(err)
	}
	defer func() {
		b.StopTimer()
		if err := l.Close(); err != nil {
			b.Errorf("removing domain %s: %v", name, err)
		}
		b.StartTimer()
	}()
	if err := l.Start(vm.xml); err != nil {
		b.Fatal(err)
	}
	waitConsole(b, vm.console, 0, guest.BootMarker, bootTimeout)
	return time.Since(start)
}

// bootWithVirsh does the same with virsh define + start of the XML.
func bootWithVirsh(b *testing.B, d *libvirtd.Daemon, name string) time.Duration {
	b.Helper()
	b.StopTimer()
	vm := newTestVM(b, name)
	xmlPath := filepath.Join(b.TempDir(), "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(vm.xml), 0o644); err != nil {
		b.Fatal(err)
	}
	dom := converter.DomainName(vm.vmi)
	virsh := func(args ...string) error {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", d.URI}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("virsh %v: %w: %s", args, err, out)
		}
		return nil
	}
	b.StartTimer()
	start := time.Now()
	defer func() {
		b.StopTimer()
		_ = virsh("destroy", dom)
		if err := virsh("undefine", "--nvram", dom); err != nil {
			b.Errorf("removing domain %s: %v", dom, err)
		}
		b.StartTimer()
	}()
	if err := virsh("define", xmlPath); err != nil {
		b.Fatal(err)
	}
	if err := virsh("start", dom); err != nil {
		b.Fatal(err)
	}
	waitConsole(b, vm.console, 0, guest.BootMarker, bootTimeout)
	return time.Since(start)
}
