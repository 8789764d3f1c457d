package handler

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/controller"
	"github.com/podvirt/podvirt/internal/polltest"
	"github.com/podvirt/podvirt/runtime/cmdclient"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/test/images/guest"
)

// bootTimeout bounds a TCG boot on a loaded 2-core machine.
const bootTimeout = 4 * time.Minute

// newVMI creates a VMI booting the test guest from a containerDisk volume.
func newVMI(t *testing.T, ns, name string) *v1.VirtualMachineInstance {
	t.Helper()
	return newVMIWith(t, ns, name, nil)
}

// newVMIWith is newVMI with edit applied before the VMI is created.
func newVMIWith(t *testing.T, ns, name string, edit func(*v1.VirtualMachineInstance)) *v1.VirtualMachineInstance {
	t.Helper()
	grace := int64(60)
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory:  v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{Disks: []v1.Disk{{Name: "root"}}},
			},
			Volumes:                       []v1.Volume{{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}}},
			TerminationGracePeriodSeconds: &grace,
		},
	}
	if edit != nil {
		edit(vmi)
	}
	if err := k8s.Create(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	return vmi
}

func getVMI(t *testing.T, ns, name string) *v1.VirtualMachineInstance {
	t.Helper()
	vmi := &v1.VirtualMachineInstance{}
	if err := k8s.Get(context.Background(), types.NamespacedName{Namespace: ns, Name: name}, vmi); err != nil {
		t.Fatal(err)
	}
	return vmi
}

// runPod plays the scheduler and the kubelet for vmi's launcher pod: it
// binds the pod the controller made to testNode and reports it running
// and ready.
func runPod(t *testing.T, vmi *v1.VirtualMachineInstance) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod := &corev1.Pod{}
	polltest.Eventually(t, 30*time.Second, "the controller made the launcher pod", func() (bool, string) {
		pods := &corev1.PodList{}
		if err := k8s.List(ctx, pods, client.InNamespace(vmi.Namespace), client.MatchingLabels{v1.CreatedByLabel: string(getVMI(t, vmi.Namespace, vmi.Name).UID)}); err != nil {
			return false, err.Error()
		}
		if len(pods.Items) != 1 {
			return false, fmt.Sprintf("%d pods", len(pods.Items))
		}
		*pod = pods.Items[0]
		return true, ""
	})
	binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name, Namespace: pod.Namespace}, Target: corev1.ObjectReference{Kind: "Node", Name: testNode}}
	if err := k8s.SubResource("binding").Create(ctx, pod, binding); err != nil {
		t.Fatal(err)
	}
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		t.Fatal(err)
	}
	now := metav1.Now()
	pod.Status.Phase = corev1.PodRunning
	pod.Status.Conditions = []corev1.PodCondition{
		{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
		{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
	}
	pod.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: v1.LauncherContainerName, Ready: true, State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
	if err := k8s.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}
	return pod
}

// launcherProc is a launcher process standing in for a launcher pod's
// container: it runs as PID 1 of its own PID namespace, so killing it
// takes libvirtd and QEMU with it, as the container runtime would.
type launcherProc struct {
	cmd    *exec.Cmd
	pid    int // the launcher's host PID (the namespace's init)
	runDir string
	socket string
	exited chan struct{}
	out    *bytes.Buffer
}

// startLauncher runs podvirt-launcher for vmi in pod the way the launcher
// pod does (no --vmi: it waits for the handler), with the pod's socket
// emptyDir where the kubelet keeps it and the test guest as the
// containerDisk.
// With podNetNS the launcher runs in that netns, as in a pod with L2
// attachments.
func startLauncher(t *testing.T, vmi *v1.VirtualMachineInstance, pod *corev1.Pod, withDisk bool, podNetNS string) *launcherProc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "podvirt-handler-launcher-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	diskDir := filepath.Join(dir, "disks")
	overlay := filepath.Join(diskDir, "root", converter.ContainerDiskFile)
	if err := os.MkdirAll(filepath.Dir(overlay), 0o755); err != nil {
		t.Fatal(err)
	}
	if withDisk {
		if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", art.Disk, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
			t.Fatalf("overlay: %v: %s", err, out)
		}
	}
	// The pod's socket emptyDir as the node sees it is a path too long
	// for a socket address; inside the pod it is short. A symlink stands
	// in for the container's bind mount.
	socket := SocketPath(kubeletRoot, pod, vmi)
	podSockets := filepath.Join(dir, "sockets")
	if err := os.MkdirAll(podSockets, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Dir(filepath.Dir(socket)), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(podSockets, filepath.Dir(socket)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(filepath.Join(kubeletRoot, "pods", string(pod.UID))) })
	lp := &launcherProc{runDir: filepath.Join(dir, "run"), socket: socket, exited: make(chan struct{}), out: &bytes.Buffer{}}
	args := []string{"unshare", "--pid", "--fork", "--kill-child", "--mount-proc",
		launcherPath, "--private-mounts", "--domain-type", converter.DomainQEMU,
		"--run-dir", lp.runDir, "--socket-dir", podSockets, "--disk-dir", diskDir}
	if podNetNS != "" {
		args = append([]string{"nsenter", "--net=" + podNetNS, "--"}, args...)
	}
	lp.cmd = exec.Command(args[0], args[1:]...)
	lp.cmd.Env = append(os.Environ(), "PODVIRT_VMI_UID="+string(vmi.UID))
	lp.cmd.Stdout, lp.cmd.Stderr = lp.out, lp.out
	if err := lp.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		_ = lp.cmd.Wait()
		close(lp.exited)
	}()
	t.Cleanup(func() { lp.stop(t) })
	polltest.Eventually(t, 10*time.Second, "the launcher runs in its PID namespace", func() (bool, string) {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%d/children", lp.cmd.Process.Pid, lp.cmd.Process.Pid))
		if err != nil {
			return false, err.Error()
		}
		f := strings.Fields(string(b))
		if len(f) == 0 {
			return false, "no child yet"
		}
		lp.pid, _ = strconv.Atoi(f[0])
		return lp.pid > 0, ""
	})
	return lp
}

// stop ends the launcher as the kubelet does (SIGTERM, then SIGKILL), if
// it still runs.
func (lp *launcherProc) stop(t *testing.T) {
	select {
	case <-lp.exited:
		return
	default:
	}
	_ = syscall.Kill(lp.pid, syscall.SIGTERM)
	select {
	case <-lp.exited:
	case <-time.After(90 * time.Second):
		t.Errorf("launcher still running 90s after SIGTERM; killing it")
		_ = syscall.Kill(lp.pid, syscall.SIGKILL)
		<-lp.exited
	}
}

func (lp *launcherProc) consoleLog() string { return filepath.Join(lp.runDir, "console.log") }

func (lp *launcherProc) exitCode() int { return lp.cmd.ProcessState.ExitCode() }

func domainState(vmi *v1.VirtualMachineInstance) string {
	if vmi.Status.Domain == nil {
		return "none"
	}
	return string(vmi.Status.Domain.State)
}

// waitVMI waits until the VMI is in phase with the domain in state.
func waitVMI(t *testing.T, vmi *v1.VirtualMachineInstance, timeout time.Duration, phase v1.VirtualMachineInstancePhase, state v1.DomainState, lp *launcherProc) *v1.VirtualMachineInstance {
	t.Helper()
	var cur *v1.VirtualMachineInstance
	deadline := time.Now().Add(timeout)
	for {
		cur = getVMI(t, vmi.Namespace, vmi.Name)
		if cur.Status.Phase == phase && domainState(cur) == string(state) {
			return cur
		}
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(lp.consoleLog())
			t.Fatalf("VMI %s: phase %s (%s: %s), domain %+v after %s; want %s/%s\nconditions: %+v\nlauncher output:\n%s\nconsole:\n%s",
				vmi.Name, cur.Status.Phase, cur.Status.Reason, cur.Status.Message, cur.Status.Domain, timeout, phase, state,
				cur.Status.Conditions, guest.Tail(lp.out.Bytes(), 3000), guest.Tail(b, 1500))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func setPaused(t *testing.T, vmi *v1.VirtualMachineInstance, paused bool) {
	t.Helper()
	cur := getVMI(t, vmi.Namespace, vmi.Name)
	patch := client.MergeFrom(cur.DeepCopy())
	if paused {
		if cur.Annotations == nil {
			cur.Annotations = map[string]string{}
		}
		cur.Annotations[v1.PausedAnnotation] = "true"
	} else {
		delete(cur.Annotations, v1.PausedAnnotation)
	}
	if err := k8s.Patch(context.Background(), cur, patch); err != nil {
		t.Fatal(err)
	}
}

// eventReasons are the reasons of the events podvirt-handler wrote on vmi.
func eventReasons(t *testing.T, vmi *v1.VirtualMachineInstance) []string {
	t.Helper()
	evs := &eventsv1.EventList{}
	if err := k8s.List(context.Background(), evs, client.InNamespace(vmi.Namespace)); err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range evs.Items {
		if e.Regarding.UID == vmi.UID && e.ReportingController == "podvirt-handler" {
			out = append(out, e.Reason)
		}
	}
	return out
}

func waitEvents(t *testing.T, vmi *v1.VirtualMachineInstance, reasons ...string) {
	t.Helper()
	polltest.Eventually(t, 30*time.Second, "events "+strings.Join(reasons, ", "), func() (bool, string) {
		got := eventReasons(t, vmi)
		for _, r := range reasons {
			found := false
			for _, g := range got {
				found = found || g == r
			}
			if !found {
				return false, fmt.Sprintf("have %v", got)
			}
		}
		return true, ""
	})
}

// TestLifecycle: the launcher waits for the handler, which starts the
// domain; the VMI goes Running with the domain's state, is Ready, pauses
// and resumes through the annotation, and Succeeds when the guest powers
// itself off.
func TestLifecycle(t *testing.T) {
	ns := namespace(t)
	vmi := newVMI(t, ns, "life")
	pod := runPod(t, vmi)
	vmi = getVMI(t, ns, vmi.Name)
	if vmi.Status.Phase != v1.Scheduled && vmi.Status.Phase != v1.Scheduling {
		t.Logf("phase %s before the launcher runs", vmi.Status.Phase)
	}
	start := time.Now()
	lp := startLauncher(t, vmi, pod, true, "")

	vmi = waitVMI(t, vmi, bootTimeout, v1.Running, v1.DomainRunning, lp)
	t.Logf("VMI Running %s after the launcher started", time.Since(start).Round(time.Millisecond))
	// Where the start went, in order.
	want := []string{"Scheduled", "LauncherStarted", "LibvirtdReady", "NodeDaemonConnected", "DomainDefined", "DomainStarted"}
	polltest.Eventually(t, 10*time.Second, "the VMI's startup steps", func() (bool, string) {
		v := getVMI(t, ns, vmi.Name)
		var names []string
		for _, s := range v.Status.Startup {
			names = append(names, s.Name)
		}
		return slices.Equal(names, want), fmt.Sprintf("startup %+v", v.Status.Startup)
	})
	for _, s := range getVMI(t, ns, vmi.Name).Status.Startup {
		t.Logf("startup step %s: %d ms", s.Name, s.Milliseconds)
	}
	if !meta.IsStatusConditionTrue(vmi.Status.Conditions, controllerReady) {
		polltest.Eventually(t, 10*time.Second, "the VMI is Ready", func() (bool, string) {
			v := getVMI(t, ns, vmi.Name)
			return meta.IsStatusConditionTrue(v.Status.Conditions, controllerReady), fmt.Sprintf("conditions %+v", v.Status.Conditions)
		})
	}
	ctx, cancel := context.WithTimeout(context.Background(), bootTimeout)
	defer cancel()
	if _, err := guest.WaitForOutput(ctx, lp.consoleLog(), 0, guest.BootMarker); err != nil {
		t.Fatalf("no boot marker: %v", err)
	}
	t.Logf("boot marker %s after the launcher started", time.Since(start).Round(time.Millisecond))
	waitEvents(t, vmi, ReasonStarted)

	setPaused(t, vmi, true)
	waitVMI(t, vmi, time.Minute, v1.Running, v1.DomainPaused, lp)
	setPaused(t, vmi, false)
	waitVMI(t, vmi, time.Minute, v1.Running, v1.DomainRunning, lp)
	waitEvents(t, vmi, ReasonPaused, ReasonResumed)

	// The guest powers itself off, from its shell on the serial console.
	poweroff(t, lp)
	vmi = waitVMI(t, vmi, 2*time.Minute, v1.Succeeded, v1.DomainShutdown, lp)
	if vmi.Status.Reason != controller.ReasonDomainShutdown {
		t.Errorf("VMI reason %q, want %q", vmi.Status.Reason, controller.ReasonDomainShutdown)
	}
	select {
	case <-lp.exited:
	case <-time.After(time.Minute):
		t.Fatal("the launcher did not exit after the guest powered off")
	}
	if code := lp.exitCode(); code != 0 {
		t.Errorf("launcher exit code %d after the guest powered off, want 0; output:\n%s", code, guest.Tail(lp.out.Bytes(), 2000))
	}
	waitEvents(t, vmi, ReasonShutdown)
}

const controllerReady = controller.ConditionReady

// poweroff types poweroff on the guest's serial console through the
// launcher's command socket until the console ends.
func poweroff(t *testing.T, lp *launcherProc) {
	t.Helper()
	c, cc, err := cmdclient.Dial(lp.socket)
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stream, err := c.Console(ctx)
	if err != nil {
		t.Fatal(err)
	}
	recvDone := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				recvDone <- err
				return
			}
		}
	}()
	tick := time.NewTicker(3 * time.Second)
	defer tick.Stop()
	for {
		if err := stream.Send(&launchercmd.ConsoleData{Data: []byte("\npoweroff\n")}); err != nil {
			return // the domain is gone
		}
		select {
		case <-recvDone:
			return
		case <-tick.C:
		case <-ctx.Done():
			t.Fatal("the guest did not power off after poweroff on its console")
		}
	}
}

// TestLauncherKilled: a launcher that dies (its container killed) while
// the guest runs makes the VMI Failed, with the domain reported Crashed
// because the launcher was lost.
func TestLauncherKilled(t *testing.T) {
	ns := namespace(t)
	vmi := newVMI(t, ns, "killed")
	pod := runPod(t, vmi)
	vmi = getVMI(t, ns, vmi.Name)
	lp := startLauncher(t, vmi, pod, true, "")
	waitVMI(t, vmi, bootTimeout, v1.Running, v1.DomainRunning, lp)

	if err := syscall.Kill(lp.pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vmi = waitVMI(t, vmi, time.Minute, v1.Failed, v1.DomainCrashed, lp)
	if vmi.Status.Domain.Reason != ReasonLauncherLost || !strings.Contains(vmi.Status.Domain.Message, "the launcher went away") {
		t.Errorf("domain status %+v, want reason %s and a message saying the launcher went away", vmi.Status.Domain, ReasonLauncherLost)
	}
	if vmi.Status.Reason != controller.ReasonDomainCrashed {
		t.Errorf("VMI reason %q, want %q", vmi.Status.Reason, controller.ReasonDomainCrashed)
	}
	waitEvents(t, vmi, ReasonLauncherLost)
}

// TestStartFailure: a VMI whose domain the launcher cannot start (its
// disk is missing) fails, with the launcher's error on the domain status.
func TestStartFailure(t *testing.T) {
	ns := namespace(t)
	vmi := newVMI(t, ns, "nodisk")
	pod := runPod(t, vmi)
	vmi = getVMI(t, ns, vmi.Name)
	lp := startLauncher(t, vmi, pod, false, "")
	vmi = waitVMI(t, vmi, time.Minute, v1.Failed, v1.DomainCrashed, lp)
	if d := vmi.Status.Domain; d.Reason != ReasonStartFailed || !strings.Contains(d.Message, converter.ContainerDiskFile) {
		t.Errorf("domain status %+v, want reason %s and a message naming the missing disk", d, ReasonStartFailed)
	}
	waitEvents(t, vmi, ReasonStartFailed)
}

// TestDomainCrash: QEMU dying under a running guest makes the VMI
// Failed, with the domain reported Crashed by the launcher.
func TestDomainCrash(t *testing.T) {
	ns := namespace(t)
	vmi := newVMI(t, ns, "crash")
	pod := runPod(t, vmi)
	vmi = getVMI(t, ns, vmi.Name)
	lp := startLauncher(t, vmi, pod, true, "")
	waitVMI(t, vmi, bootTimeout, v1.Running, v1.DomainRunning, lp)

	// QEMU's host PID, by the guest name libvirt gives it.
	out, err := exec.Command("pgrep", "-f", "guest="+converter.DomainName(vmi)+",").Output()
	pids := strings.Fields(string(out))
	if err != nil || len(pids) != 1 {
		t.Fatalf("finding QEMU of %s: %v %q", converter.DomainName(vmi), err, out)
	}
	pid, _ := strconv.Atoi(pids[0])
	if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	vmi = waitVMI(t, vmi, time.Minute, v1.Failed, v1.DomainCrashed, lp)
	if vmi.Status.Domain.Reason == ReasonLauncherLost || vmi.Status.Reason != controller.ReasonDomainCrashed {
		t.Errorf("domain %+v, VMI reason %q: want the launcher's Crashed report and %s", vmi.Status.Domain, vmi.Status.Reason, controller.ReasonDomainCrashed)
	}
	select {
	case <-lp.exited:
	case <-time.After(time.Minute):
		t.Fatal("the launcher did not exit after its domain crashed")
	}
	if code := lp.exitCode(); code != 1 {
		t.Errorf("launcher exit code %d after the domain crashed, want 1", code)
	}
	waitEvents(t, vmi, ReasonDomainCrashed)
}
