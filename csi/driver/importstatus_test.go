package driver

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/internal/testlog"
)

// TestImportAnnotations: each phase sets the keys it owns, clears what no
// longer holds, and keeps the progress a failure reached.
func TestImportAnnotations(t *testing.T) {
	mirror := "mirror.example:5000"
	tests := []struct {
		name  string
		phase v1.DiskImportPhase
		pr    *importer.Progress
		err   string
		want  map[string]string // "<nil>": removed; absent: left alone
	}{
		{"started", v1.ImportImporting, nil, "",
			map[string]string{v1.ImportPhaseAnnotation: "Importing", v1.ImportProgressAnnotation: "", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "<nil>"}},
		{"progress", v1.ImportImporting, &importer.Progress{Bytes: 42, Total: 100, Mirror: mirror}, "",
			map[string]string{v1.ImportPhaseAnnotation: "Importing", v1.ImportProgressAnnotation: "42.0%", v1.ImportMirrorAnnotation: mirror, v1.ImportErrorAnnotation: "<nil>"}},
		{"size unknown", v1.ImportImporting, &importer.Progress{Bytes: 42}, "",
			map[string]string{v1.ImportPhaseAnnotation: "Importing", v1.ImportProgressAnnotation: "", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "<nil>"}},
		{"succeeded", v1.ImportSucceeded, nil, "",
			map[string]string{v1.ImportPhaseAnnotation: "Succeeded", v1.ImportProgressAnnotation: "100.0%", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "<nil>"}},
		{"retrying", v1.ImportRetrying, nil, "401 Unauthorized",
			map[string]string{v1.ImportPhaseAnnotation: "Retrying", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "401 Unauthorized"}},
		{"failed", v1.ImportFailed, nil, "checksum mismatch",
			map[string]string{v1.ImportPhaseAnnotation: "Failed", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "checksum mismatch"}},
		{"interrupted", v1.ImportPending, nil, "",
			map[string]string{v1.ImportPhaseAnnotation: "Pending", v1.ImportMirrorAnnotation: "<nil>", v1.ImportErrorAnnotation: "<nil>"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := map[string]string{}
			for k, v := range importAnnotations(tt.phase, tt.pr, tt.err) {
				got[k] = "<nil>"
				if v != nil {
					got[k] = *v
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("update %v, want %v", got, tt.want)
			}
			for k, v := range tt.want {
				if got[k] != v {
					t.Errorf("%s = %q, want %q", k, got[k], v)
				}
			}
		})
	}
}

func TestProgressPercent(t *testing.T) {
	for _, tt := range []struct {
		bytes, total int64
		want         string
	}{{0, 100, "0.0%"}, {1, 3, "33.3%"}, {999, 1000, "99.9%"}, {5 << 30, 5 << 30, "100.0%"}, {12, 0, ""}, {120, 100, "100.0%"}} {
		if got := progressPercent(importer.Progress{Bytes: tt.bytes, Total: tt.total}); got != tt.want {
			t.Errorf("%d of %d: %q, want %q", tt.bytes, tt.total, got, tt.want)
		}
	}
}

// TestBoundedError: a long message is cut to the limit on a character
// boundary, and says so.
func TestBoundedError(t *testing.T) {
	if got := boundedError("short"); got != "short" {
		t.Errorf("short message changed to %q", got)
	}
	long := strings.Repeat("é", v1.ImportErrorMaxLength) // 2 bytes each
	got := boundedError(long)
	if len(got) > v1.ImportErrorMaxLength || !utf8.ValidString(got) || !strings.HasSuffix(got, "…") {
		t.Errorf("cut to %d bytes, valid UTF-8 %v, ends %q", len(got), utf8.ValidString(got), got[len(got)-6:])
	}
}

// annotatingCluster records AnnotateClaim calls; the first fails calls
// fail, and a held call waits for release.
type annotatingCluster struct {
	mu      sync.Mutex
	claims  map[types.NamespacedName]map[string]string
	calls   int
	fails   int
	missing bool
	hold    chan struct{}
}

func (c *annotatingCluster) AnnotateClaim(ctx context.Context, ns, name string, annotations map[string]*string) error {
	if c.hold != nil {
		select {
		case <-c.hold:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.calls++
	if c.missing {
		return apierrors.NewNotFound(schema.GroupResource{Resource: "persistentvolumeclaims"}, name)
	}
	if c.fails > 0 {
		c.fails--
		return errors.New("connection refused")
	}
	key := types.NamespacedName{Namespace: ns, Name: name}
	if c.claims == nil {
		c.claims = map[types.NamespacedName]map[string]string{}
	}
	if c.claims[key] == nil {
		c.claims[key] = map[string]string{}
	}
	for k, v := range annotations {
		if v == nil {
			delete(c.claims[key], k)
		} else {
			c.claims[key][k] = *v
		}
	}
	return nil
}

func (c *annotatingCluster) annotations(ns, name string) (map[string]string, int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := map[string]string{}
	for k, v := range c.claims[types.NamespacedName{Namespace: ns, Name: name}] {
		out[k] = v
	}
	return out, c.calls
}

func (c *annotatingCluster) Claim(context.Context, string, string) (*corev1.PersistentVolumeClaim, error) {
	return nil, errors.New("not in this test")
}
func (c *annotatingCluster) Secret(context.Context, string, string) (*corev1.Secret, error) {
	return nil, errors.New("not in this test")
}
func (c *annotatingCluster) ConfigMap(context.Context, string, string) (*corev1.ConfigMap, error) {
	return nil, errors.New("not in this test")
}
func (c *annotatingCluster) Event(runtime.Object, string, string, string) {}

func testAnnotator(t *testing.T, c *annotatingCluster) *claimAnnotator {
	a := newClaimAnnotator(c, slog.New(slog.NewTextHandler(testlog.Writer(t), nil)))
	t.Cleanup(func() { a.stop(time.Second) })
	return a
}

// TestClaimAnnotatorCoalesces: updates queued while a write is under way
// become one write, and the claim ends with the latest state.
func TestClaimAnnotatorCoalesces(t *testing.T) {
	c := &annotatingCluster{hold: make(chan struct{})}
	a := testAnnotator(t, c)
	key := types.NamespacedName{Namespace: "ns", Name: "root"}
	a.add(key, importAnnotations(v1.ImportImporting, nil, ""))
	// The first write is held; these pile up behind it.
	for i := int64(1); i <= 50; i++ {
		a.add(key, importAnnotations(v1.ImportImporting, &importer.Progress{Bytes: i, Total: 100, Mirror: "m"}, ""))
	}
	a.add(key, importAnnotations(v1.ImportSucceeded, nil, ""))
	close(c.hold)
	polltest.Eventually(t, 5*time.Second, "the claim shows Succeeded", func() (bool, string) {
		got, _ := c.annotations("ns", "root")
		return got[v1.ImportPhaseAnnotation] == "Succeeded", strings.Join([]string{got[v1.ImportPhaseAnnotation], got[v1.ImportProgressAnnotation]}, " ")
	})
	got, calls := c.annotations("ns", "root")
	if calls > 2 {
		t.Errorf("%d writes for 52 updates, want at most 2", calls)
	}
	if got[v1.ImportProgressAnnotation] != "100.0%" || got[v1.ImportMirrorAnnotation] != "" {
		t.Errorf("annotations %v: want 100.0%% and no mirror", got)
	}
}

// TestClaimAnnotatorRetries: a failed write is tried again, and an update
// made meanwhile wins over the failed one; a claim that is gone is given up.
func TestClaimAnnotatorRetries(t *testing.T) {
	c := &annotatingCluster{fails: 2}
	a := testAnnotator(t, c)
	key := types.NamespacedName{Namespace: "ns", Name: "root"}
	a.add(key, importAnnotations(v1.ImportRetrying, nil, "registry unreachable"))
	a.add(key, importAnnotations(v1.ImportFailed, nil, "image not found"))
	polltest.Eventually(t, 10*time.Second, "the claim shows Failed", func() (bool, string) {
		got, calls := c.annotations("ns", "root")
		return got[v1.ImportPhaseAnnotation] == "Failed" && got[v1.ImportErrorAnnotation] == "image not found", fmt.Sprintf("%v after %d writes", got, calls)
	})

	gone := &annotatingCluster{missing: true}
	a2 := testAnnotator(t, gone)
	a2.add(key, importAnnotations(v1.ImportImporting, nil, ""))
	time.Sleep(1500 * time.Millisecond) // past the first retry's delay
	if _, calls := gone.annotations("ns", "root"); calls != 1 {
		t.Errorf("%d writes to a claim that is gone, want 1", calls)
	}
}

// TestClaimAnnotatorStopWrites: what is queued when the driver stops is
// written before it goes.
func TestClaimAnnotatorStopWrites(t *testing.T) {
	c := &annotatingCluster{}
	a := newClaimAnnotator(c, slog.New(slog.NewTextHandler(testlog.Writer(t), nil)))
	a.add(types.NamespacedName{Namespace: "ns", Name: "root"}, importAnnotations(v1.ImportPending, nil, ""))
	a.stop(5 * time.Second)
	if got, _ := c.annotations("ns", "root"); got[v1.ImportPhaseAnnotation] != "Pending" {
		t.Errorf("after stop: %v, want Pending written", got)
	}
}

// TestImportUpdateShows compares an update with a claim as read.
func TestImportUpdateShows(t *testing.T) {
	u := importAnnotations(v1.ImportFailed, nil, "bad checksum")
	claim := &corev1.PersistentVolumeClaim{ObjectMeta: metav1.ObjectMeta{Annotations: map[string]string{
		v1.ImportPhaseAnnotation: "Failed", v1.ImportErrorAnnotation: "bad checksum", v1.ImportProgressAnnotation: "12.0%",
	}}}
	if !u.shows(claim) {
		t.Error("a claim showing the failure does not show it")
	}
	claim.Annotations[v1.ImportMirrorAnnotation] = "m" // to be removed
	if u.shows(claim) {
		t.Error("a claim with a mirror shows an update that removes it")
	}
	if u.shows(&corev1.PersistentVolumeClaim{}) {
		t.Error("a claim without annotations shows the failure")
	}
}
