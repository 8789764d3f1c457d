// Command podvirt-controller turns VirtualMachines into VirtualMachineInstances
// and VirtualMachineInstances into launcher pods.
//
// It runs a controller-runtime manager with leader election, /healthz and
// /readyz probes, and Prometheus metrics on /metrics.
package main

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/api/resource"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cmd/internal/restconfig"
	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/controller/identity"
)

func main() {
	if version.Asked(os.Stdout, "podvirt-controller", os.Args[1:]) {
		return
	}
	if err := run(os.Args[1:]); err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-controller: %v\n", err)
		os.Exit(1)
	}
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

func run(args []string) error {
	cfg := controller.DefaultConfig()
	fs := flag.NewFlagSet("podvirt-controller", flag.ContinueOnError)
	var (
		kubeconfig      = fs.String("kubeconfig", os.Getenv("KUBECONFIG"), "kubeconfig file; empty means in-cluster")
		metricsAddr     = fs.String("metrics-bind-address", ":8080", "address of the Prometheus /metrics endpoint; 0 disables it")
		probeAddr       = fs.String("health-probe-bind-address", ":8081", "address of the /healthz and /readyz endpoints")
		leaderElect     = fs.Bool("leader-elect", true, "elect a leader so only one replica acts")
		leaderNamespace = fs.String("leader-election-namespace", envOr("POD_NAMESPACE", ""), "namespace of the leader election lease; empty means the in-cluster namespace")
		qps             = fs.Float64("kube-api-qps", 200, "API requests per second the controller may make")
		burst           = fs.Int("kube-api-burst", 400, "API request burst")
		launcherCommand = fs.String("launcher-command", strings.Join(controller.DefaultLauncherCommand, " "), "launcher pod command, space-separated")
		containerDisk   = fs.String("container-disk-size", cfg.ContainerDiskSize.String(), "size of the ephemeral PVC of a containerDisk")
		macRange        = fs.String("mac-range", identity.DefaultMACRange, "FIRST-LAST: where the MACs of VM interfaces without one come from")
		logLevel        = fs.Int("v", 0, "log verbosity (0 info, 1 debug)")
	)
	fs.StringVar(&cfg.LauncherImage, "launcher-image", envOr("PODVIRT_LAUNCHER_IMAGE", controller.DefaultLauncherImage), "launcher image (env PODVIRT_LAUNCHER_IMAGE)")
	fs.StringVar(&cfg.UploadImage, "upload-image", envOr("PODVIRT_UPLOAD_IMAGE", controller.DefaultUploadImage), "image of upload pods (podvirtctl image-upload): the CSI driver's (env PODVIRT_UPLOAD_IMAGE)")
	emulation := emulationFlag{cfg: &cfg}
	if err := emulation.Set(envOr("PODVIRT_USE_EMULATION", "auto")); err != nil {
		return fmt.Errorf("env PODVIRT_USE_EMULATION: %w", err)
	}
	fs.Var(&emulation, "use-emulation", "auto, true or false: true runs guests under TCG (no devices.podvirt.io/kvm request), false requires KVM, auto picks per VMI from the nodes' KVM probe (env PODVIRT_USE_EMULATION)")
	fs.StringVar(&cfg.ContainerDiskStorageClass, "container-disk-storage-class", "", "StorageClass of containerDisk PVCs; empty means the cluster default")
	fs.Int64Var(&cfg.CPUAllocationRatio, "cpu-allocation-ratio", cfg.CPUAllocationRatio, "vCPUs per requested CPU")
	fs.DurationVar(&cfg.RestartBackoff, "restart-backoff", cfg.RestartBackoff, "wait after a VM's first failed VMI; doubles per further failure")
	fs.DurationVar(&cfg.MaxRestartBackoff, "max-restart-backoff", cfg.MaxRestartBackoff, "longest restart back-off")
	fs.IntVar(&cfg.VMWorkers, "vm-workers", cfg.VMWorkers, "concurrent VM reconciles")
	fs.IntVar(&cfg.VMIWorkers, "vmi-workers", cfg.VMIWorkers, "concurrent VMI reconciles")
	fs.Var((*evictionFlag)(&cfg.DefaultEvictionStrategy), "eviction-strategy", "LiveMigrate or None: what a node drain does to VMIs that name no evictionStrategy")
	fs.IntVar(&cfg.ParallelMigrations, "parallel-migrations", cfg.ParallelMigrations, "live migrations that may run at once in the cluster")
	fs.IntVar(&cfg.ParallelOutboundMigrationsPerNode, "parallel-outbound-migrations-per-node", cfg.ParallelOutboundMigrationsPerNode, "live migrations that may leave one node at once")
	if err := fs.Parse(args); errors.Is(err, flag.ErrHelp) {
		return nil
	} else if err != nil {
		return err
	}
	cfg.LauncherCommand = strings.Fields(*launcherCommand)
	size, err := resource.ParseQuantity(*containerDisk)
	if err != nil {
		return fmt.Errorf("--container-disk-size %q: %w", *containerDisk, err)
	}
	cfg.ContainerDiskSize = size
	if cfg.MACRange, err = identity.ParseMACRange(*macRange); err != nil {
		return fmt.Errorf("--mac-range: %w", err)
	}

	level := slog.LevelInfo
	if *logLevel > 0 {
		level = slog.Level(-4 * *logLevel)
	}
	logger := logr.FromSlogHandler(slog.NewJSONHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	ctrl.SetLogger(logger)

	restCfg, err := restconfig.Load(*kubeconfig)
	if err != nil {
		return err
	}
	restCfg.QPS, restCfg.Burst = float32(*qps), *burst
	restCfg.UserAgent = "podvirt-controller/" + version.Version

	scheme, err := scheme.New()
	if err != nil {
		return err
	}
	renew := 10 * time.Second
	mgr, err := ctrl.NewManager(restCfg, ctrl.Options{
		Scheme:                        scheme,
		Logger:                        logger,
		Cache:                         controller.CacheOptions(),
		Metrics:                       metricsserver.Options{BindAddress: *metricsAddr},
		HealthProbeBindAddress:        *probeAddr,
		LeaderElection:                *leaderElect,
		LeaderElectionID:              "podvirt-controller.podvirt.io",
		LeaderElectionNamespace:       *leaderNamespace,
		LeaderElectionReleaseOnCancel: true,
		RenewDeadline:                 &renew,
	})
	if err != nil {
		return fmt.Errorf("create manager: %w", err)
	}
	cfg.Registerer = metrics.Registry // served by the manager's metrics server
	if err := controller.Setup(mgr, cfg); err != nil {
		return err
	}
	if err := mgr.AddHealthzCheck("ping", healthz.Ping); err != nil {
		return err
	}
	// Ready once the caches have synced.
	if err := mgr.AddReadyzCheck("caches", func(req *http.Request) error {
		if !mgr.GetCache().WaitForCacheSync(req.Context()) {
			return fmt.Errorf("caches not synced")
		}
		return nil
	}); err != nil {
		return err
	}
	logger.Info("starting", "version", version.Version, "launcherImage", cfg.LauncherImage, "useEmulation", emulation.String(), "leaderElection", *leaderElect)
	return mgr.Start(ctrl.SetupSignalHandler())
}

// emulationFlag is --use-emulation: a bool, as it was, or auto. Alone it
// means true.
type emulationFlag struct{ cfg *controller.Config }

func (f *emulationFlag) String() string {
	switch {
	case f.cfg == nil:
		return "auto"
	case f.cfg.EmulationAuto:
		return "auto"
	}
	return strconv.FormatBool(f.cfg.UseEmulation)
}

func (f *emulationFlag) Set(v string) error {
	if v == "auto" {
		f.cfg.EmulationAuto, f.cfg.UseEmulation = true, false
		return nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return fmt.Errorf("emulation %q: want auto, true or false", v)
	}
	f.cfg.EmulationAuto, f.cfg.UseEmulation = false, b
	return nil
}

func (f *emulationFlag) IsBoolFlag() bool { return true }

// evictionFlag is --eviction-strategy.
type evictionFlag v1alpha1.EvictionStrategy

func (f *evictionFlag) String() string { return string(*f) }

func (f *evictionFlag) Set(s string) error {
	switch v1alpha1.EvictionStrategy(s) {
	case v1alpha1.EvictionStrategyLiveMigrate, v1alpha1.EvictionStrategyNone:
		*f = evictionFlag(s)
		return nil
	}
	return fmt.Errorf("%q: give LiveMigrate or None", s)
}
