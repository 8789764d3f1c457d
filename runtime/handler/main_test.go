package handler

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// The tests share one API server, one controller manager (the real VMI
// controller, which owns the phase) and one handler for node testNode,
// started by TestMain. There is no kubelet: the tests bind launcher pods,
// write their status and run the launcher process on the host, in its own
// PID namespace like a container, with its socket where the kubelet would
// put the pod's socket emptyDir under kubeletRoot.
var (
	k8s          client.Client
	startErr     error
	kubeletRoot  string
	resultsDir   string // the CNI results store podvirt-l2 writes and the handler reads
	launcherPath string
	nsSeq        atomic.Int64
	// registry holds the handler's metrics, VMI domain stats included.
	registry = prometheus.NewRegistry()
)

const testNode = "node-a"

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse()
	logger := logr.Discard()
	if os.Getenv("PODVIRT_TEST_LOG") != "" {
		logger = logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctrl.SetLogger(logger)
	tmp, err := os.MkdirTemp("", "podvirt-handler-test-")
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer os.RemoveAll(tmp)
	kubeletRoot = filepath.Join(tmp, "kubelet")
	resultsDir = filepath.Join(tmp, "cni-results")
	launcherPath = filepath.Join(tmp, "podvirt-launcher")
	if startErr = buildLauncher(launcherPath); startErr != nil {
		return m.Run()
	}
	srv, err := apiserver.Start(apiserver.Options{CRDDirs: []string{"../../charts/podvirt/crds"}})
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer srv.Stop()
	stop, err := startManagers(srv)
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer stop()
	return m.Run()
}

// buildLauncher builds podvirt-launcher (cgo, libvirt) for the tests.
func buildLauncher(out string) error {
	if err := libvirtd.CheckInstalled(); err != nil {
		return err
	}
	cmd := exec.Command("go", "build", "-o", out, "./cmd/podvirt-launcher")
	cmd.Dir = "../.."
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building podvirt-launcher: %w: %s (needs libvirt-dev: run `make deps`)", err, b)
	}
	return nil
}

func startManagers(srv *apiserver.Server) (stop func(), err error) {
	scheme, err := scheme.New()
	if err != nil {
		return nil, err
	}
	cmgr, err := ctrl.NewManager(srv.Config, ctrl.Options{
		Scheme: scheme, Cache: controller.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	cfg := controller.DefaultConfig()
	cfg.UseEmulation = true
	if err := controller.Setup(cmgr, cfg); err != nil {
		return nil, err
	}
	hmgr, err := ctrl.NewManager(srv.Config, ctrl.Options{
		Scheme: scheme, Cache: CacheOptions(testNode),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	if _, err := Setup(hmgr, Config{NodeName: testNode, KubeletRoot: kubeletRoot, Networks: ResultsDir(resultsDir), SocketRetry: 200 * time.Millisecond, Registerer: registry}); err != nil {
		return nil, err
	}
	if k8s, err = client.New(srv.Config, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	for _, mgr := range []ctrl.Manager{cmgr, hmgr} {
		go func() {
			defer func() { done <- struct{}{} }()
			if err := mgr.Start(ctx); err != nil {
				fmt.Fprintf(os.Stderr, "manager: %v\n", err)
			}
		}()
	}
	return func() { cancel(); <-done; <-done }, nil
}

func needServer(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("needs root: the launcher runs a private libvirtd in its own mount namespace")
	}
	if startErr != nil {
		t.Fatal(startErr)
	}
}

// namespace makes a namespace for one test and deletes what the test
// made in it at the end.
func namespace(t *testing.T) string {
	t.Helper()
	needServer(t)
	name := fmt.Sprintf("t%d-%s", nsSeq.Add(1), strings.ToLower(t.Name()))
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-")
	}
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		in := client.InNamespace(name)
		_ = k8s.DeleteAllOf(ctx, &v1.VirtualMachineInstance{}, in)
		// The controller waits for the launcher pods to go: play the
		// kubelet and remove them.
		polltest.Eventually(t, 30*time.Second, "VMIs are gone", func() (bool, string) {
			_ = k8s.DeleteAllOf(ctx, &corev1.Pod{}, in, client.GracePeriodSeconds(0))
			vmis := &v1.VirtualMachineInstanceList{}
			if err := k8s.List(ctx, vmis, in); err != nil {
				return false, err.Error()
			}
			return len(vmis.Items) == 0, fmt.Sprintf("%d VMIs left", len(vmis.Items))
		})
		_ = k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	return name
}
