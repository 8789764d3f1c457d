package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// vmiState is the VMI a test gives a VM: none, or one in a phase.
type vmiState string

const (
	noVMI      vmiState = ""
	vmiRunning vmiState = "Running"
	succeeded  vmiState = "Succeeded"
	failed     vmiState = "Failed"
)

// ownVMI creates the VM's VMI in phase, as the controller and node
// daemon would have left it, and returns its UID.
func ownVMI(t *testing.T, vm *v1.VirtualMachine, phase v1.VirtualMachineInstancePhase) types.UID {
	t.Helper()
	vmi := &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{
			Name: vm.Name, Namespace: vm.Namespace,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vm, v1.GroupVersion.WithKind("VirtualMachine"))},
		},
		Spec: vm.Spec.Template.Spec,
	}
	create(t, vmi)
	vmi.Status.Phase = phase
	if err := k8s.Status().Update(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	return vmi.UID
}

// req is a state change request as the tests write it: "Start", or
// "Stop" of the test's VMI.
type req string

func requests(got []v1.VirtualMachineStateChangeRequest, vmiUID types.UID) []req {
	var out []req
	for _, r := range got {
		switch {
		case r.Action == v1.StopRequest && r.UID != nil && *r.UID == vmiUID:
			out = append(out, "Stop")
		case r.Action == v1.StopRequest:
			out = append(out, req(fmt.Sprintf("Stop(uid %v)", r.UID)))
		default:
			out = append(out, req(r.Action))
		}
	}
	return out
}

// TestLifecycleChanges runs start, stop and restart for each run strategy
// and VMI state, and checks the VM afterwards: the run strategy and the
// pending requests exactly, or an error that says why and what to do with
// the VM left untouched.
func TestLifecycleChanges(t *testing.T) {
	ns := namespace(t)
	type tc struct {
		cmd      string
		strategy v1.RunStrategy
		vmi      vmiState
		pending  []v1.StateChangeAction // requests already in the VM's status
		// Either the result:
		wantStrategy v1.RunStrategy
		wantRequests []req
		// or an error holding each of these:
		wantErr []string
	}
	cases := []tc{
		// start
		{cmd: "start", strategy: v1.RunStrategyHalted, wantStrategy: v1.RunStrategyAlways},
		{cmd: "start", strategy: v1.RunStrategyManual, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Start"}},
		{cmd: "start", strategy: v1.RunStrategyManual, vmi: succeeded, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop", "Start"}},
		{cmd: "start", strategy: v1.RunStrategyManual, vmi: failed, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop", "Start"}},
		{cmd: "start", strategy: v1.RunStrategyRerunOnFailure, wantStrategy: v1.RunStrategyRerunOnFailure, wantRequests: []req{"Start"}},
		{cmd: "start", strategy: v1.RunStrategyRerunOnFailure, vmi: succeeded, wantStrategy: v1.RunStrategyRerunOnFailure, wantRequests: []req{"Stop", "Start"}},
		{cmd: "start", strategy: v1.RunStrategyOnce, vmi: succeeded, wantStrategy: v1.RunStrategyOnce, wantRequests: []req{"Stop", "Start"}},
		{cmd: "start", strategy: v1.RunStrategyAlways, wantErr: []string{"runStrategy Always", "starts it by itself", "kubectl describe vm"}},
		{cmd: "start", strategy: v1.RunStrategyManual, vmi: vmiRunning, wantErr: []string{"already running", "podvirtctl restart"}},
		{cmd: "start", strategy: v1.RunStrategyAlways, vmi: vmiRunning, wantErr: []string{"already running"}},
		{cmd: "start", strategy: v1.RunStrategyRerunOnFailure, vmi: failed, wantErr: []string{"RerunOnFailure restarts it by itself"}},
		{cmd: "start", strategy: v1.RunStrategyManual, pending: []v1.StateChangeAction{v1.StartRequest}, wantErr: []string{"already has a start or stop under way (Start)", "try again"}},
		// stop
		{cmd: "stop", strategy: v1.RunStrategyAlways, vmi: vmiRunning, wantStrategy: v1.RunStrategyHalted},
		{cmd: "stop", strategy: v1.RunStrategyOnce, vmi: vmiRunning, wantStrategy: v1.RunStrategyHalted},
		{cmd: "stop", strategy: v1.RunStrategyManual, vmi: vmiRunning, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop"}},
		{cmd: "stop", strategy: v1.RunStrategyRerunOnFailure, vmi: vmiRunning, wantStrategy: v1.RunStrategyRerunOnFailure, wantRequests: []req{"Stop"}},
		// A stop replaces a pending start (as virtctl does).
		{cmd: "stop", strategy: v1.RunStrategyManual, vmi: vmiRunning, pending: []v1.StateChangeAction{v1.StartRequest}, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop"}},
		{cmd: "stop", strategy: v1.RunStrategyManual, wantErr: []string{"is not running (Stopped)", "nothing to stop"}},
		{cmd: "stop", strategy: v1.RunStrategyManual, vmi: succeeded, wantErr: []string{"is not running"}},
		{cmd: "stop", strategy: v1.RunStrategyHalted, wantErr: []string{"is not running"}},
		// restart
		{cmd: "restart", strategy: v1.RunStrategyAlways, vmi: vmiRunning, wantStrategy: v1.RunStrategyAlways, wantRequests: []req{"Stop"}},
		{cmd: "restart", strategy: v1.RunStrategyManual, vmi: vmiRunning, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop", "Start"}},
		{cmd: "restart", strategy: v1.RunStrategyRerunOnFailure, vmi: vmiRunning, wantStrategy: v1.RunStrategyRerunOnFailure, wantRequests: []req{"Stop", "Start"}},
		{cmd: "restart", strategy: v1.RunStrategyManual, vmi: succeeded, wantStrategy: v1.RunStrategyManual, wantRequests: []req{"Stop", "Start"}},
		{cmd: "restart", strategy: v1.RunStrategyManual, wantErr: []string{"is not running (Stopped)", "start it with `podvirtctl start"}},
		{cmd: "restart", strategy: v1.RunStrategyHalted, wantErr: []string{"runStrategy Halted", "`podvirtctl start"}},
		{cmd: "restart", strategy: v1.RunStrategyOnce, vmi: vmiRunning, wantErr: []string{"runStrategy Once", "set spec.runStrategy"}},
	}
	for i, c := range cases {
		name := fmt.Sprintf("%s-%s-%s-%d", c.cmd, strings.ToLower(string(c.strategy)), strings.ToLower(string(c.vmi)), i)
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			vm := testVM(ns, name, c.strategy)
			create(t, vm)
			if len(c.pending) > 0 {
				for _, a := range c.pending {
					vm.Status.StateChangeRequests = append(vm.Status.StateChangeRequests, v1.VirtualMachineStateChangeRequest{Action: a})
				}
				if err := k8s.Status().Update(context.Background(), vm); err != nil {
					t.Fatal(err)
				}
			}
			var uid types.UID
			if c.vmi != noVMI {
				uid = ownVMI(t, vm, v1.VirtualMachineInstancePhase(c.vmi))
			}
			before := getVM(t, ns, name)

			out, err := podvirtctl(t, ns, c.cmd, name)
			after := getVM(t, ns, name)
			if c.wantErr != nil {
				if err == nil {
					t.Fatalf("%s succeeded (%q), want an error", c.cmd, out)
				}
				for _, w := range c.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q does not say %q", err, w)
					}
				}
				if after.ResourceVersion != before.ResourceVersion {
					t.Errorf("a refused %s changed the VM:\nbefore %s\nafter  %s", c.cmd, asJSON(before), asJSON(after))
				}
				return
			}
			if err != nil {
				t.Fatalf("%s: %v", c.cmd, err)
			}
			if !strings.Contains(out, "vm "+name+" was scheduled to") {
				t.Errorf("output %q", out)
			}
			if after.Spec.RunStrategy != c.wantStrategy {
				t.Errorf("runStrategy %s, want %s", after.Spec.RunStrategy, c.wantStrategy)
			}
			if got := requests(after.Status.StateChangeRequests, uid); fmt.Sprint(got) != fmt.Sprint(c.wantRequests) {
				t.Errorf("stateChangeRequests %v, want %v", got, c.wantRequests)
			}
			// Nothing else changed.
			before.Spec.RunStrategy, after.Spec.RunStrategy = "", ""
			before.Status.StateChangeRequests, after.Status.StateChangeRequests = nil, nil
			if !equality.Semantic.DeepEqual(before.Spec, after.Spec) || !equality.Semantic.DeepEqual(before.Status, after.Status) {
				t.Errorf("%s changed more than it should:\nbefore %s\nafter  %s", c.cmd, asJSON(before), asJSON(after))
			}
		})
	}
}

// A start clears the crash-loop back-off, as virtctl's does.
func TestStartClearsStartFailure(t *testing.T) {
	ns := namespace(t)
	vm := testVM(ns, "backoff", v1.RunStrategyRerunOnFailure)
	create(t, vm)
	vm.Status.PrintableStatus = v1.PrintableStatusCrashLoopBackOff
	vm.Status.StartFailure = &v1.VirtualMachineStartFailure{ConsecutiveFailCount: 3}
	if err := k8s.Status().Update(context.Background(), vm); err != nil {
		t.Fatal(err)
	}
	if _, err := podvirtctl(t, ns, "start", "backoff"); err != nil {
		t.Fatal(err)
	}
	after := getVM(t, ns, "backoff")
	if after.Status.StartFailure != nil {
		t.Errorf("startFailure %+v is still there", after.Status.StartFailure)
	}
	if got := requests(after.Status.StateChangeRequests, ""); fmt.Sprint(got) != "[Start]" {
		t.Errorf("stateChangeRequests %v, want [Start]", got)
	}
}

func TestNotFound(t *testing.T) {
	ns := namespace(t)
	for _, cmd := range [][]string{{"start"}, {"stop"}, {"restart"}, {"pause", "vm"}} {
		_, err := podvirtctl(t, ns, append(cmd, "ghost")...)
		if err == nil || !strings.Contains(err.Error(), `vm "ghost" not found in namespace "`+ns+`", which has no vms`) || !strings.Contains(err.Error(), "kubectl get vm -A") {
			t.Errorf("%v in an empty namespace: %v", cmd, err)
		}
	}
	create(t, testVM(ns, "alpha", v1.RunStrategyHalted))
	create(t, testVM(ns, "beta", v1.RunStrategyHalted))
	_, err := podvirtctl(t, ns, "start", "alhpa")
	if err == nil || !strings.Contains(err.Error(), `vm "alhpa" not found in namespace "`+ns+`"; vms there: alpha, beta`) {
		t.Errorf("start of a misspelt VM: %v", err)
	}
	_, err = podvirtctl(t, ns, "console", "ghost")
	if err == nil || !strings.Contains(err.Error(), `vmi "ghost" not found`) {
		t.Errorf("console of a missing VMI: %v", err)
	}
	if _, err := podvirtctl(t, ns, "start"); err == nil || !strings.Contains(err.Error(), "needs exactly one VM name") {
		t.Errorf("start without a name: %v", err)
	}
}

// asJSON is v's spec and status, for failure messages.
func asJSON(vm *v1.VirtualMachine) string {
	b, _ := json.Marshal(map[string]any{"spec": vm.Spec, "status": vm.Status})
	return string(b)
}
