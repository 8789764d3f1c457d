package controller

import (
	"context"
	"fmt"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/selection"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// ReasonWaitingForKVMProbe: with EmulationAuto, no node the VMI may run on
// has reported its KVM probe yet.
const ReasonWaitingForKVMProbe = "WaitingForKVMProbe"

// probeRetry is how soon a VMI waiting for the nodes' KVM probe is looked
// at again.
const probeRetry = 5 * time.Second

// emulationFor decides, with EmulationAuto, whether vmi's guest is
// emulated. The node daemon's device plugin registers devices.podvirt.io/kvm
// on every node and marks it unhealthy (allocatable 0) where runtime/kvm's
// probe fails, so a node's capacity says it was probed and its allocatable
// says whether KVM runs guests there. The VMI gets KVM when a node it may
// run on has working KVM — the scheduler then keeps it to such nodes — and
// TCG when every probed node it may run on lacks it. wait is non-empty
// when none of those nodes has been probed yet (the node daemon is
// starting): deciding then would emulate a guest that KVM could run.
func emulationFor(vmi *v1alpha1.VirtualMachineInstance, nodes []corev1.Node) (emulate bool, wait string) {
	var candidates, probed int
	for i := range nodes {
		node := &nodes[i]
		if !mayRunOn(vmi, node) {
			continue
		}
		candidates++
		if _, ok := node.Status.Capacity[v1alpha1.KVMDevice]; !ok {
			continue
		}
		probed++
		if q, ok := node.Status.Allocatable[v1alpha1.KVMDevice]; ok && q.Sign() > 0 {
			return false, ""
		}
	}
	switch {
	case candidates == 0:
		// Nothing fits: the scheduler will say why; emulation asks for
		// the least.
		return true, ""
	case probed == 0:
		return false, fmt.Sprintf("none of the %d nodes the VMI may run on has reported %s yet: the node daemon (podvirt-handler) "+
			"registers it after probing KVM at start; check that its pods run there (kubectl get pods -A -l app.kubernetes.io/component=handler)",
			candidates, v1alpha1.KVMDevice)
	}
	return true, ""
}

// mayRunOn reports whether the scheduler could put vmi's launcher pod on
// node as far as placement goes: the node takes pods, its labels match the
// VMI's nodeSelector and required node affinity, and the VMI tolerates its
// NoSchedule and NoExecute taints. Resources are the scheduler's business.
func mayRunOn(vmi *v1alpha1.VirtualMachineInstance, node *corev1.Node) bool {
	if node.Spec.Unschedulable {
		return false
	}
	if !labels.SelectorFromSet(vmi.Spec.NodeSelector).Matches(labels.Set(node.Labels)) {
		return false
	}
	if a := vmi.Spec.Affinity; a != nil && a.NodeAffinity != nil && a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution != nil {
		if !matchesNodeSelector(a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution, node) {
			return false
		}
	}
	for i := range node.Spec.Taints {
		taint := &node.Spec.Taints[i]
		if taint.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		tolerated := false
		for j := range vmi.Spec.Tolerations {
			if vmi.Spec.Tolerations[j].ToleratesTaint(logr.Discard(), taint, false) {
				tolerated = true
				break
			}
		}
		if !tolerated {
			return false
		}
	}
	return true
}

// matchesNodeSelector reports whether node matches one of sel's terms, as
// the scheduler reads them: the terms are ORed, a term's requirements
// ANDed, and an empty term matches nothing.
func matchesNodeSelector(sel *corev1.NodeSelector, node *corev1.Node) bool {
	for _, term := range sel.NodeSelectorTerms {
		if len(term.MatchExpressions) == 0 && len(term.MatchFields) == 0 {
			continue
		}
		if requirementsMatch(term.MatchExpressions, labels.Set(node.Labels)) &&
			requirementsMatch(term.MatchFields, labels.Set{"metadata.name": node.Name}) {
			return true
		}
	}
	return false
}

var nodeSelectorOps = map[corev1.NodeSelectorOperator]selection.Operator{
	corev1.NodeSelectorOpIn:           selection.In,
	corev1.NodeSelectorOpNotIn:        selection.NotIn,
	corev1.NodeSelectorOpExists:       selection.Exists,
	corev1.NodeSelectorOpDoesNotExist: selection.DoesNotExist,
	corev1.NodeSelectorOpGt:           selection.GreaterThan,
	corev1.NodeSelectorOpLt:           selection.LessThan,
}

// requirementsMatch reports whether set meets every requirement; one that
// does not parse (the API server validates them) matches nothing.
func requirementsMatch(reqs []corev1.NodeSelectorRequirement, set labels.Set) bool {
	for _, r := range reqs {
		op, ok := nodeSelectorOps[r.Operator]
		if !ok {
			return false
		}
		req, err := labels.NewRequirement(r.Key, op, r.Values)
		if err != nil || !req.Matches(set) {
			return false
		}
	}
	return true
}

// emulation is whether vmi's launcher pod goes without KVM: the
// configuration's UseEmulation, or with EmulationAuto what emulationFor
// makes of the cached nodes. wait is as for emulationFor.
func (r *VMIReconciler) emulation(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance) (emulate bool, wait string, err error) {
	if !r.Config.EmulationAuto {
		return r.Config.UseEmulation, "", nil
	}
	nodes := &corev1.NodeList{}
	if err := r.Client.List(ctx, nodes); err != nil {
		return false, "", fmt.Errorf("list nodes to decide whether VMI %s/%s needs emulation: %w", vmi.Namespace, vmi.Name, err)
	}
	emulate, wait = emulationFor(vmi, nodes.Items)
	return emulate, wait, nil
}

// accel names the guest's accelerator for events.
func accel(emulate bool) string {
	if emulate {
		return "emulated: TCG, no devices.podvirt.io/kvm"
	}
	return "KVM"
}
