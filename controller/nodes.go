package controller

import (
	"context"
	"fmt"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// indexNode indexes VMIs by the node they run on.
const indexNode = "status.nodeName"

func nodeIndex(obj client.Object) []string {
	if vmi, ok := obj.(*v1alpha1.VirtualMachineInstance); ok && vmi.Status.NodeName != "" {
		return []string{vmi.Status.NodeName}
	}
	return nil
}

// nodeReadiness is a node's Ready condition, Unknown when it has none.
func nodeReadiness(node *corev1.Node) corev1.NodeCondition {
	for _, c := range node.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c
		}
	}
	return corev1.NodeCondition{Type: corev1.NodeReady, Status: corev1.ConditionUnknown, Reason: "NoReadyCondition"}
}

// readinessChanged passes a node's events only when its readiness changes
// (or it comes or goes), not for every status heartbeat.
var readinessChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*corev1.Node)
		cur, okNew := e.ObjectNew.(*corev1.Node)
		return !okOld || !okNew || nodeReadiness(old).Status != nodeReadiness(cur).Status
	},
}

// vmisOnNode maps a node to the VMIs that run on it.
func (r *VMIReconciler) vmisOnNode(ctx context.Context, node client.Object) []reconcile.Request {
	vmis := &v1alpha1.VirtualMachineInstanceList{}
	if err := r.Client.List(ctx, vmis, client.MatchingFields{indexNode: node.GetName()}); err != nil {
		log.FromContext(ctx).Error(err, "list the VMIs of a node whose readiness changed", "node", node.GetName())
		return nil
	}
	out := make([]reconcile.Request, 0, len(vmis.Items))
	for i := range vmis.Items {
		out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&vmis.Items[i])})
	}
	return out
}

// nodeLost says why vmi's node cannot vouch for it ("" when it can): the
// node is not Ready — its kubelet stopped reporting (a power loss, a
// partition) or reports it unhealthy. What runs there is unknown until it
// is back; the VMI's disks are node-local and wait there. A node that is
// gone is not lost: the pod garbage collector removes its pods, and the
// VMI fails with its pod.
func (r *VMIReconciler) nodeLost(ctx context.Context, vmi *v1alpha1.VirtualMachineInstance) (string, error) {
	name := vmi.Status.NodeName
	if name == "" {
		return "", nil
	}
	node := &corev1.Node{}
	err := r.Client.Get(ctx, types.NamespacedName{Name: name}, node)
	if apierrors.IsNotFound(err) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("get node %s of VMI %s/%s: %w", name, vmi.Namespace, vmi.Name, err)
	}
	ready := nodeReadiness(node)
	if ready.Status == corev1.ConditionTrue {
		return "", nil
	}
	why := fmt.Sprintf("node %s is not ready since %s (%s: %s): the VM's state is unknown until the node is back", name,
		ready.LastTransitionTime.UTC().Format("15:04:05"), ready.Reason, strings.TrimSuffix(ready.Message, "."))
	if claims := claimNames(vmi); len(claims) > 0 {
		why += fmt.Sprintf("; its disks (pvc %s) are on that node", strings.Join(claims, ", "))
	}
	return why, nil
}

// claimNames lists the PVCs vmi's volumes use.
func claimNames(vmi *v1alpha1.VirtualMachineInstance) []string {
	var names []string
	for _, v := range vmi.Spec.Volumes {
		if v.PersistentVolumeClaim != nil {
			names = append(names, v.PersistentVolumeClaim.ClaimName)
		}
	}
	return names
}
