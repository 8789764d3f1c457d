// Command podvirt-csi is the CSI driver disk.podvirt.io: VM disks on the
// node, empty or imported from registries and HTTP into a per-node cache,
// as qcow2 overlays or copies, with snapshots, clones and expansion.
//
// One runs on every node (DaemonSet) next to external-provisioner
// (--node-deployment --extra-create-metadata), csi-resizer and
// csi-snapshotter. It serves the CSI services on --endpoint, announces
// itself to the kubelet on --registration-socket (there is no
// node-driver-registrar), and Prometheus metrics on --metrics-address.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podvirt/podvirt/cmd/internal/restconfig"
	"github.com/podvirt/podvirt/cmd/internal/version"
	uploadcontract "github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/csi/cluster"
	"github.com/podvirt/podvirt/csi/driver"
	"github.com/podvirt/podvirt/csi/egress"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/registration"
	"github.com/podvirt/podvirt/csi/upload"
)

func main() {
	if version.Asked(os.Stdout, "podvirt-csi", os.Args[1:]) {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	if len(os.Args) > 1 && os.Args[1] == uploadcontract.Command {
		err = serveUpload(ctx, os.Args[2:])
	} else {
		err = run(ctx, os.Args[1:])
	}
	if errors.Is(err, flag.ErrHelp) {
		return
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-csi: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("podvirt-csi", flag.ContinueOnError)
	var (
		endpoint        = fs.String("endpoint", "unix:///csi/csi.sock", "CSI socket the sidecars and the kubelet use")
		nodeID          = fs.String("node-id", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME)")
		stateDir        = fs.String("state-dir", "/var/lib/podvirt/csi", "volumes, snapshots, the image cache and the state file")
		cacheSize       = fs.String("cache-size", "20Gi", "size cap of the image cache; unused images are evicted beyond it")
		maxVirtual      = fs.String("max-virtual-size", "4Ti", "largest virtual size an imported image may have; imports stop when they write more")
		reserve         = fs.String("free-space-reserve", "2Gi", "free space imports leave on the state directory's file system (unused cached images are evicted first); 0 disables")
		importTimeout   = fs.Duration("import-timeout", 2*time.Hour, "longest one import may take, which also bounds the CPU a hostile image can cost; 0 disables")
		regSocket       = fs.String("registration-socket", "/registration/"+driver.Name+"-reg.sock", "kubelet plugin-registration socket (in the kubelet's plugins_registry directory)")
		kubeletEndpoint = fs.String("kubelet-endpoint", "/var/lib/kubelet/plugins/"+driver.Name+"/csi.sock", "the CSI socket's path as the kubelet sees it, announced at registration")
		metricsAddr     = fs.String("metrics-address", ":9811", "address of the Prometheus /metrics endpoint; empty disables it")
		kubeconfig      = fs.String("kubeconfig", "", "kubeconfig file; empty means in-cluster")
		podCIDRs        = fs.String("pod-cidrs", "", "the cluster's pod CIDRs (comma separated): imports may not reach them unless the StorageClass sets allowPrivateSources")
		serviceCIDRs    = fs.String("service-cidrs", "", "the cluster's Service CIDRs (comma separated), refused like --pod-cidrs")
		verbose         = fs.Bool("v", false, "debug logging")
	)
	if err := fs.Parse(args); err != nil {
		return err
	}
	level := slog.LevelInfo
	if *verbose {
		level = slog.LevelDebug
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
	slog.SetDefault(log)

	size, err := resource.ParseQuantity(*cacheSize)
	if err != nil || size.Value() <= 0 {
		return fmt.Errorf("--cache-size %q: give a positive quantity such as 20Gi", *cacheSize)
	}
	maxVirtualSize, err := resource.ParseQuantity(*maxVirtual)
	if err != nil || maxVirtualSize.Value() <= 0 {
		return fmt.Errorf("--max-virtual-size %q: give a positive quantity such as 4Ti", *maxVirtual)
	}
	freeReserve, err := resource.ParseQuantity(*reserve)
	if err != nil || freeReserve.Value() < 0 {
		return fmt.Errorf("--free-space-reserve %q: give a quantity such as 2Gi, or 0", *reserve)
	}
	if *importTimeout < 0 {
		return fmt.Errorf("--import-timeout %s: give a positive duration such as 2h, or 0", *importTimeout)
	}
	pods, err := egress.ParseCIDRs(*podCIDRs)
	if err != nil {
		return fmt.Errorf("--pod-cidrs: %w", err)
	}
	services, err := egress.ParseCIDRs(*serviceCIDRs)
	if err != nil {
		return fmt.Errorf("--service-cidrs: %w", err)
	}
	if len(pods) == 0 || len(services) == 0 {
		log.Warn("no --pod-cidrs or --service-cidrs: imports are kept from loopback and link-local addresses only, not from the cluster's pods and Services")
	}
	cfg, err := restconfig.Load(*kubeconfig)
	if err != nil {
		return err
	}
	kube, err := cluster.New(cfg, driver.Name, *nodeID)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	defer kube.Close()

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	if err := os.MkdirAll(*stateDir, 0o755); err != nil {
		return fmt.Errorf("--state-dir: %w", err)
	}
	cache, err := importer.NewCacheWithOptions(filepath.Join(*stateDir, "cache"), size.Value(), reg,
		importer.Options{Logger: log, PodCIDRs: pods, ServiceCIDRs: services, FreeSpaceReserve: freeReserve.Value(), ImportTimeout: *importTimeout,
			Limits: limits(maxVirtualSize.Value())})
	if err != nil {
		return fmt.Errorf("image cache: %w", err)
	}
	d, err := driver.New(driver.Options{
		NodeID:   *nodeID,
		StateDir: *stateDir,
		Cache:    cache,
		Cluster:  kube,
		Version:  version.Version,
		Log:      log,
	})
	if err != nil {
		return err
	}
	defer d.Close()
	srv, err := d.Listen(*endpoint, reg)
	if err != nil {
		return err
	}
	defer srv.Stop()
	regSrv, err := registration.Listen(*regSocket, driver.Name, *kubeletEndpoint, log)
	if err != nil {
		return err
	}
	defer regSrv.Stop()

	errc := make(chan error, 3)
	go func() { errc <- srv.Serve() }()
	go func() { errc <- regSrv.Serve() }()
	if *metricsAddr != "" {
		lis, err := net.Listen("tcp", *metricsAddr)
		if err != nil {
			return fmt.Errorf("--metrics-address: %w", err)
		}
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
		mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, "ok") })
		hs := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
		go func() {
			if err := hs.Serve(lis); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("metrics server: %w", err)
			}
		}()
		defer hs.Close()
		log.Info("serving metrics", "address", lis.Addr().String())
	}
	log.Info("podvirt-csi started", "version", version.Version, "node", *nodeID, "endpoint", *endpoint,
		"registration", *regSocket, "kubeletEndpoint", *kubeletEndpoint, "stateDir", *stateDir, "cacheSize", size.String())
	select {
	case <-ctx.Done():
		log.Info("stopping")
		return nil
	case err := <-errc:
		return err
	}
}

// limits are the default image limits with the node's maximum virtual size.
func limits(maxVirtualSize int64) image.Limits {
	l := image.DefaultLimits
	l.MaxVirtualSize = maxVirtualSize
	return l
}

// serveUpload runs an upload pod's server (podvirtctl image-upload): the
// controller starts this image with the upload-server subcommand.
func serveUpload(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("podvirt-csi "+uploadcontract.Command, flag.ContinueOnError)
	dir := fs.String("dir", uploadcontract.Dir, "the CSI inline volume the bytes go to")
	length := fs.Int64("length", 0, "the upload's length in bytes (the claim's "+uploadcontract.SizeAnnotation+")")
	address := fs.String("address", fmt.Sprintf(":%d", uploadcontract.Port), "address to serve the upload protocol on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if *length <= 0 {
		return fmt.Errorf("--length %d: give the upload's length in bytes", *length)
	}
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv := &http.Server{Addr: *address, Handler: (&upload.Server{Dir: *dir, Length: *length, Log: log}).Handler(), ReadHeaderTimeout: 30 * time.Second}
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	log.Info("serving an upload", "address", *address, "dir", *dir, "length", *length)
	if err := srv.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
