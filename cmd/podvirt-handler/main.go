// Command podvirt-handler is the node daemon that keeps each VMI's domain and the cluster in sync.
//
// It runs on every node (a DaemonSet, privileged: it reads the kubelet's
// pod directories) and, for every VMI whose launcher pod is bound to its
// node, talks to the launcher over its command socket: it sends the VMI
// and its network results (runtime/handler), pauses and resumes the guest
// as the podvirt.io/paused annotation says, and writes status.domain,
// status.interfaces and events on the VMI. Prometheus metrics are served
// on --metrics-address, /healthz and /readyz on --health-address.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	"github.com/podvirt/podvirt/cmd/internal/restconfig"
	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/runtime/deviceplugin"
	"github.com/podvirt/podvirt/runtime/handler"
)

func main() {
	if version.Asked(os.Stdout, "podvirt-handler", os.Args[1:]) {
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-handler: %v\n", err)
		os.Exit(1)
	}
}

// flags are the handler's command line.
type flags struct {
	nodeName, kubeletRoot, kubeconfig   string
	cniBinDir, cniBinary, cniResultsDir string
	devicePluginDir                     string
	metricsAddress, healthAddress       string
	logLevel                            int
	migration                           handler.MigrationConfig
}

func parse(args []string) (*flags, error) {
	f := &flags{}
	fs := flag.NewFlagSet("podvirt-handler", flag.ContinueOnError)
	fs.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (env NODE_NAME)")
	fs.StringVar(&f.kubeletRoot, "kubelet-root", "/var/lib/kubelet", "the kubelet's root dir, where it keeps pods' emptyDirs")
	fs.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster")
	fs.StringVar(&f.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI bin dir, where podvirt-l2 is installed")
	fs.StringVar(&f.cniBinary, "cni-binary", "/usr/bin/podvirt-l2", "the podvirt-l2 binary to install (in the handler's image)")
	fs.StringVar(&f.cniResultsDir, "cni-results-dir", cniresults.DefaultDir, "where podvirt-l2 stores its ADD results (contracts/cniresults), read for the launchers")
	fs.StringVar(&f.devicePluginDir, "device-plugin-dir", deviceplugin.DefaultDir, "the kubelet's device-plugins dir (where its kubelet.sock is; the kubelet keeps it there whatever its root dir)")
	fs.StringVar(&f.metricsAddress, "metrics-address", ":9812", "address of the Prometheus /metrics endpoint; 0 disables it")
	fs.StringVar(&f.healthAddress, "health-address", ":9813", "address of the /healthz and /readyz endpoints")
	fs.IntVar(&f.logLevel, "v", 0, "log verbosity (0 info, 1 debug)")
	fs.Uint64Var(&f.migration.BandwidthMiB, "migration-bandwidth", 0, "MiB/s each live migration from this node may use; 0 is unlimited")
	fs.DurationVar(&f.migration.CompletionTimeoutPerGiB, "migration-completion-timeout-per-gib", 150*time.Second, "how long a live migration may take per GiB of guest memory before it is aborted (or switched to post-copy); 0 is unlimited")
	fs.BoolVar(&f.migration.AutoConverge, "migration-auto-converge", false, "throttle the vCPUs of a guest that dirties memory faster than it can be sent")
	fs.BoolVar(&f.migration.AllowPostCopy, "migration-allow-post-copy", false, "switch a migration that reaches its completion timeout to post-copy instead of aborting it (the guest then depends on both nodes until it ends)")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if f.nodeName == "" {
		return nil, errors.New("no node name: pass --node-name or set NODE_NAME (the DaemonSet sets it from spec.nodeName)")
	}
	return f, nil
}

func run(args []string) error {
	f, err := parse(args)
	if errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	level := slog.LevelInfo
	if f.logLevel > 0 {
		level = slog.Level(-4 * f.logLevel)
	}
	logger := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	// Everything in the handler logs through logr (ctrl.Log, the
	// reconcilers' contexts); slog is only its JSON backend.
	ctrl.SetLogger(logger)

	restCfg, err := restconfig.Load(f.kubeconfig)
	if err != nil {
		return err
	}
	restCfg.UserAgent = "podvirt-handler/" + version.Version
	scheme, err := scheme.New()
	if err != nil {
		return err
	}
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                 scheme,
		Logger:                 logger,
		Cache:                  handler.CacheOptions(f.nodeName),
		Metrics:                metricsserver.Options{BindAddress: f.metricsAddress},
		HealthProbeBindAddress: f.healthAddress,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	cfg := handler.Config{NodeName: f.nodeName, KubeletRoot: f.kubeletRoot, Registerer: metrics.Registry, Migration: f.migration}
	if err := setupNode(mgr, f, &cfg); err != nil {
		return err
	}
	if _, err := handler.Setup(mgr, cfg); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	if err := mgr.AddReadyzCheck("caches", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return errors.New("caches not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	logger.Info("starting", "version", version.Version, "node", f.nodeName, "kubeletRoot", f.kubeletRoot)
	return mgr.Start(ctrl.SetupSignalHandler())
}
