// Package noderuntime proves the node runtime on a real cluster: the
// controller's launcher pod runs the launcher image unprivileged, the
// node daemon (the podvirt-handler binary) finds it through the kubelet's
// pod directory, starts the domain, and the VMI goes Running while the
// guest boots. Run with the other cluster tests (make e2e); needs root.
package noderuntime

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	storagev1 "k8s.io/api/storage/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/internal/testlog"
	"github.com/podvirt/podvirt/runtime/handler"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/images/components"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestVMIOnCluster: a VMI booting the test guest from a disk on a local
// PersistentVolume runs in an unprivileged launcher pod and goes Running;
// its guest prints the boot marker; deleting the VMI shuts it down.
func TestVMIOnCluster(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("the local cluster needs root (links, mounts, cgroups): run the tests as root")
	}
	ctrl.SetLogger(logr.Discard())
	ctx, cancel := context.WithTimeout(context.Background(), 25*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "podvirt-noderuntime-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	c, err := cluster.New(cluster.Config{
		Dir:           filepath.Join(dir, "cluster"),
		Name:          "pvhd",
		NodeIP:        net.IPv4(10, 250, 2, 1),
		PodSubnet:     "10.244.2.0/24",
		ServiceSubnet: "10.0.2.0/24",
		BasePort:      8443,
		KubeProxy:     false,
		Progress:      testlog.Writer(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Down(context.Background()); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		if left := c.Leftovers(); len(left) > 0 {
			t.Errorf("after Down, still present: %v", left)
		}
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	kubeletRoot := filepath.Join(dir, "cluster", "kubelet")

	start := time.Now()
	if _, err := components.BuildAndImport(ctx, c.ContainerdSockets(), components.Options{Progress: testlog.Writer(t)}, components.Launcher); err != nil {
		t.Fatal(err)
	}
	t.Logf("launcher image built and imported in %s", time.Since(start).Round(time.Second))

	restCfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	scheme, err := scheme.New()
	if err != nil {
		t.Fatal(err)
	}
	k8s, err := client.New(restCfg, client.Options{Scheme: scheme})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := envtest.InstallCRDs(restCfg, envtest.CRDInstallOptions{Paths: []string{"../../../charts/podvirt/crds"}, ErrorIfPathMissing: true}); err != nil {
		t.Fatalf("installing podvirt's CRDs: %v", err)
	}
	startController(ctx, t, restCfg)
	startHandler(ctx, t, dir, c, kubeletRoot)

	// The disk: the test guest as a raw disk.img on a local PV.
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	diskDir := filepath.Join(dir, "disk-root")
	if err := os.MkdirAll(diskDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-O", "raw", art.Disk, filepath.Join(diskDir, v1.DiskImageName)).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img convert: %v: %s", err, out)
	}
	const ns = "default"
	createDisk(ctx, t, k8s, c.NodeName(), diskDir)

	grace := int64(60)
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guest"},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory:  v1.Memory{Guest: resource.MustParse("128Mi")},
				Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}},
			},
			Volumes: []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{
				PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: "guest-root"},
			}}},
			TerminationGracePeriodSeconds: &grace,
		},
	}
	start = time.Now()
	if err := k8s.Create(ctx, vmi); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = k8s.Delete(context.Background(), vmi)
	})

	// The VMI runs.
	var pod corev1.Pod
	var last string
	deadline := time.Now().Add(6 * time.Minute)
	for {
		cur := &v1.VirtualMachineInstance{}
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(vmi), cur); err != nil {
			t.Fatal(err)
		}
		state := "none"
		if cur.Status.Domain != nil {
			state = string(cur.Status.Domain.State) + " " + cur.Status.Domain.Message
		}
		last = fmt.Sprintf("phase %s, domain %s, launcher pod %q, reason %s %s", cur.Status.Phase, state, cur.Status.LauncherPod, cur.Status.Reason, cur.Status.Message)
		if cur.Status.LauncherPod != "" {
			_ = k8s.Get(ctx, types.NamespacedName{Namespace: ns, Name: cur.Status.LauncherPod}, &pod)
			last += fmt.Sprintf(", pod %s %s", pod.Status.Phase, podProblem(&pod))
		}
		if cur.Status.Phase == v1.Running {
			vmi = cur
			break
		}
		if cur.Status.Phase.IsFinal() || time.Now().After(deadline) {
			t.Fatalf("VMI not Running: %s\n%s", last, launcherLog(ctx, restCfg, ns, cur.Status.LauncherPod))
		}
		time.Sleep(500 * time.Millisecond)
	}
	t.Logf("VMI Running %s after it was created", time.Since(start).Round(time.Millisecond))

	// Unprivileged, with its devices from the device plugin.
	sc := pod.Spec.Containers[0].SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Errorf("launcher container security context %+v, want privileged false", sc)
	}
	if _, ok := pod.Spec.Containers[0].Resources.Limits[v1.TunDevice]; !ok {
		t.Errorf("launcher pod does not request %s", v1.TunDevice)
	}

	console := filepath.Join(kubeletRoot, "pods", string(pod.UID), "volumes", "kubernetes.io~empty-dir", v1.PrivateVolumeName, "console.log")
	bctx, bcancel := context.WithTimeout(ctx, 5*time.Minute)
	defer bcancel()
	if _, err := guest.WaitForOutput(bctx, console, 0, guest.BootMarker); err != nil {
		b, _ := os.ReadFile(console)
		t.Fatalf("no boot marker in %s: %v\nconsole:\n%s\n%s", console, err, guest.Tail(b, 2000), launcherLog(ctx, restCfg, ns, pod.Name))
	}
	t.Logf("boot marker %s after the VMI was created", time.Since(start).Round(time.Millisecond))

	// Deleting the VMI stops the pod; the launcher shuts the guest down.
	if err := k8s.Delete(ctx, vmi); err != nil {
		t.Fatal(err)
	}
	deadline = time.Now().Add(3 * time.Minute)
	for {
		err := k8s.Get(ctx, client.ObjectKeyFromObject(vmi), &v1.VirtualMachineInstance{})
		if client.IgnoreNotFound(err) != nil {
			t.Fatal(err)
		}
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("VMI not gone 3 minutes after its deletion\n%s", launcherLog(ctx, restCfg, ns, pod.Name))
		}
		time.Sleep(500 * time.Millisecond)
	}
	// The guest powered off (ACPI) before the pod went: the node daemon
	// saw the domain shut down.
	evs := &eventsv1.EventList{}
	if err := k8s.List(ctx, evs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var reasons []string
	for _, e := range evs.Items {
		if e.Regarding.UID == vmi.UID && e.ReportingController == "podvirt-handler" {
			reasons = append(reasons, e.Reason)
		}
	}
	if !slices.Contains(reasons, handler.ReasonStarted) || !slices.Contains(reasons, handler.ReasonShutdown) {
		t.Errorf("podvirt-handler's events on the VMI: %v, want %s and %s", reasons, handler.ReasonStarted, handler.ReasonShutdown)
	}
}

func podProblem(p *corev1.Pod) string {
	var parts []string
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			parts = append(parts, string(c.Type)+": "+c.Message)
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			parts = append(parts, cs.Name+" waiting: "+w.Reason+" "+w.Message)
		}
		if tm := cs.State.Terminated; tm != nil {
			parts = append(parts, fmt.Sprintf("%s terminated: %d %s %s", cs.Name, tm.ExitCode, tm.Reason, tm.Message))
		}
	}
	return strings.Join(parts, "; ")
}

// launcherLog is the launcher container's log, for failure messages.
func launcherLog(ctx context.Context, cfg *rest.Config, ns, pod string) string {
	if pod == "" {
		return "(no launcher pod)"
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err.Error()
	}
	lines := int64(80)
	b, err := cs.CoreV1().Pods(ns).GetLogs(pod, &corev1.PodLogOptions{Container: v1.LauncherContainerName, TailLines: &lines}).DoRaw(ctx)
	if err != nil {
		return fmt.Sprintf("(launcher log: %v)", err)
	}
	return "launcher log:\n" + string(b)
}

// startController runs the VM/VMI controller in-process, for nodes
// without KVM (emulation), until the test ends.
func startController(ctx context.Context, t *testing.T, cfg *rest.Config) {
	t.Helper()
	scheme, err := scheme.New()
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: scheme, Cache: controller.CacheOptions(),
		Metrics: metricsserver.Options{BindAddress: "0"}, HealthProbeBindAddress: "0",
	})
	if err != nil {
		t.Fatal(err)
	}
	ccfg := controller.DefaultConfig()
	ccfg.LauncherImage = components.Ref(components.Launcher)
	ccfg.UseEmulation = true
	if err := controller.Setup(mgr, ccfg); err != nil {
		t.Fatal(err)
	}
	mctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := mgr.Start(mctx); err != nil {
			t.Errorf("controller: %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done })
}

// startHandler builds and runs the podvirt-handler binary for node, as
// the DaemonSet would, until the test ends.
func startHandler(ctx context.Context, t *testing.T, dir string, c *cluster.Cluster, kubeletRoot string) {
	t.Helper()
	bin := filepath.Join(dir, "bin")
	build := exec.CommandContext(ctx, "go", "build", "-o", bin+"/", "./cmd/podvirt-handler", "./cmd/podvirt-l2")
	build.Dir = "../../.."
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building podvirt-handler: %v: %s", err, out)
	}
	var log bytes.Buffer
	cmd := exec.Command(filepath.Join(bin, "podvirt-handler"),
		"--node-name", c.NodeName(), "--kubeconfig", c.Kubeconfig(), "--kubelet-root", kubeletRoot,
		"--cni-bin-dir", c.CNIBinDir(), "--cni-binary", filepath.Join(bin, "podvirt-l2"),
		"--cni-results-dir", filepath.Join(dir, "cni-results"),
		// What the node's kubelet sees as its hard-coded device-plugins
		// dir; this handler runs on the host, outside the node's mount
		// namespace.
		"--device-plugin-dir", c.DevicePluginDir(),
		"--metrics-address", "127.0.0.1:0", "--health-address", "127.0.0.1:0")
	cmd.Stdout, cmd.Stderr = &log, &log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(os.Interrupt)
		select {
		case <-exited:
		case <-time.After(30 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
		if t.Failed() {
			t.Logf("podvirt-handler log:\n%s", tail(log.Bytes(), 6000))
		}
	})
}

func tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}

// createDisk makes a local PersistentVolume on node holding dir and the
// PVC guest-root bound to it.
func createDisk(ctx context.Context, t *testing.T, k8s client.Client, node, dir string) {
	t.Helper()
	class := "podvirt-test-local"
	mode := corev1.PersistentVolumeFilesystem
	objs := []client.Object{
		&storagev1.StorageClass{
			ObjectMeta:        metav1.ObjectMeta{Name: class},
			Provisioner:       "kubernetes.io/no-provisioner",
			VolumeBindingMode: ptr(storagev1.VolumeBindingWaitForFirstConsumer),
		},
		&corev1.PersistentVolume{
			ObjectMeta: metav1.ObjectMeta{Name: "guest-root"},
			Spec: corev1.PersistentVolumeSpec{
				Capacity:                      corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")},
				AccessModes:                   []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				PersistentVolumeReclaimPolicy: corev1.PersistentVolumeReclaimRetain,
				StorageClassName:              class,
				VolumeMode:                    &mode,
				PersistentVolumeSource:        corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}},
				NodeAffinity: &corev1.VolumeNodeAffinity{Required: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "kubernetes.io/hostname", Operator: corev1.NodeSelectorOpIn, Values: []string{node}}},
				}}}},
			},
		},
		&corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "guest-root"},
			Spec: corev1.PersistentVolumeClaimSpec{
				AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
				StorageClassName: &class,
				VolumeMode:       &mode,
				Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("1Gi")}},
			},
		},
	}
	for _, o := range objs {
		if err := k8s.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
	}
}

func ptr[T any](v T) *T { return &v }
