package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// testVM is a small VM: one containerDisk, the pod network.
func testVM(ns, name string, strategy v1alpha1.RunStrategy) *v1alpha1.VirtualMachine {
	return &v1alpha1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: v1alpha1.VirtualMachineSpec{
			RunStrategy: strategy,
			Template: v1alpha1.VirtualMachineInstanceTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": name}},
				Spec: v1alpha1.VirtualMachineInstanceSpec{
					Domain: v1alpha1.DomainSpec{
						Memory: v1alpha1.Memory{Guest: resource.MustParse("64Mi")},
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

func create(t *testing.T, obj client.Object) {
	t.Helper()
	if err := k8s.Create(context.Background(), obj); err != nil {
		t.Fatalf("create %T %s: %v", obj, obj.GetName(), err)
	}
}

// requestStateChange appends a start or stop request to the VM's status,
// as `podvirtctl start|stop` does.
func requestStateChange(t *testing.T, ns, name string, action v1alpha1.StateChangeAction) {
	t.Helper()
	polltest.Eventually(t, wait, "state change request written", func() (bool, string) {
		vm := getVM(t, ns, name)
		vm.Status.StateChangeRequests = append(vm.Status.StateChangeRequests, v1alpha1.VirtualMachineStateChangeRequest{Action: action})
		err := k8s.Status().Update(context.Background(), vm)
		return err == nil, fmt.Sprint(err)
	})
}

// setRunStrategy changes the VM's spec.runStrategy, as a user does.
func setRunStrategy(t *testing.T, ns, name string, strategy v1alpha1.RunStrategy) {
	t.Helper()
	polltest.Eventually(t, wait, "run strategy written", func() (bool, string) {
		vm := getVM(t, ns, name)
		vm.Spec.RunStrategy = strategy
		err := k8s.Update(context.Background(), vm)
		return err == nil, fmt.Sprint(err)
	})
}

// keepsVMI checks the VMI stays the one with uid, in phase, for a while.
func keepsVMI(t *testing.T, ns, name string, uid types.UID, phase v1alpha1.VirtualMachineInstancePhase) {
	t.Helper()
	polltest.Consistently(t, 1500*time.Millisecond, fmt.Sprintf("VMI %s stays %s", uid, phase), func() (bool, string) {
		vmi := getVMI(t, ns, name)
		if vmi == nil {
			return false, "VMI is gone"
		}
		return vmi.UID == uid && vmi.Status.Phase == phase, fmt.Sprintf("VMI %s phase %s", vmi.UID, vmi.Status.Phase)
	})
}

func noVMIFor(t *testing.T, ns, name string, d time.Duration) {
	t.Helper()
	polltest.Consistently(t, d, "no VMI", func() (bool, string) {
		if vmi := getVMI(t, ns, name); vmi != nil {
			return false, fmt.Sprintf("VMI %s in phase %s", vmi.UID, vmi.Status.Phase)
		}
		return true, ""
	})
}

// TestRunStrategies runs a VM under each strategy, lets its VMI end by
// failing or by the guest shutting down, and checks whether the VM replaces
// the VMI.
func TestRunStrategies(t *testing.T) {
	ns := namespace(t)
	type ending struct {
		name    string
		end     func(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, pod *corev1.Pod)
		phase   v1alpha1.VirtualMachineInstancePhase
		printed v1alpha1.VirtualMachinePrintableStatus // when the VMI is kept
	}
	failed := ending{"launcher fails", func(t *testing.T, _ *v1alpha1.VirtualMachineInstance, pod *corev1.Pod) {
		setPodStatus(t, pod, corev1.PodFailed, false, 1)
	}, v1alpha1.Failed, v1alpha1.PrintableStatusFailed}
	crashed := ending{"domain crashes", func(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, _ *corev1.Pod) {
		reportDomain(t, vmi, v1alpha1.DomainCrashed, "")
	}, v1alpha1.Failed, v1alpha1.PrintableStatusFailed}
	shutdown := ending{"guest shuts down", func(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, _ *corev1.Pod) {
		reportDomain(t, vmi, v1alpha1.DomainShutdown, "")
	}, v1alpha1.Succeeded, v1alpha1.PrintableStatusStopped}

	for _, tc := range []struct {
		strategy v1alpha1.RunStrategy
		// startsVMI: the VM starts a VMI on its own.
		startsVMI bool
		// replaced: which endings make the VM start a new VMI.
		replaced map[string]bool
	}{
		{v1alpha1.RunStrategyAlways, true, map[string]bool{failed.name: true, crashed.name: true, shutdown.name: true}},
		{v1alpha1.RunStrategyRerunOnFailure, true, map[string]bool{failed.name: true, crashed.name: true}},
		{v1alpha1.RunStrategyOnce, true, nil},
		{v1alpha1.RunStrategyManual, false, nil},
		{v1alpha1.RunStrategyHalted, false, nil},
	} {
		for _, end := range []ending{failed, crashed, shutdown} {
			if tc.strategy == v1alpha1.RunStrategyHalted && end.name != failed.name {
				continue // a Halted VM has no VMI to end
			}
			t.Run(fmt.Sprintf("%s/%s", tc.strategy, end.name), func(t *testing.T) {
				t.Parallel()
				name := fmt.Sprintf("%s-%s", map[v1alpha1.RunStrategy]string{
					v1alpha1.RunStrategyAlways: "always", v1alpha1.RunStrategyRerunOnFailure: "rerun",
					v1alpha1.RunStrategyOnce: "once", v1alpha1.RunStrategyManual: "manual", v1alpha1.RunStrategyHalted: "halted",
				}[tc.strategy], map[string]string{failed.name: "fail", crashed.name: "crash", shutdown.name: "shutdown"}[end.name])
				create(t, testVM(ns, name, tc.strategy))

				if !tc.startsVMI {
					waitVMStatus(t, ns, name, v1alpha1.PrintableStatusStopped)
					noVMIFor(t, ns, name, time.Second)
					if tc.strategy == v1alpha1.RunStrategyHalted {
						// Halted: a start request is refused; the user
						// changes the run strategy instead.
						requestStateChange(t, ns, name, v1alpha1.StartRequest)
						waitEvent(t, ns, name, ReasonIgnoredChange)
						noVMIFor(t, ns, name, time.Second)
						return
					}
					requestStateChange(t, ns, name, v1alpha1.StartRequest)
				}
				vmi := waitVMI(t, ns, name, "", "")
				pod := runVMI(t, vmi)
				vm := waitVMStatus(t, ns, name, v1alpha1.PrintableStatusRunning)
				if !vm.Status.Ready || vm.Status.IP != "10.0.0.5" || vm.Status.NodeName != "node-a" {
					t.Fatalf("running VM status: ready=%v ip=%q node=%q", vm.Status.Ready, vm.Status.IP, vm.Status.NodeName)
				}

				end.end(t, vmi, pod)
				if tc.replaced[end.name] {
					next := waitVMI(t, ns, name, vmi.UID, "")
					if end.phase == v1alpha1.Failed {
						vm := getVM(t, ns, name)
						if f := vm.Status.StartFailure; f == nil || f.ConsecutiveFailCount != 1 || f.LastFailedVMIUID != vmi.UID {
							t.Fatalf("after a failure: startFailure %+v, want 1 failure of %s", f, vmi.UID)
						}
						if c := meta.FindStatusCondition(vm.Status.Conditions, ConditionFailure); c == nil || c.Reason != ReasonVMIFailed {
							t.Fatalf("after a failure: Failure condition %+v", c)
						}
						waitEvent(t, ns, name, ReasonVMIFailed)
					}
					runVMI(t, next)
					waitVMStatus(t, ns, name, v1alpha1.PrintableStatusRunning)
					return
				}
				waitVMI(t, ns, name, "", end.phase)
				keepsVMI(t, ns, name, vmi.UID, end.phase)
				waitVMStatus(t, ns, name, end.printed)
				// The finished VMI's pod is not left running.
				if end.phase == v1alpha1.Failed && end.name == crashed.name {
					polltest.Eventually(t, wait, "the launcher pod of the crashed VMI is gone", func() (bool, string) {
						err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{})
						return err != nil, "pod still there"
					})
				}
			})
		}
	}
}

// TestRunStrategyTransitions changes a VM's run strategy the way a user
// does and checks the VM follows.
func TestRunStrategyTransitions(t *testing.T) {
	ns := namespace(t)
	const name = "switch"
	create(t, testVM(ns, name, v1alpha1.RunStrategyHalted))
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusStopped)
	noVMIFor(t, ns, name, 500*time.Millisecond)

	// Halted → Always: a VMI starts.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyAlways)
	first := waitVMI(t, ns, name, "", "")
	runVMI(t, first)
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusRunning)

	// Always → Halted: the VMI stops.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyHalted)
	waitNoVMI(t, ns, name)
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusStopped)
	noVMIFor(t, ns, name, 500*time.Millisecond)

	// Halted → Always again: a new VMI.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyAlways)
	second := waitVMI(t, ns, name, first.UID, "")
	runVMI(t, second)

	// Always → Manual: the running VMI is left alone; a stop request stops
	// it and nothing restarts it; a start request starts a new one.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyManual)
	keepsVMI(t, ns, name, second.UID, v1alpha1.Running)
	requestStateChange(t, ns, name, v1alpha1.StopRequest)
	waitNoVMI(t, ns, name)
	noVMIFor(t, ns, name, time.Second)
	requestStateChange(t, ns, name, v1alpha1.StartRequest)
	third := waitVMI(t, ns, name, second.UID, "")
	runVMI(t, third)

	// Manual → Once: runs the current VMI to its end, and no further.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyOnce)
	reportDomain(t, third, v1alpha1.DomainShutdown, "")
	waitVMI(t, ns, name, "", v1alpha1.Succeeded)
	keepsVMI(t, ns, name, third.UID, v1alpha1.Succeeded)

	// Once → Halted → Once: the finished VMI is cleared, then one new run.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyHalted)
	waitNoVMI(t, ns, name)
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyOnce)
	fourth := waitVMI(t, ns, name, third.UID, "")
	runVMI(t, fourth)
	reportDomain(t, fourth, v1alpha1.DomainCrashed, "")
	waitVMI(t, ns, name, "", v1alpha1.Failed)
	keepsVMI(t, ns, name, fourth.UID, v1alpha1.Failed)

	// A restart under Always is a stop request: a new VMI replaces the old.
	setRunStrategy(t, ns, name, v1alpha1.RunStrategyAlways)
	fifth := waitVMI(t, ns, name, fourth.UID, "")
	runVMI(t, fifth)
	requestStateChange(t, ns, name, v1alpha1.StopRequest)
	sixth := waitVMI(t, ns, name, fifth.UID, "")
	runVMI(t, sixth)
}

// TestCrashLoopBackOff fails VMIs in a row under Always and checks the
// back-off grows and is reported.
func TestCrashLoopBackOff(t *testing.T) {
	ns := namespace(t)
	const name = "crashy"
	create(t, testVM(ns, name, v1alpha1.RunStrategyAlways))
	var old types.UID
	for i := 1; i <= 3; i++ {
		vmi := waitVMI(t, ns, name, old, "")
		pod := launcherPodOf(t, vmi)
		schedule(t, pod, "node-a")
		setPodStatus(t, pod, corev1.PodFailed, false, 1)
		polltest.Eventually(t, wait, fmt.Sprintf("failure %d is counted", i), func() (bool, string) {
			f := getVM(t, ns, name).Status.StartFailure
			return f != nil && f.ConsecutiveFailCount == int32(i), fmt.Sprintf("%+v", f)
		})
		old = vmi.UID
	}
	// The third failure waits 4 × 300ms before the next start.
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusCrashLoopBackOff)
	next := waitVMI(t, ns, name, old, "")
	runVMI(t, next)
	// A VMI that keeps running clears the count.
	polltest.Eventually(t, wait, "the failure count is cleared", func() (bool, string) {
		vm := getVM(t, ns, name)
		return vm.Status.StartFailure == nil && meta.FindStatusCondition(vm.Status.Conditions, ConditionFailure) == nil,
			fmt.Sprintf("%+v", vm.Status.StartFailure)
	})
}

// TestVMUnschedulableSaysWhy: a VM whose launcher pod fits no node is
// ErrorUnschedulable, its Ready condition quoting the scheduler.
func TestVMUnschedulableSaysWhy(t *testing.T) {
	ns := namespace(t)
	create(t, testVM(ns, "huge", v1alpha1.RunStrategyAlways))
	pod := launcherPodOf(t, waitVMI(t, ns, "huge", "", v1alpha1.Scheduling))
	const why = "0/3 nodes are available: 3 Insufficient memory. preemption: 0/3 nodes are available: 3 No preemption victims found for incoming pod."
	polltest.Eventually(t, wait, "pod marked unschedulable", func() (bool, string) {
		cur := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), cur); err != nil {
			return false, err.Error()
		}
		cur.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: why, LastTransitionTime: metav1.Now()}}
		err := k8s.Status().Update(context.Background(), cur)
		return err == nil, fmt.Sprint(err)
	})
	vm := waitVMStatus(t, ns, "huge", v1alpha1.PrintableStatusUnschedulable)
	polltest.Eventually(t, wait, "the VM's Ready condition quotes the scheduler", func() (bool, string) {
		vm = getVM(t, ns, "huge")
		c := meta.FindStatusCondition(vm.Status.Conditions, ConditionReady)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonUnschedulable && c.Message == "the launcher pod cannot be scheduled: "+why, fmt.Sprintf("%+v", c)
	})
}

// TestVMRestartRequired: changing a running VM's template leaves its VMI
// as it is and sets RestartRequired naming the fields; changing it back
// clears it, and a restart applies the change and clears it too.
func TestVMRestartRequired(t *testing.T) {
	ns := namespace(t)
	create(t, testVM(ns, "resized", v1alpha1.RunStrategyAlways))
	vmi := waitVMI(t, ns, "resized", "", "")
	editTemplate := func(what string, edit func(*v1alpha1.VirtualMachineInstanceSpec)) {
		polltest.Eventually(t, wait, what, func() (bool, string) {
			vm := getVM(t, ns, "resized")
			edit(&vm.Spec.Template.Spec)
			err := k8s.Update(context.Background(), vm)
			return err == nil, fmt.Sprint(err)
		})
	}
	restartRequired := func(want string) {
		polltest.Eventually(t, wait, "RestartRequired "+want, func() (bool, string) {
			c := meta.FindStatusCondition(getVM(t, ns, "resized").Status.Conditions, ConditionRestartRequired)
			if want == "" {
				return c == nil, fmt.Sprintf("%+v", c)
			}
			return c != nil && c.Status == metav1.ConditionTrue && c.Reason == ReasonTemplateChanged && strings.Contains(c.Message, want), fmt.Sprintf("%+v", c)
		})
	}

	editTemplate("more memory, another volume", func(s *v1alpha1.VirtualMachineInstanceSpec) {
		s.Domain.Memory.Guest = resource.MustParse("128Mi")
		s.Volumes[0].ContainerDisk.Image = "podvirt.local/guest:2"
	})
	restartRequired("spec.template.spec domain.memory, volumes changed since VMI resized started")
	if cur := getVMI(t, ns, "resized"); cur.UID != vmi.UID || cur.Spec.Domain.Memory.Guest.String() != "64Mi" {
		t.Fatalf("the running VMI changed: uid %s (was %s), memory %s", cur.UID, vmi.UID, cur.Spec.Domain.Memory.Guest.String())
	}
	editTemplate("the memory back", func(s *v1alpha1.VirtualMachineInstanceSpec) {
		s.Domain.Memory.Guest = resource.MustParse("64Mi")
	})
	restartRequired("spec.template.spec volumes changed")
	editTemplate("the volume back", func(s *v1alpha1.VirtualMachineInstanceSpec) {
		s.Volumes[0].ContainerDisk.Image = "podvirt.local/guest:1"
	})
	restartRequired("")

	editTemplate("more CPUs", func(s *v1alpha1.VirtualMachineInstanceSpec) {
		s.Domain.CPU = &v1alpha1.CPU{Cores: 2}
	})
	restartRequired("domain.cpu")
	requestStateChange(t, ns, "resized", v1alpha1.StopRequest)
	vmi = waitVMI(t, ns, "resized", vmi.UID, "")
	if vmi.Spec.Domain.CPU == nil || vmi.Spec.Domain.CPU.Cores != 2 {
		t.Fatalf("restarted VMI has cpu %+v, want 2 cores", vmi.Spec.Domain.CPU)
	}
	restartRequired("")
}
