package cli

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/podvirt/podvirt/test/harness/durations"
	"github.com/podvirt/podvirt/test/harness/transfer"
)

// benchDiskBytes is the benchmark disk's data: random, so nothing
// compresses it away.
const benchDiskBytes = 512 << 20

// BenchmarkImagePush measures `podvirtctl image push` of a raw disk with
// 512 MiB of data (validation, build, push, the digest asked back) to a
// real registry process, side by side in each iteration with the plain
// upload of the same bytes as one blob to a fresh registry of the same kind
// (hash, then upload: what crane does) and with `curl -T` of the file to
// an HTTP sink on loopback. Each push goes to a registry of its own, so no
// blob is already there. It reports the medians and the ratios (goal ≤ 1.2):
//
//	go test -run '^$' -bench ImagePush -benchtime 3x ./cmd/podvirtctl/internal/cli/
func BenchmarkImagePush(b *testing.B) {
	disk := filepath.Join(b.TempDir(), "disk.raw")
	transfer.WriteRandom(b, disk, benchDiskBytes)
	sink := transfer.Sink(b)
	var plain, gzip, blob, put []time.Duration
	for i := range b.N {
		plain = append(plain, onFreshRegistry(b, func(reg string) {
			if out, err := imageCmd(b, "push", disk, reg+fmt.Sprintf("/vms/plain:%d", i), "--insecure", "--compress", "none"); err != nil {
				b.Fatalf("image push: %v\n%s", err, out)
			}
		}))
		gzip = append(gzip, onFreshRegistry(b, func(reg string) {
			if out, err := imageCmd(b, "push", disk, reg+fmt.Sprintf("/vms/gzip:%d", i), "--insecure", "--compress", "gzip"); err != nil {
				b.Fatalf("image push: %v\n%s", err, out)
			}
		}))
		blob = append(blob, onFreshRegistry(b, func(reg string) {
			if err := transfer.PushBlob(b.Context(), disk, reg, "vms/blob"); err != nil {
				b.Fatal(err)
			}
		}))
		put = append(put, transfer.CurlPut(b, disk, sink))
	}
	p, g, bl, c := durations.Median(plain), durations.Median(gzip), durations.Median(blob), durations.Median(put)
	b.ReportMetric(float64(p.Milliseconds()), "push-none-ms")
	b.ReportMetric(float64(g.Milliseconds()), "push-gzip-ms")
	b.ReportMetric(float64(bl.Milliseconds()), "blob-ms")
	b.ReportMetric(float64(c.Milliseconds()), "curl-ms")
	b.ReportMetric(float64(p)/float64(bl), "push-none/blob")
	b.ReportMetric(float64(p)/float64(c), "push-none/curl")
	b.ReportMetric(float64(g)/float64(bl), "push-gzip/blob")
	b.Logf("512 MiB disk, median of %d: push (none) %s, push (gzip) %s, plain blob %s, curl -T %s; push/blob %.2f, push/curl %.2f, gzip push/blob %.2f (goal ≤ 1.2)",
		len(plain), p.Round(time.Millisecond), g.Round(time.Millisecond), bl.Round(time.Millisecond), c.Round(time.Millisecond),
		float64(p)/float64(bl), float64(p)/float64(c), float64(g)/float64(bl))
}

// onFreshRegistry times f against a registry process of its own, so no
// blob is there before; the registry's start and stop are not timed.
func onFreshRegistry(b *testing.B, f func(addr string)) time.Duration {
	b.Helper()
	reg := startRegistries(b, false)[0]
	defer reg.Stop()
	start := time.Now()
	f(reg.Addr)
	return time.Since(start)
}
