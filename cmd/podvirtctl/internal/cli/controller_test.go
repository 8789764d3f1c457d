package cli

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/polltest"
)

// playNode does what the kubelet and the node daemon do for every
// launcher pod in controlledNS until ctx ends: it binds new pods, reports
// them running with the domain running, and removes deleted ones.
func playNode(ctx context.Context) {
	for ctx.Err() == nil {
		pods := &corev1.PodList{}
		_ = k8s.List(ctx, pods, client.InNamespace(controlledNS), client.MatchingLabels{v1.AppLabel: v1.AppLauncher})
		for i := range pods.Items {
			p := &pods.Items[i]
			switch {
			case p.DeletionTimestamp != nil:
				_ = k8s.Delete(ctx, p, client.GracePeriodSeconds(0), client.Preconditions{UID: &p.UID})
			case p.Spec.NodeName == "":
				_ = k8s.SubResource("binding").Create(ctx, p, &corev1.Binding{
					ObjectMeta: metav1.ObjectMeta{Name: p.Name, Namespace: p.Namespace},
					Target:     corev1.ObjectReference{Kind: "Node", Name: "node-a"},
				})
			case p.Status.Phase != corev1.PodRunning:
				now := metav1.Now()
				p.Status.Phase = corev1.PodRunning
				p.Status.Conditions = []corev1.PodCondition{
					{Type: corev1.PodScheduled, Status: corev1.ConditionTrue, LastTransitionTime: now},
					{Type: corev1.PodReady, Status: corev1.ConditionTrue, LastTransitionTime: now},
				}
				p.Status.ContainerStatuses = []corev1.ContainerStatus{{Name: v1.LauncherContainerName, Image: p.Spec.Containers[0].Image, Ready: true,
					State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}}}
				_ = k8s.Status().Update(ctx, p)
			default:
				vmi := &v1.VirtualMachineInstance{}
				if err := k8s.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Labels[v1.VMINameLabel]}, vmi); err != nil ||
					string(vmi.UID) != p.Labels[v1.CreatedByLabel] || vmi.Status.Domain != nil {
					continue
				}
				patch := client.MergeFrom(vmi.DeepCopy())
				vmi.Status.Domain = &v1.DomainStatus{State: v1.DomainRunning, LastTransitionTime: metav1.Now()}
				_ = k8s.Status().Patch(ctx, vmi, patch)
			}
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// waitRunning waits until the VM's VMI, other than old, is Running, and
// returns its UID.
func waitRunning(t *testing.T, name string, old types.UID) types.UID {
	t.Helper()
	var uid types.UID
	polltest.Eventually(t, 30*time.Second, fmt.Sprintf("a new VMI %s is Running", name), func() (bool, string) {
		vmi := getVMI(t, controlledNS, name)
		if vmi == nil {
			return false, "no VMI"
		}
		uid = vmi.UID
		return vmi.UID != old && vmi.Status.Phase == v1.Running && vmi.DeletionTimestamp == nil, fmt.Sprintf("VMI %s phase %s", vmi.UID, vmi.Status.Phase)
	})
	return uid
}

func waitStopped(t *testing.T, name string) {
	t.Helper()
	polltest.Eventually(t, 30*time.Second, "VM "+name+" is Stopped with no VMI", func() (bool, string) {
		vm := getVM(t, controlledNS, name)
		vmi := getVMI(t, controlledNS, name)
		return vmi == nil && vm.Status.PrintableStatus == v1.PrintableStatusStopped && len(vm.Status.StateChangeRequests) == 0,
			fmt.Sprintf("status %s, VMI present %v, requests %v", vm.Status.PrintableStatus, vmi != nil, vm.Status.StateChangeRequests)
	})
}

// TestWithController checks the real controller does what start, stop
// and restart ask, for the strategies driven by requests (Manual) and by
// run-strategy edits (Always).
func TestWithController(t *testing.T) {
	if startErr != nil {
		t.Fatal(startErr)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); playNode(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-done
		bg := context.Background()
		_ = k8s.DeleteAllOf(bg, &v1.VirtualMachine{}, client.InNamespace(controlledNS))
		polltest.Eventually(t, 30*time.Second, "the controller removed every VM", func() (bool, string) {
			vms := &v1.VirtualMachineList{}
			_ = k8s.List(bg, vms, client.InNamespace(controlledNS))
			pods := &corev1.PodList{}
			_ = k8s.List(bg, pods, client.InNamespace(controlledNS))
			for i := range pods.Items {
				_ = k8s.Delete(bg, &pods.Items[i], client.GracePeriodSeconds(0))
			}
			return len(vms.Items) == 0, fmt.Sprintf("%d VMs left", len(vms.Items))
		})
	})
	run := func(args ...string) {
		t.Helper()
		if _, err := podvirtctl(t, controlledNS, args...); err != nil {
			t.Fatalf("podvirtctl %v: %v", args, err)
		}
	}

	t.Run("manual", func(t *testing.T) {
		create(t, testVM(controlledNS, "manual", v1.RunStrategyManual))
		waitStopped(t, "manual")
		run("start", "manual")
		first := waitRunning(t, "manual", "")
		run("restart", "manual")
		second := waitRunning(t, "manual", first)
		run("pause", "vm", "manual")
		if getVMI(t, controlledNS, "manual").Annotations[v1.PausedAnnotation] != "true" {
			t.Fatal("not annotated paused")
		}
		run("stop", "manual")
		waitStopped(t, "manual")
		if _, err := podvirtctl(t, controlledNS, "stop", "manual"); err == nil {
			t.Fatalf("a second stop of the stopped VM (last VMI %s) succeeded", second)
		}
		if vm := getVM(t, controlledNS, "manual"); vm.Spec.RunStrategy != v1.RunStrategyManual {
			t.Fatalf("runStrategy %s, want Manual kept", vm.Spec.RunStrategy)
		}
	})

	t.Run("always", func(t *testing.T) {
		create(t, testVM(controlledNS, "always", v1.RunStrategyAlways))
		first := waitRunning(t, "always", "")
		run("restart", "always")
		waitRunning(t, "always", first)
		run("stop", "always")
		waitStopped(t, "always")
		if vm := getVM(t, controlledNS, "always"); vm.Spec.RunStrategy != v1.RunStrategyHalted {
			t.Fatalf("runStrategy %s after stop, want Halted", vm.Spec.RunStrategy)
		}
		run("start", "always")
		waitRunning(t, "always", "")
		if vm := getVM(t, controlledNS, "always"); vm.Spec.RunStrategy != v1.RunStrategyAlways {
			t.Fatalf("runStrategy %s after start, want Always", vm.Spec.RunStrategy)
		}
	})
}
