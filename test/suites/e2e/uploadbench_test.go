package e2e

import (
	"context"
	"fmt"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/test/env/stack"
	"github.com/podvirt/podvirt/test/harness/durations"
	"github.com/podvirt/podvirt/test/harness/transfer"
)

// BenchmarkImageUpload measures `podvirtctl image-upload` of a raw disk with
// 512 MiB of random data — the check and hash, the claim and its upload pod,
// the bytes through the API server's port-forward, the CSI driver's import
// until the claim is bound — and, side by side in each iteration, a plain
// blob upload of the same bytes to the stack's registry (hash, then upload:
// what crane does) and `curl -T` of the file to an HTTP sink on loopback.
// It reports the medians and the ratios (goal ≤ 1.2):
//
//	go test -run '^$' -bench ImageUpload -benchtime 3x -timeout 60m ./test/suites/e2e/
func BenchmarkImageUpload(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		b.Fatal(err)
	}
	disk := filepath.Join(b.TempDir(), "disk.raw")
	transfer.WriteRandom(b, disk, 512<<20)
	sink := transfer.Sink(b)
	kube := []string{"-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig()}
	var upload, blob, put []time.Duration
	for i := range b.N {
		claim := fmt.Sprintf("bench-upload-%d-%d", i, time.Now().Unix())
		b.Cleanup(func() {
			_ = st.Client.Delete(context.Background(), &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: claim}})
		})
		start := time.Now()
		out, err := exec.CommandContext(ctx, bin, append(kube, "image-upload", "--claim", claim, disk)...).CombinedOutput()
		if err != nil {
			b.Fatalf("podvirtctl image-upload: %v\n%s", err, out)
		}
		upload = append(upload, time.Since(start))
		b.Logf("image-upload %s:\n%s", claim, out)

		start = time.Now()
		if err := transfer.PushBlob(ctx, disk, st.Mirrors.Up.Addr, fmt.Sprintf("bench/blob-%d", time.Now().UnixNano())); err != nil {
			b.Fatal(err)
		}
		blob = append(blob, time.Since(start))
		put = append(put, transfer.CurlPut(b, disk, sink))
	}
	u, bl, c := durations.Median(upload), durations.Median(blob), durations.Median(put)
	b.ReportMetric(float64(u.Milliseconds()), "upload-ms")
	b.ReportMetric(float64(bl.Milliseconds()), "blob-ms")
	b.ReportMetric(float64(c.Milliseconds()), "curl-ms")
	b.ReportMetric(float64(u)/float64(bl), "upload/blob")
	b.ReportMetric(float64(u)/float64(c), "upload/curl")
	b.Logf("512 MiB disk, median of %d: image-upload %s, plain blob %s, curl -T %s; upload/blob %.2f, upload/curl %.2f (goal ≤ 1.2)",
		len(upload), u.Round(time.Millisecond), bl.Round(time.Millisecond), c.Round(time.Millisecond), float64(u)/float64(bl), float64(u)/float64(c))
}
