package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// What start, stop and restart do, as virtctl does with KubeVirt, adapted
// to what podvirt's controller honours (api/v1alpha1, controller/vm.go):
//
//	strategy        start                         stop                  restart
//	Always          refused: it runs by itself    runStrategy → Halted  Stop(uid)
//	RerunOnFailure  Start request                 Stop(uid)             Stop(uid), Start
//	Manual          Start request                 Stop(uid)             Stop(uid), Start
//	Once            Start request                 runStrategy → Halted  refused
//	Halted          runStrategy → Always          refused: not running  refused
//
// A start of a VM whose VMI has finished asks Stop(uid) first, so the
// controller replaces the finished VMI. Requests go into
// status.stateChangeRequests by a JSON patch that tests the list it
// extends, and spec.runStrategy changes test the old value, so a
// concurrent change makes the command re-read and decide again.

// jsonPatchOp is one RFC 6902 operation.
type jsonPatchOp struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value,omitempty"`
}

// MarshalJSON keeps "value": null for test operations (absent means null
// there, and the API server's test must see it).
func (p jsonPatchOp) MarshalJSON() ([]byte, error) {
	m := map[string]any{"op": p.Op, "path": p.Path}
	if p.Op != "remove" {
		m["value"] = p.Value
	}
	return json.Marshal(m)
}

// change is what one command writes to a VM.
type change struct {
	spec   []jsonPatchOp // to the VM
	status []jsonPatchOp // to the VM's status subresource
	done   string        // what happened, for the user
}

// plan decides a change from the VM and its VMI (nil when none).
type plan func(vm *v1.VirtualMachine, vmi *v1.VirtualMachineInstance) (change, error)

func (o *options) startCommand() *cobra.Command {
	return o.lifecycleCommand("start", "Start a VM", o.planStart)
}

func (o *options) stopCommand() *cobra.Command {
	return o.lifecycleCommand("stop", "Stop a VM", o.planStop)
}

func (o *options) restartCommand() *cobra.Command {
	return o.lifecycleCommand("restart", "Restart a VM: its VMI is deleted and the controller starts a new one", o.planRestart)
}

func (o *options) lifecycleCommand(verb, short string, p plan) *cobra.Command {
	return &cobra.Command{
		Use:               verb + " VM",
		Short:             short,
		Args:              exactlyOneName("VM"),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.apply(ctx, args[0], p)
		}),
	}
}

// apply plans and writes a change, planning again when the VM changed
// under it.
func (s *session) apply(ctx context.Context, name string, p plan) (string, error) {
	const attempts = 5
	for i := 1; ; i++ {
		vm, err := s.getVM(ctx, name)
		if err != nil {
			return "", err
		}
		vmi, err := s.getVMI(ctx, name)
		if err != nil {
			return "", err
		}
		if vmi != nil && !ownedBy(vmi, vm) {
			return "", fmt.Errorf("vmi %q in namespace %q does not belong to vm %q (it has no controller reference to it): delete that VMI or rename the VM", vmi.Name, s.ns, vm.Name)
		}
		ch, err := p(vm, vmi)
		if err != nil {
			return "", err
		}
		err = s.write(ctx, vm, ch)
		if err == nil {
			return ch.done, nil
		}
		if !changedMeanwhile(err) || i == attempts {
			return "", err
		}
	}
}

func ownedBy(vmi *v1.VirtualMachineInstance, vm *v1.VirtualMachine) bool {
	for _, r := range vmi.OwnerReferences {
		if r.UID == vm.UID && r.Controller != nil && *r.Controller {
			return true
		}
	}
	return false
}

func (s *session) write(ctx context.Context, vm *v1.VirtualMachine, ch change) error {
	if len(ch.spec) > 0 {
		b, err := json.Marshal(ch.spec)
		if err != nil {
			return err
		}
		if err := s.c.Patch(ctx, vm, client.RawPatch(types.JSONPatchType, b)); err != nil {
			return s.patchError(err, "virtualmachines", vm.Name)
		}
	}
	if len(ch.status) > 0 {
		b, err := json.Marshal(ch.status)
		if err != nil {
			return err
		}
		if err := s.c.Status().Patch(ctx, vm, client.RawPatch(types.JSONPatchType, b)); err != nil {
			return s.patchError(err, "virtualmachines/status", vm.Name)
		}
	}
	return nil
}

// errChanged is a patch whose test failed: the VM changed since it was
// read.
type errChanged struct{ err error }

func (e errChanged) Error() string {
	return fmt.Sprintf("the VM changed while it was being updated (%v): run the command again", e.err)
}

func changedMeanwhile(err error) bool {
	return errors.As(err, new(errChanged))
}

func (s *session) patchError(err error, resource, name string) error {
	if apierrors.IsConflict(err) || (apierrors.IsInvalid(err) && strings.Contains(err.Error(), "test operation")) ||
		strings.Contains(err.Error(), "testing value") {
		return errChanged{err}
	}
	return s.apiError(err, "patch", resource, name)
}

func (o *options) planStart(vm *v1.VirtualMachine, vmi *v1.VirtualMachineInstance) (change, error) {
	name, strategy := vm.Name, vm.Spec.RunStrategy
	if running(vmi) {
		return change{}, fmt.Errorf("vm %s is already running (%s): to start it afresh use `%s restart %s`", name, vmState(vm, vmi), o.name, name)
	}
	switch strategy {
	case v1.RunStrategyHalted:
		return change{
			spec: runStrategyPatch(vm, v1.RunStrategyAlways),
			done: fmt.Sprintf("vm %s was scheduled to start (runStrategy %s → %s)", name, strategy, v1.RunStrategyAlways),
		}, nil
	case v1.RunStrategyAlways:
		return change{}, fmt.Errorf("vm %s has runStrategy Always, so the controller starts it by itself (now %s): see `kubectl describe vm %s -n %s` for why it is not running",
			name, vmState(vm, vmi), name, vm.Namespace)
	case v1.RunStrategyRerunOnFailure:
		if vmi != nil && vmi.DeletionTimestamp == nil && vmi.Status.Phase == v1.Failed {
			return change{}, fmt.Errorf("vm %s failed and runStrategy RerunOnFailure restarts it by itself after a back-off: see `kubectl describe vm %s -n %s`", name, name, vm.Namespace)
		}
	}
	reqs := []v1.VirtualMachineStateChangeRequest{{Action: v1.StartRequest}}
	if vmi != nil && vmi.DeletionTimestamp == nil {
		// A finished VMI: the controller deletes it, then starts anew.
		reqs = append([]v1.VirtualMachineStateChangeRequest{stopRequest(vmi)}, reqs...)
	}
	st, err := stateChangePatch(vm, reqs)
	if err != nil {
		return change{}, err
	}
	return change{status: st, done: fmt.Sprintf("vm %s was scheduled to start", name)}, nil
}

func (o *options) planStop(vm *v1.VirtualMachine, vmi *v1.VirtualMachineInstance) (change, error) {
	name, strategy := vm.Name, vm.Spec.RunStrategy
	switch strategy {
	case v1.RunStrategyAlways, v1.RunStrategyOnce:
		return change{
			spec: runStrategyPatch(vm, v1.RunStrategyHalted),
			done: fmt.Sprintf("vm %s was scheduled to stop (runStrategy %s → %s)", name, strategy, v1.RunStrategyHalted),
		}, nil
	case v1.RunStrategyHalted:
		if running(vmi) {
			return change{}, fmt.Errorf("vm %s has runStrategy Halted and is already being stopped", name)
		}
		return change{}, fmt.Errorf("vm %s is not running (%s): there is nothing to stop", name, vmState(vm, vmi))
	}
	if !running(vmi) {
		return change{}, fmt.Errorf("vm %s is not running (%s): there is nothing to stop", name, vmState(vm, vmi))
	}
	st, err := stateChangePatch(vm, []v1.VirtualMachineStateChangeRequest{stopRequest(vmi)})
	if err != nil {
		return change{}, err
	}
	return change{status: st, done: fmt.Sprintf("vm %s was scheduled to stop", name)}, nil
}

func (o *options) planRestart(vm *v1.VirtualMachine, vmi *v1.VirtualMachineInstance) (change, error) {
	name, strategy := vm.Name, vm.Spec.RunStrategy
	switch strategy {
	case v1.RunStrategyHalted:
		return change{}, fmt.Errorf("vm %s has runStrategy Halted, which keeps it stopped: start it with `%s start %s`", name, o.name, name)
	case v1.RunStrategyOnce:
		return change{}, fmt.Errorf("vm %s has runStrategy Once, which runs it only once: set spec.runStrategy to Always or Manual to restart it", name)
	}
	if vmi == nil {
		return change{}, fmt.Errorf("vm %s is not running (%s): start it with `%s start %s`", name, vmState(vm, vmi), o.name, name)
	}
	if vmi.DeletionTimestamp != nil {
		return change{}, fmt.Errorf("vm %s is already stopping: the controller starts it again once it has stopped (runStrategy %s)", name, strategy)
	}
	reqs := []v1.VirtualMachineStateChangeRequest{stopRequest(vmi)}
	if strategy != v1.RunStrategyAlways {
		// Under Always the controller starts a new VMI by itself and
		// ignores (with a warning) a start request.
		reqs = append(reqs, v1.VirtualMachineStateChangeRequest{Action: v1.StartRequest})
	}
	st, err := stateChangePatch(vm, reqs)
	if err != nil {
		return change{}, err
	}
	return change{status: st, done: fmt.Sprintf("vm %s was scheduled to restart", name)}, nil
}

func stopRequest(vmi *v1.VirtualMachineInstance) v1.VirtualMachineStateChangeRequest {
	uid := vmi.UID
	return v1.VirtualMachineStateChangeRequest{Action: v1.StopRequest, UID: &uid}
}

// runStrategyPatch changes spec.runStrategy, if it still is what was read.
func runStrategyPatch(vm *v1.VirtualMachine, to v1.RunStrategy) []jsonPatchOp {
	return []jsonPatchOp{
		{Op: "test", Path: "/spec/runStrategy", Value: vm.Spec.RunStrategy},
		{Op: "replace", Path: "/spec/runStrategy", Value: to},
	}
}

// stateChangePatch adds reqs to status.stateChangeRequests, if the list is
// still what was read. A pending request is only replaced by a single
// Stop; anything else waits for the controller to act on it. A user's
// start also clears the crash-loop back-off.
func stateChangePatch(vm *v1.VirtualMachine, reqs []v1.VirtualMachineStateChangeRequest) ([]jsonPatchOp, error) {
	if equality.Semantic.DeepEqual(vm.Status, v1.VirtualMachineStatus{}) {
		return []jsonPatchOp{{Op: "add", Path: "/status", Value: v1.VirtualMachineStatus{StateChangeRequests: reqs}}}, nil
	}
	var ops []jsonPatchOp
	pending := vm.Status.StateChangeRequests
	switch {
	case len(pending) == 0:
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: "/status/stateChangeRequests", Value: nil},
			jsonPatchOp{Op: "add", Path: "/status/stateChangeRequests", Value: reqs})
	case len(reqs) == 1 && reqs[0].Action == v1.StopRequest:
		ops = append(ops,
			jsonPatchOp{Op: "test", Path: "/status/stateChangeRequests", Value: pending},
			jsonPatchOp{Op: "replace", Path: "/status/stateChangeRequests", Value: reqs})
	default:
		return nil, fmt.Errorf("vm %s already has a start or stop under way (%s): wait until the controller has acted on it (`kubectl get vm %s -n %s -o jsonpath='{.status.stateChangeRequests}'` is empty), then try again",
			vm.Name, describeRequests(pending), vm.Name, vm.Namespace)
	}
	if vm.Status.StartFailure != nil {
		ops = append(ops, jsonPatchOp{Op: "remove", Path: "/status/startFailure"})
	}
	return ops, nil
}

func describeRequests(reqs []v1.VirtualMachineStateChangeRequest) string {
	var out []string
	for _, r := range reqs {
		out = append(out, string(r.Action))
	}
	return strings.Join(out, ", ")
}

// completeVMs completes VM names in the namespace for shell completion.
func (o *options) completeVMs(cmd *cobra.Command, args []string, toComplete string) ([]string, cobra.ShellCompDirective) {
	if len(args) > 0 {
		return nil, cobra.ShellCompDirectiveNoFileComp
	}
	s, err := o.session()
	if err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	list := &v1.VirtualMachineList{}
	if err := s.c.List(cmd.Context(), list, client.InNamespace(s.ns)); err != nil {
		return nil, cobra.ShellCompDirectiveError
	}
	var names []string
	for _, vm := range list.Items {
		if strings.HasPrefix(vm.Name, toComplete) {
			names = append(names, vm.Name)
		}
	}
	return names, cobra.ShellCompDirectiveNoFileComp
}
