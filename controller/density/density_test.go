// Package density measures how fast podvirt-controller turns many VMs into
// launcher pods. It is a benchmark, not a test (`make bench`):
//
//	go test -run '^$' -bench Density -benchtime 1x ./controller/density/
//
// It starts a real etcd + kube-apiserver (no kubelet: the pods only need to
// exist), runs the podvirt-controller binary against it as its own process,
// creates PODVIRT_DENSITY_VMS (default 1000) VMs, and measures the time until
// every launcher pod exists and the controller's peak RSS. KubeVirt's density
// CI budget is 100 VMIs running within 300 s; the ratio compares seconds per
// VM.
package density_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	"github.com/podvirt/podvirt/api/scheme"
	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// KubeVirt's density CI budget: 100 VMIs within 300 s.
const (
	kubevirtVMIs    = 100
	kubevirtSeconds = 300.0
)

func BenchmarkDensity(b *testing.B) {
	vms := 1000
	if s := os.Getenv("PODVIRT_DENSITY_VMS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			b.Fatalf("PODVIRT_DENSITY_VMS=%q: want a positive number", s)
		}
		vms = n
	}
	log.SetLogger(logr.Discard())
	srv, err := apiserver.Start(apiserver.Options{CRDDirs: []string{"../../charts/podvirt/crds"}})
	if err != nil {
		b.Fatal(err)
	}
	defer srv.Stop()
	dir := b.TempDir()
	bin := buildController(b, dir)
	kubeconfig := writeKubeconfig(b, srv.Config, filepath.Join(dir, "kubeconfig"))

	scheme, err := scheme.New()
	if err != nil {
		b.Fatal(err)
	}
	cfg := rest.CopyConfig(srv.Config)
	cfg.QPS, cfg.Burst = 2000, 4000
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		b.Fatal(err)
	}
	ctx := context.Background()

	for i := 0; i < b.N; i++ {
		ns := fmt.Sprintf("density-%d", i)
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			b.Fatal(err)
		}
		ctrlProc := startController(b, bin, kubeconfig, dir)

		b.ResetTimer()
		start := time.Now()
		createVMs(b, c, ns, vms)
		created := time.Since(start)
		podsAt := waitForPods(b, c, ns, vms, start)
		b.StopTimer()

		peak := peakRSS(b, ctrlProc.cmd.Process.Pid)
		cpu := cpuSeconds(b, ctrlProc.cmd.Process.Pid)
		reconciles := scrape(b, ctrlProc.metrics)
		ctrlProc.stop()

		perVM := podsAt.Seconds() / float64(vms)
		budget := kubevirtSeconds / kubevirtVMIs
		b.ReportMetric(podsAt.Seconds(), "s-to-all-pods")
		b.ReportMetric(perVM*1000, "ms/VM")
		b.ReportMetric(perVM/budget, "ratio-to-kubevirt-budget")
		b.ReportMetric(float64(peak)/(1<<20), "MiB-peak-RSS")
		b.ReportMetric(cpu, "controller-CPU-s")
		b.Logf("%d VMs created in %.1fs; all %d launcher pods existed after %.1fs (%.1f ms/VM); controller peak RSS %.0f MiB, %.1f CPU-seconds",
			vms, created.Seconds(), vms, podsAt.Seconds(), perVM*1000, float64(peak)/(1<<20), cpu)
		b.Logf("KubeVirt density CI budget: %d VMIs in %.0fs = %.1f s/VMI; podvirt %.4f s/VM: ratio %.4f (lower is better)",
			kubevirtVMIs, kubevirtSeconds, budget, perVM, perVM/budget)
		b.Logf("controller metrics: %s", reconciles)
	}
}

// buildController builds cmd/podvirt-controller into dir.
func buildController(b *testing.B, dir string) string {
	b.Helper()
	bin := filepath.Join(dir, "podvirt-controller")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/podvirt/podvirt/cmd/podvirt-controller")
	if out, err := cmd.CombinedOutput(); err != nil {
		b.Fatalf("go build podvirt-controller: %v\n%s", err, out)
	}
	return bin
}

func writeKubeconfig(b *testing.B, cfg *rest.Config, path string) string {
	b.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, Token: cfg.BearerToken}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		b.Fatal(err)
	}
	return path
}

type controllerProcess struct {
	cmd     *exec.Cmd
	metrics string
	done    chan error
}

func (p *controllerProcess) stop() {
	p.cmd.Process.Signal(os.Interrupt)
	select {
	case <-p.done:
	case <-time.After(15 * time.Second):
		p.cmd.Process.Kill()
		<-p.done
	}
}

func freePort(b *testing.B) string {
	b.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startController runs the controller binary as the Deployment would, with
// leader election, and waits until it is ready.
func startController(b *testing.B, bin, kubeconfig, dir string) *controllerProcess {
	b.Helper()
	metricsAddr, probeAddr := freePort(b), freePort(b)
	logFile, err := os.Create(filepath.Join(dir, "controller.log"))
	if err != nil {
		b.Fatal(err)
	}
	cmd := exec.Command(bin,
		"--kubeconfig", kubeconfig,
		"--leader-elect=true", "--leader-election-namespace=default",
		"--metrics-bind-address", metricsAddr,
		"--health-probe-bind-address", probeAddr,
	)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	p := &controllerProcess{cmd: cmd, metrics: "http://" + metricsAddr + "/metrics", done: make(chan error, 1)}
	go func() { p.done <- cmd.Wait(); logFile.Close() }()
	b.Cleanup(p.stopIfRunning)
	deadline := time.Now().Add(60 * time.Second)
	for {
		resp, err := http.Get("http://" + probeAddr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return p
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "controller.log"))
			b.Fatalf("controller not ready after 60s: %v\n%s", err, log)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func (p *controllerProcess) stopIfRunning() {
	if p.cmd.ProcessState == nil {
		p.stop()
	}
}

// densityVM is the VM the benchmark creates many of: a containerDisk and
// the pod network, as KubeVirt's density test VMIs.
func densityVM(ns string, i int) *v1alpha1.VirtualMachine {
	name := fmt.Sprintf("vm-%04d", i)
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.VirtualMachineSpec{
			RunStrategy: v1alpha1.RunStrategyAlways,
			Template: v1alpha1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"density": "true"}},
				Spec: v1alpha1.VirtualMachineInstanceSpec{
					Domain: v1alpha1.DomainSpec{
						Memory: v1alpha1.Memory{Guest: resource.MustParse("128Mi")},
						Devices: v1alpha1.Devices{
							Disks:      []v1alpha1.Disk{{Name: "root"}},
							Interfaces: []v1alpha1.Interface{{Name: "default"}},
						},
					},
					Volumes:  []v1alpha1.Volume{{Name: "root", VolumeSource: v1alpha1.VolumeSource{ContainerDisk: &v1alpha1.ContainerDiskSource{Image: "podvirt.local/guest:1"}}}},
					Networks: []v1alpha1.Network{{Name: "default", NetworkSource: v1alpha1.NetworkSource{Pod: &v1alpha1.PodNetwork{}}}},
				},
			},
		},
	}
}

func createVMs(b *testing.B, c client.Client, ns string, n int) {
	b.Helper()
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := c.Create(context.Background(), densityVM(ns, i)); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		b.Fatal(err)
	}
}

// waitForPods polls until n launcher pods exist in ns and returns the time
// since start.
func waitForPods(b *testing.B, c client.Client, ns string, n int, start time.Time) time.Duration {
	b.Helper()
	deadline := start.Add(30 * time.Minute)
	for {
		pods := &metav1.PartialObjectMetadataList{}
		pods.SetGroupVersionKind(corev1.SchemeGroupVersion.WithKind("PodList"))
		if err := c.List(context.Background(), pods, client.InNamespace(ns), client.MatchingLabels{v1alpha1.AppLabel: v1alpha1.AppLauncher}); err != nil {
			b.Fatal(err)
		}
		if len(pods.Items) >= n {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d launcher pods after 30 minutes", len(pods.Items), n)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// peakRSS is the process's high-water resident set size (VmHWM), in bytes.
func peakRSS(b *testing.B, pid int) int64 {
	b.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		if v, ok := strings.CutPrefix(s.Text(), "VmHWM:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatal(err)
			}
			return kb << 10
		}
	}
	b.Fatal("no VmHWM in /proc/pid/status")
	return 0
}

// cpuSeconds is the CPU time (user + system) the process has used.
func cpuSeconds(b *testing.B, pid int) float64 {
	b.Helper()
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name (which ends with ')'): utime and
	// stime are the 12th and 13th.
	fields := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
	utime, err1 := strconv.ParseFloat(fields[11], 64)
	stime, err2 := strconv.ParseFloat(fields[12], 64)
	if err1 != nil || err2 != nil {
		b.Fatalf("parse /proc/%d/stat: %v %v", pid, err1, err2)
	}
	const clockTicks = 100 // USER_HZ on Linux
	return (utime + stime) / clockTicks
}

// scrape returns the controller's reconcile counters from /metrics.
func scrape(b *testing.B, url string) string {
	b.Helper()
	resp, err := http.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		b.Fatal(err)
	}
	var out []string
	for line := range strings.Lines(string(body)) {
		if strings.HasPrefix(line, "controller_runtime_reconcile_total{") && !strings.HasSuffix(strings.TrimSpace(line), " 0") ||
			strings.HasPrefix(line, "controller_runtime_reconcile_errors_total{") ||
			strings.HasPrefix(line, "podvirt_launcher_pods_created_total") {
			out = append(out, strings.TrimSpace(line))
		}
	}
	return strings.Join(out, "; ")
}
