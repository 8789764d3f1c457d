package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// The tests share one real API server (test/harness/apiserver, RBAC on). Most run
// podvirtctl against VMs and VMIs they write themselves, with no
// controller, so they can check exactly what a command changed. Tests in
// controlledNS also run the real controller (its cache limited to that
// namespace) and play kubelet and node daemon, to check the controller
// does what the command asked.
var (
	k8s        client.Client
	kubeconfig string
	startErr   error
	nsSeq      atomic.Int64
)

const controlledNS = "with-controller"

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	srv, err := apiserver.Start(apiserver.Options{CRDDirs: []string{"../../../../charts/podvirt/crds"}})
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer srv.Stop()
	dir, err := os.MkdirTemp("", "podvirtctl-test-")
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer os.RemoveAll(dir)
	if kubeconfig, err = writeKubeconfig(srv.Config, filepath.Join(dir, "kubeconfig")); err != nil {
		startErr = err
		return m.Run()
	}
	stop, err := startController(srv.Config)
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer stop()
	return m.Run()
}

// writeKubeconfig writes cfg (the server's admin) as a kubeconfig file,
// the way users reach podvirtctl.
func writeKubeconfig(cfg *rest.Config, path string) (string, error) {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "admin", Namespace: "default"}
	kc.CurrentContext = "test"
	return path, clientcmd.WriteToFile(*kc, path)
}

func startController(cfg *rest.Config) (func(), error) {
	scheme, err := scheme.New()
	if err != nil {
		return nil, err
	}
	ctrl.SetLogger(logr.Discard())
	cacheOpts := controller.CacheOptions()
	cacheOpts.DefaultNamespaces = map[string]cache.Config{controlledNS: {}}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  cacheOpts,
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	ccfg := controller.DefaultConfig()
	ccfg.RestartBackoff, ccfg.MaxRestartBackoff = 300*time.Millisecond, 2*time.Second
	if err := controller.Setup(mgr, ccfg); err != nil {
		return nil, err
	}
	if k8s, err = client.New(cfg, client.Options{Scheme: scheme}); err != nil {
		return nil, err
	}
	if err := k8s.Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: controlledNS}}); err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "controller manager: %v\n", err)
		}
	}()
	return func() { cancel(); <-done }, nil
}

// namespace makes a namespace for one test; its objects are deleted at
// the end (finalizers removed: no controller runs there).
func namespace(t *testing.T) string {
	t.Helper()
	if startErr != nil {
		t.Fatal(startErr)
	}
	name := fmt.Sprintf("ctl%d", nsSeq.Add(1))
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		in := client.InNamespace(name)
		vmis := &v1.VirtualMachineInstanceList{}
		_ = k8s.List(ctx, vmis, in)
		for i := range vmis.Items {
			vmis.Items[i].Finalizers = nil
			_ = k8s.Update(ctx, &vmis.Items[i])
		}
		_ = k8s.DeleteAllOf(ctx, &v1.VirtualMachineInstance{}, in)
		_ = k8s.DeleteAllOf(ctx, &v1.VirtualMachine{}, in)
		_ = k8s.DeleteAllOf(ctx, &corev1.Pod{}, in, client.GracePeriodSeconds(0))
		_ = k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	return name
}

// podvirtctl runs the command line in ns as the kubeconfig's admin (extra
// flags such as --as come first in args) and returns stdout and the error.
func podvirtctl(t *testing.T, ns string, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	cmd := NewRootCommand("podvirtctl", streams)
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig, "-n", ns}, args...))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

func testVM(ns, name string, strategy v1.RunStrategy) *v1.VirtualMachine {
	return &v1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1.VirtualMachineSpec{
			RunStrategy: strategy,
			Template: v1.VirtualMachineInstanceTemplateSpec{
				Spec: v1.VirtualMachineInstanceSpec{
					Domain: v1.DomainSpec{
						Memory:  v1.Memory{Guest: resource.MustParse("64Mi")},
						Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}},
					},
					Volumes: []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/guest:1"}}}},
				},
			},
		},
	}
}

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

func getVM(t *testing.T, ns, name string) *v1.VirtualMachine {
	t.Helper()
	vm := &v1.VirtualMachine{}
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// getVMI returns the VMI, nil when there is none.
func getVMI(t *testing.T, ns, name string) *v1.VirtualMachineInstance {
	t.Helper()
	vmi := &v1.VirtualMachineInstance{}
	err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, vmi)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return vmi
}
