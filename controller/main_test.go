package controller

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	"github.com/podvirt/podvirt/api/scheme"
	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/test/env/chart"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// The tests share one API server and one controller manager, started by
// TestMain. There is no kubelet and no node daemon: tests play both, by
// binding launcher pods, writing pod status, and writing the VMI's
// status.domain, through the same API calls those components make.
var (
	k8s      client.Client
	startErr error
	nsSeq    atomic.Int64
)

// testConfig is the controller's configuration in the tests: short
// back-offs so failure handling is quick to observe.
func testConfig() Config {
	cfg := DefaultConfig()
	cfg.RestartBackoff = 300 * time.Millisecond
	cfg.MaxRestartBackoff = 2 * time.Second
	cfg.BackoffResetAfter = time.Second
	cfg.VMWorkers, cfg.VMIWorkers = 4, 4
	cfg.Registerer = metrics.Registry // histogramCount reads it
	return cfg
}

func TestMain(m *testing.M) {
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	flag.Parse()
	if flag.Lookup("test.run").Value.String() == "^$" {
		// Benchmarks only (make bench): no test needs the server, and the
		// density benchmark should not share the CPU with it.
		return m.Run()
	}
	// VM snapshots take VolumeSnapshots.
	snapshotCRDs, err := chart.SnapshotCRDDir()
	if err != nil {
		startErr = err
		return m.Run()
	}
	srv, err := apiserver.Start(apiserver.Options{
		CRDDirs: []string{"../charts/podvirt/crds", snapshotCRDs},
		// VMs' L2 addresses come from their NetworkAttachmentDefinitions.
		CRDs: []*apiextensionsv1.CustomResourceDefinition{apiserver.NetworkAttachmentDefinitionCRD()},
	})
	if err != nil {
		startErr = err
		return m.Run()
	}
	defer srv.Stop()
	stop, err := startController(srv)
	if err != nil {
		startErr = err
		return m.Run()
	}
	// Stop the controller before the API server, or the server waits for
	// the controller's watches to end.
	defer stop()
	return m.Run()
}

// startController starts the controller manager and the stand-in kubelet
// against srv; the returned function stops both.
func startController(srv *apiserver.Server) (stop func(), err error) {
	scheme, err := scheme.New()
	if err != nil {
		return nil, err
	}
	logger := logr.Discard()
	if os.Getenv("PODVIRT_TEST_LOG") != "" {
		logger = logr.FromSlogHandler(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	ctrl.SetLogger(logger)
	mgr, err := ctrl.NewManager(srv.Config, ctrl.Options{
		Scheme:                 scheme,
		Cache:                  CacheOptions(),
		Metrics:                metricsserver.Options{BindAddress: "0"},
		HealthProbeBindAddress: "0",
	})
	if err != nil {
		return nil, err
	}
	if err := Setup(mgr, testConfig()); err != nil {
		return nil, err
	}
	k8s, err = client.New(srv.Config, client.Options{Scheme: scheme})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintf(os.Stderr, "controller manager: %v\n", err)
		}
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		kubelet(ctx)
	}()
	return func() { cancel(); <-done; <-done }, nil
}

// kubelet does the one thing of a kubelet the tests need all the time:
// a launcher pod that is deleted after it reached a node goes away once its
// containers have stopped (here: at once).
func kubelet(ctx context.Context) {
	for ctx.Err() == nil {
		pods := &corev1.PodList{}
		if err := k8s.List(ctx, pods, client.MatchingLabels{v1alpha1.AppLabel: v1alpha1.AppLauncher}); err == nil {
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp != nil && p.Spec.NodeName != "" {
					k8s.Delete(ctx, p, client.GracePeriodSeconds(0), client.Preconditions{UID: &p.UID})
				}
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func needServer(t *testing.T) {
	t.Helper()
	if startErr != nil {
		t.Fatal(startErr)
	}
}

// namespace makes a namespace for one test and, at its end, deletes what
// the test made in it (the API server has no namespace controller, so the
// namespace itself stays Terminating).
func namespace(t *testing.T) string {
	t.Helper()
	needServer(t)
	name := fmt.Sprintf("t%d-%s", nsSeq.Add(1), strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name())))
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
		k8s.DeleteAllOf(ctx, &v1alpha1.VirtualMachine{}, in)
		k8s.DeleteAllOf(ctx, &v1alpha1.VirtualMachineInstance{}, in)
		polltest.Eventually(t, 30*time.Second, "VMs and VMIs are gone", func() (bool, string) {
			vms, vmis := &v1alpha1.VirtualMachineList{}, &v1alpha1.VirtualMachineInstanceList{}
			if err := k8s.List(ctx, vms, in); err != nil {
				return false, err.Error()
			}
			if err := k8s.List(ctx, vmis, in); err != nil {
				return false, err.Error()
			}
			return len(vms.Items)+len(vmis.Items) == 0, fmt.Sprintf("%d VMs, %d VMIs left", len(vms.Items), len(vmis.Items))
		})
		k8s.DeleteAllOf(ctx, &corev1.Pod{}, in, client.GracePeriodSeconds(0))
		k8s.DeleteAllOf(ctx, &corev1.PersistentVolumeClaim{}, in)
		k8s.Delete(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}})
	})
	return name
}

const wait = 20 * time.Second

func getVM(t *testing.T, ns, name string) *v1alpha1.VirtualMachine {
	t.Helper()
	vm := &v1alpha1.VirtualMachine{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, vm); err != nil {
		t.Fatal(err)
	}
	return vm
}

// getVMI returns the VMI, or nil when there is none.
func getVMI(t *testing.T, ns, name string) *v1alpha1.VirtualMachineInstance {
	t.Helper()
	vmi := &v1alpha1.VirtualMachineInstance{}
	err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, vmi)
	if apierrors.IsNotFound(err) {
		return nil
	} else if err != nil {
		t.Fatal(err)
	}
	return vmi
}

// waitVMI waits for a VMI of that name whose UID is not old, in phase (any
// phase when empty), and returns it.
func waitVMI(t *testing.T, ns, name string, old types.UID, phase v1alpha1.VirtualMachineInstancePhase) *v1alpha1.VirtualMachineInstance {
	t.Helper()
	var vmi *v1alpha1.VirtualMachineInstance
	polltest.Eventually(t, wait, fmt.Sprintf("VMI %s/%s (not %q) is %q", ns, name, old, phase), func() (bool, string) {
		vmi = getVMI(t, ns, name)
		switch {
		case vmi == nil:
			return false, "no VMI"
		case vmi.UID == old:
			return false, fmt.Sprintf("still the old VMI, phase %s", vmi.Status.Phase)
		case phase != "" && vmi.Status.Phase != phase:
			return false, fmt.Sprintf("phase %q", vmi.Status.Phase)
		}
		return true, ""
	})
	return vmi
}

func waitNoVMI(t *testing.T, ns, name string) {
	t.Helper()
	polltest.Eventually(t, wait, "VMI "+name+" is gone", func() (bool, string) {
		if vmi := getVMI(t, ns, name); vmi != nil {
			return false, fmt.Sprintf("VMI %s in phase %s, deleting=%v", vmi.UID, vmi.Status.Phase, vmi.DeletionTimestamp != nil)
		}
		return true, ""
	})
}

func waitVMStatus(t *testing.T, ns, name string, want v1alpha1.VirtualMachinePrintableStatus) *v1alpha1.VirtualMachine {
	t.Helper()
	var vm *v1alpha1.VirtualMachine
	polltest.Eventually(t, wait, fmt.Sprintf("VM %s is %s", name, want), func() (bool, string) {
		vm = getVM(t, ns, name)
		return vm.Status.PrintableStatus == want, string(vm.Status.PrintableStatus)
	})
	return vm
}

// launcherPodOf waits for the VMI's launcher pod and returns it.
func launcherPodOf(t *testing.T, vmi *v1alpha1.VirtualMachineInstance) *corev1.Pod {
	t.Helper()
	pod := &corev1.Pod{}
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: launcherPodName(vmi)}
	polltest.Eventually(t, wait, "launcher pod "+key.String()+" exists", func() (bool, string) {
		err := k8s.Get(context.Background(), key, pod)
		return err == nil, fmt.Sprint(err)
	})
	return pod
}

// schedule binds the pod to node, as the scheduler does.
func schedule(t *testing.T, pod *corev1.Pod, node string) {
	t.Helper()
	binding := &corev1.Binding{
		ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace},
		Target:     corev1.ObjectReference{Kind: "Node", Name: node},
	}
	if err := k8s.SubResource("binding").Create(context.Background(), pod, binding); err != nil {
		t.Fatalf("bind pod %s to %s: %v", pod.Name, node, err)
	}
}

// setPodStatus writes the pod's phase and readiness, as the kubelet does.
func setPodStatus(t *testing.T, pod *corev1.Pod, phase corev1.PodPhase, ready bool, exitCode int32) {
	t.Helper()
	polltest.Eventually(t, wait, "pod status written", func() (bool, string) {
		cur := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), cur); err != nil {
			return false, err.Error()
		}
		now := metav1.Now()
		readyStatus := corev1.ConditionFalse
		if ready {
			readyStatus = corev1.ConditionTrue
		}
		cur.Status.Phase = phase
		cur.Status.Conditions = []corev1.PodCondition{
			{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
			{Type: corev1.PodReady, Status: readyStatus, LastTransitionTime: now},
		}
		state := corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}
		if phase == corev1.PodFailed || phase == corev1.PodSucceeded {
			state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: exitCode, Reason: "Error", StartedAt: now, FinishedAt: now}}
			if exitCode == 0 {
				state.Terminated.Reason = "Completed"
			}
		}
		cur.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: v1alpha1.LauncherContainerName, Image: cur.Spec.Containers[0].Image, Ready: ready, State: state}}
		err := k8s.Status().Update(context.Background(), cur)
		return err == nil, fmt.Sprint(err)
	})
}

// reportDomain writes status.domain, as the node daemon does.
func reportDomain(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, state v1alpha1.DomainState, ip string) {
	t.Helper()
	polltest.Eventually(t, wait, "domain status written", func() (bool, string) {
		cur := &v1alpha1.VirtualMachineInstance{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(vmi), cur); err != nil {
			return false, err.Error()
		}
		patch := client.MergeFrom(cur.DeepCopy())
		cur.Status.Domain = &v1alpha1.DomainStatus{State: state, LastTransitionTime: metav1.Now()}
		if ip != "" {
			cur.Status.Interfaces = []v1alpha1.VirtualMachineInstanceNetworkInterface{{Name: "default", IP: ip, IPs: []string{ip}, MAC: "02:00:00:00:00:01"}}
		}
		err := k8s.Status().Patch(context.Background(), cur, patch)
		return err == nil, fmt.Sprint(err)
	})
}

// runVMI takes a VMI through the node: its pod is scheduled and runs, and
// the node daemon reports the domain running. It returns the pod.
func runVMI(t *testing.T, vmi *v1alpha1.VirtualMachineInstance) *corev1.Pod {
	t.Helper()
	pod := launcherPodOf(t, vmi)
	schedule(t, pod, "node-a")
	setPodStatus(t, pod, corev1.PodRunning, true, 0)
	waitVMI(t, vmi.Namespace, vmi.Name, "", v1alpha1.Scheduled)
	reportDomain(t, vmi, v1alpha1.DomainRunning, "10.0.0.5")
	got := waitVMI(t, vmi.Namespace, vmi.Name, "", v1alpha1.Running)
	polltest.Eventually(t, wait, "VMI is Ready", func() (bool, string) {
		got = getVMI(t, vmi.Namespace, vmi.Name)
		return meta.IsStatusConditionTrue(got.Status.Conditions, ConditionReady), fmt.Sprint(got.Status.Conditions)
	})
	return pod
}

// events returns the notes of the events about the object named name in ns
// with the given reason.
func events(t *testing.T, ns, name, reason string) []string {
	t.Helper()
	list := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), list, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range list.Items {
		if e.Regarding.Name == name && e.Reason == reason {
			out = append(out, e.Note)
		}
	}
	return out
}

func waitEvent(t *testing.T, ns, name, reason string) string {
	t.Helper()
	var got []string
	polltest.Eventually(t, wait, fmt.Sprintf("a %s event about %s", reason, name), func() (bool, string) {
		got = events(t, ns, name, reason)
		return len(got) > 0, "none"
	})
	return got[0]
}
