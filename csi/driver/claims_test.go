package driver

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/cluster"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// TestClaimSourcesAndEvents runs CreateVolume the way external-provisioner
// does with --extra-create-metadata, against claims in a real API server:
// the source and checksum come from the claim's annotations (or the
// StorageClass), credentials from a Secret, the registry's CA from a
// ConfigMap; progress and failures are events on the claim, and the
// import's phase, progress and error are its annotations.
func TestClaimSourcesAndEvents(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	const ns = "vm-disks"
	cs, kube := apiWithNamespace(ctx, t, ns)

	// A private registry: TLS with its own CA, basic auth, a slow link
	// (2 MiB of incompressible data at 1 MiB/s).
	reg := startRegistryWith(t, registryOptions{tls: true, username: "alice", password: "s3cret", bytesPerSecond: 1 << 20})
	guest := reg.pushContainerDiskOf(t, "guest", makeRandomQCOW2(t, 16<<20, 2<<20))
	big := reg.pushContainerDisk(t, "big", 64<<20)
	unseen := reg.pushContainerDisk(t, "unseen", 8<<20)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: reg.srv.Certificate().Raw})
	mustCreate(t, func() error {
		_, err := cs.CoreV1().Secrets(ns).Create(ctx, &corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "registry-creds"},
			StringData: map[string]string{"username": "alice", "password": "s3cret"},
		}, metav1.CreateOptions{})
		return err
	})
	mustCreate(t, func() error {
		_, err := cs.CoreV1().ConfigMaps(ns).Create(ctx, &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: "registry-ca"},
			Data:       map[string]string{"ca.pem": string(caPEM)},
		}, metav1.CreateOptions{})
		return err
	})

	// An HTTP server for checksummed sources.
	img := makeQCOW2(t, 8<<20)
	data, err := os.ReadFile(img)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(data)
	webSrv := httptest.NewServer(http.FileServer(http.Dir(filepath.Dir(img))))
	t.Cleanup(webSrv.Close)
	webHost := strings.TrimPrefix(webSrv.URL, "http://")

	td := startImportDriver(t, Options{Cluster: kube, ProgressInterval: 500 * time.Millisecond})
	// The registry and web server listen on loopback: the class opts in.
	private := map[string]string{ParamRegistrySecretName: "registry-creds", ParamCAConfigMap: "registry-ca", ParamAllowPrivateSources: "true"}
	web := map[string]string{ParamInsecureRegistries: webHost, ParamAllowPrivateSources: "true"}

	tests := []struct {
		claim       string
		annotations map[string]string
		size        int64
		params      map[string]string
		wantCode    codes.Code
		wantMsg     string
		wantReasons []string
		fromCache   bool // ImportCompleted says FromCache
		wantPhase   v1.DiskImportPhase
	}{
		{
			claim:       "root",
			annotations: map[string]string{v1.DiskSourceAnnotation: guest},
			size:        32 << 20,
			params:      private,
			wantReasons: []string{ReasonImportStarted, ReasonImportProgress, ReasonImportCompleted},
			wantPhase:   v1.ImportSucceeded,
		},
		{
			claim:       "class-default",
			size:        32 << 20,
			params:      merge(private, map[string]string{ParamSource: guest}),
			wantReasons: []string{ReasonImportStarted, ReasonImportCompleted},
			fromCache:   true, // the guest came with "root"
			wantPhase:   v1.ImportSucceeded,
		},
		{
			claim:       "checksum-ok",
			annotations: map[string]string{v1.DiskSourceAnnotation: webSrv.URL + "/disk.qcow2", v1.DiskChecksumAnnotation: "sha256:" + hex.EncodeToString(sum[:])},
			size:        8 << 20,
			params:      web,
			wantReasons: []string{ReasonImportStarted, ReasonImportCompleted},
			wantPhase:   v1.ImportSucceeded,
		},
		{
			claim:       "checksum-bad",
			annotations: map[string]string{v1.DiskSourceAnnotation: webSrv.URL + "/disk.qcow2", v1.DiskChecksumAnnotation: "sha256:" + strings.Repeat("0", 64)},
			size:        8 << 20,
			params:      web,
			wantCode:    codes.FailedPrecondition,
			wantMsg:     "will not be retried",
			wantReasons: []string{ReasonImportStarted, ReasonImportFailed},
			wantPhase:   v1.ImportFailed,
		},
		{
			claim:       "too-small",
			annotations: map[string]string{v1.DiskSourceAnnotation: big},
			size:        16 << 20,
			params:      private,
			wantCode:    codes.InvalidArgument,
			wantMsg:     "request at least 64.0 MiB",
			wantReasons: []string{ReasonImportStarted, ReasonImportFailed},
			wantPhase:   v1.ImportFailed,
		},
		{
			claim:       "no-credentials",
			annotations: map[string]string{v1.DiskSourceAnnotation: unseen},
			size:        32 << 20,
			params:      map[string]string{ParamCAConfigMap: "registry-ca", ParamAllowPrivateSources: "true"},
			// The registry's 401 may heal (a Secret added to the class):
			// the provisioner retries, the claim shows why.
			wantCode:    codes.Unavailable,
			wantMsg:     "401 Unauthorized",
			wantReasons: []string{ReasonImportStarted, ReasonImportRetrying},
			wantPhase:   v1.ImportRetrying,
		},
		{
			// Any claim author picks the source: the class limits it.
			claim:       "not-allowed",
			annotations: map[string]string{v1.DiskSourceAnnotation: "http://169.254.169.254/latest/meta-data/iam"},
			size:        8 << 20,
			params:      merge(web, map[string]string{ParamAllowedSources: "quay.io, https://images.example.com/vm/"}),
			wantCode:    codes.FailedPrecondition,
			wantMsg:     "not allowed by StorageClass parameter allowedSources (quay.io, https://images.example.com/vm/)",
			wantReasons: []string{ReasonImportFailed},
			wantPhase:   v1.ImportFailed,
		},
		{
			// Without the opt-in, the web server on loopback is out of reach.
			claim:       "loopback",
			annotations: map[string]string{v1.DiskSourceAnnotation: webSrv.URL + "/disk.qcow2"},
			size:        8 << 20,
			params:      map[string]string{ParamInsecureRegistries: webHost},
			wantCode:    codes.FailedPrecondition,
			wantMsg:     "refused by the image egress policy: loopback address",
			wantReasons: []string{ReasonImportStarted, ReasonImportFailed},
			wantPhase:   v1.ImportFailed,
		},
	}
	for _, tt := range tests {
		t.Run(tt.claim, func(t *testing.T) {
			mustCreate(t, func() error {
				_, err := cs.CoreV1().PersistentVolumeClaims(ns).Create(ctx, &corev1.PersistentVolumeClaim{
					ObjectMeta: metav1.ObjectMeta{Name: tt.claim, Annotations: tt.annotations},
					Spec: corev1.PersistentVolumeClaimSpec{
						AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
						Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: *resource.NewQuantity(tt.size, resource.BinarySI)}},
					},
				}, metav1.CreateOptions{})
				return err
			})
			params := merge(tt.params, map[string]string{
				"csi.storage.k8s.io/pvc/name":      tt.claim,
				"csi.storage.k8s.io/pvc/namespace": ns,
				"csi.storage.k8s.io/pv/name":       "pvc-" + tt.claim,
			})
			req := createReq("pvc-"+tt.claim, tt.size, false, params)
			seen := watchAnnotations(t, cs, ns, tt.claim)
			start := time.Now()
			resp, err := td.controller().CreateVolume(ctx, req)
			took := time.Since(start)
			if status.Code(err) != tt.wantCode || (tt.wantMsg != "" && !strings.Contains(err.Error(), tt.wantMsg)) {
				t.Fatalf("CreateVolume: %v, want code %s with %q", err, tt.wantCode, tt.wantMsg)
			}
			if err == nil {
				m, merr := diskmeta.Read(td.VolumeDir(resp.Volume.VolumeId))
				if merr != nil || m.Source != tt.annotations[v1.DiskSourceAnnotation]+tt.params[ParamSource] {
					t.Errorf("volume meta %+v, %v: want the source of the claim or class", m, merr)
				}
			} else {
				// A retry gets the same answer (a final failure from memory:
				// TestImportTooLargeIsFinalAndRemembered counts that no blob is fetched).
				if _, err2 := td.controller().CreateVolume(ctx, req); status.Code(err2) != tt.wantCode {
					t.Errorf("retry: %v, want %s", err2, tt.wantCode)
				}
			}
			events := waitForEvents(t, cs, ns, tt.claim, tt.wantReasons)
			for _, e := range events {
				wantType := corev1.EventTypeNormal
				if e.Reason == ReasonImportFailed || e.Reason == ReasonImportRetrying {
					wantType = corev1.EventTypeWarning
				}
				if e.Type != wantType || e.Source.Component != Name || e.Source.Host != "node-a" {
					t.Errorf("event %s: type %s from %+v, want %s from %s on node-a", e.Reason, e.Type, e.Source, wantType, Name)
				}
				if e.Reason == ReasonImportCompleted && strings.Contains(e.Message, FromCache) != tt.fromCache {
					t.Errorf("ImportCompleted %q: want from the cache %v", e.Message, tt.fromCache)
				}
				if e.Reason == ReasonImportFailed && e.Count > 1 {
					t.Errorf("ImportFailed recorded %d times: the retry imported again", e.Count)
				}
			}
			final := waitForImportPhase(t, cs, ns, tt.claim, tt.wantPhase)
			checkImportAnnotations(t, final, tt.wantPhase, tt.wantMsg)
			if tt.claim == "root" {
				checkProgressEvents(t, events, took, 500*time.Millisecond)
				checkProgressAnnotations(t, seen(), took, 500*time.Millisecond)
			}
		})
	}
}

// checkProgressEvents: progress shows bytes, percent, rate and the mirror,
// and is rate-limited to about one event per interval.
func checkProgressEvents(t *testing.T, events []corev1.Event, took, interval time.Duration) {
	t.Helper()
	n := 0
	for _, e := range events {
		if e.Reason != ReasonImportProgress {
			continue
		}
		n += int(e.Count)
		if !strings.Contains(e.Message, "%)") || !strings.Contains(e.Message, "/s") || !strings.Contains(e.Message, " from ") {
			t.Errorf("progress event %q lacks percent, rate or mirror", e.Message)
		}
	}
	if max := int(took/interval) + 2; n < 2 || n > max {
		t.Errorf("%d progress events for an import of %s, want 2…%d (one per %s)", n, took, max, interval)
	}
}

// watchAnnotations records the import annotations of every version of the
// claim from now on; the returned func gives what it saw so far.
func watchAnnotations(t *testing.T, cs kubernetes.Interface, ns, claim string) func() []map[string]string {
	t.Helper()
	w, err := cs.CoreV1().PersistentVolumeClaims(ns).Watch(context.Background(), metav1.ListOptions{FieldSelector: "metadata.name=" + claim})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Stop)
	var mu sync.Mutex
	var seen []map[string]string
	go func() {
		for e := range w.ResultChan() {
			pvc, ok := e.Object.(*corev1.PersistentVolumeClaim)
			if !ok || e.Type != watch.Modified {
				continue
			}
			a := map[string]string{}
			for _, k := range []string{v1.ImportPhaseAnnotation, v1.ImportProgressAnnotation, v1.ImportMirrorAnnotation, v1.ImportErrorAnnotation} {
				if v, ok := pvc.Annotations[k]; ok {
					a[k] = v
				}
			}
			mu.Lock()
			seen = append(seen, a)
			mu.Unlock()
		}
	}()
	return func() []map[string]string {
		mu.Lock()
		defer mu.Unlock()
		return slices.Clone(seen)
	}
}

// waitForImportPhase waits until the claim's import annotations say phase
// (they are written in the background) and returns them.
func waitForImportPhase(t *testing.T, cs kubernetes.Interface, ns, claim string, phase v1.DiskImportPhase) map[string]string {
	t.Helper()
	var got map[string]string
	polltest.Eventually(t, 30*time.Second, fmt.Sprintf("claim %s shows import phase %s", claim, phase), func() (bool, string) {
		pvc, err := cs.CoreV1().PersistentVolumeClaims(ns).Get(context.Background(), claim, metav1.GetOptions{})
		if err != nil {
			return false, err.Error()
		}
		got = pvc.Annotations
		return got[v1.ImportPhaseAnnotation] == string(phase), fmt.Sprint(got)
	})
	return got
}

// checkImportAnnotations: a success shows 100% and no error, a failure
// its error, and neither a mirror.
func checkImportAnnotations(t *testing.T, got map[string]string, phase v1.DiskImportPhase, wantMsg string) {
	t.Helper()
	if _, ok := got[v1.ImportMirrorAnnotation]; ok {
		t.Errorf("phase %s with a mirror: %v", phase, got)
	}
	errMsg, hasErr := got[v1.ImportErrorAnnotation]
	switch phase {
	case v1.ImportSucceeded:
		if got[v1.ImportProgressAnnotation] != "100.0%" || hasErr {
			t.Errorf("succeeded import: %v, want progress 100.0%% and no error", got)
		}
	default:
		if !strings.Contains(errMsg, wantMsg) || len(errMsg) > v1.ImportErrorMaxLength {
			t.Errorf("%s import: error annotation %q, want it to say %q", phase, errMsg, wantMsg)
		}
	}
}

// checkProgressAnnotations: while importing, the claim shows a percentage
// and the mirror, rewritten about once per interval, not per chunk.
func checkProgressAnnotations(t *testing.T, seen []map[string]string, took, interval time.Duration) {
	t.Helper()
	percent := regexp.MustCompile(`^[0-9]{1,3}\.[0-9]%$`)
	n := 0
	for _, a := range seen {
		if a[v1.ImportPhaseAnnotation] != string(v1.ImportImporting) || a[v1.ImportProgressAnnotation] == "" {
			continue
		}
		n++
		if !percent.MatchString(a[v1.ImportProgressAnnotation]) || a[v1.ImportMirrorAnnotation] == "" {
			t.Errorf("progress annotations %v: want a percentage and the mirror", a)
		}
	}
	if max := int(took/interval) + 2; n < 1 || n > max {
		t.Errorf("%d progress writes on the claim for an import of %s, want 1…%d (one per %s): %v", n, took, max, interval, seen)
	}
}

func waitForEvents(t *testing.T, cs kubernetes.Interface, ns, claim string, reasons []string) []corev1.Event {
	t.Helper()
	var events []corev1.Event
	polltest.Until(t, 30*time.Second, fmt.Sprintf("events %v on claim %s", reasons, claim), func() bool {
		list, err := cs.CoreV1().Events(ns).List(context.Background(), metav1.ListOptions{FieldSelector: "involvedObject.name=" + claim})
		if err != nil {
			return false
		}
		events = list.Items
		seen := map[string]bool{}
		for _, e := range events {
			seen[e.Reason] = true
		}
		for _, r := range reasons {
			if !seen[r] {
				return false
			}
		}
		return true
	})
	return events
}

// apiWithNamespace starts a real API server for the test, with namespace
// ns, and returns a client of it and the driver's view of it (node-a).
func apiWithNamespace(ctx context.Context, t *testing.T, ns string) (kubernetes.Interface, *cluster.Client) {
	t.Helper()
	srv, err := apiserver.Start(apiserver.Options{})
	if err != nil {
		t.Fatalf("API server: %v (run 'make deps')", err)
	}
	t.Cleanup(func() { srv.Stop() })
	cs := kubernetes.NewForConfigOrDie(srv.Config)
	kube, err := cluster.New(srv.Config, Name, "node-a")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(kube.Close)
	mustCreate(t, func() error {
		_, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
		return err
	})
	return cs, kube
}

func mustCreate(t *testing.T, create func() error) {
	t.Helper()
	if err := create(); err != nil {
		t.Fatal(err)
	}
}

func merge(maps ...map[string]string) map[string]string {
	out := map[string]string{}
	for _, m := range maps {
		for k, v := range m {
			out[k] = v
		}
	}
	return out
}
