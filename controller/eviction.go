package controller

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/predicate"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// Node drain with evictionStrategy LiveMigrate, without a webhook: every
// such running VMI has a PodDisruptionBudget over its launcher pods, so
// `kubectl drain` cannot evict the pod (the eviction API answers 429 and
// drain tries again); the controller sees the node cordoned and migrates
// the VMI away; the source pod then ends, which drain no longer waits for.
// A VMI that cannot move keeps its budget, so the drain waits, and its
// migration says why.

const (
	// evacuationRetry is how often a cordoned node is looked at again while
	// VMIs that must leave it are still there.
	evacuationRetry = 15 * time.Second
	// ReasonEvacuating is the VMI event when a drain moves it.
	ReasonEvacuating = "Evacuating"
)

// evictionStrategy is vmi's strategy, or the cluster's default.
func evictionStrategy(vmi *v1alpha1.VirtualMachineInstance, cfg *Config) v1alpha1.EvictionStrategy {
	if s := vmi.Spec.EvictionStrategy; s != nil && *s != "" {
		return *s
	}
	if cfg.DefaultEvictionStrategy != "" {
		return cfg.DefaultEvictionStrategy
	}
	return v1alpha1.EvictionStrategyNone
}

// disruptionBudgetName is the name of vmi's PodDisruptionBudget.
func disruptionBudgetName(vmi *v1alpha1.VirtualMachineInstance) string {
	return "podvirt-" + vmi.Name + "-" + shortUID(vmi.UID)
}

// syncDisruptionBudget keeps the budget of a running LiveMigrate VMI: one
// launcher pod must stay, two while a migration has both (so neither is
// evicted mid-way). Other VMIs have none.
func syncDisruptionBudget(ctx context.Context, c client.Client, vmi *v1alpha1.VirtualMachineInstance, cfg *Config, migrating bool) error {
	pdb := &policyv1.PodDisruptionBudget{}
	key := types.NamespacedName{Namespace: vmi.Namespace, Name: disruptionBudgetName(vmi)}
	err := c.Get(ctx, key, pdb)
	if err != nil && !apierrors.IsNotFound(err) {
		return fmt.Errorf("get PodDisruptionBudget %s: %w", key, err)
	}
	exists := err == nil
	want := evictionStrategy(vmi, cfg) == v1alpha1.EvictionStrategyLiveMigrate && vmi.DeletionTimestamp == nil && !vmi.Status.Phase.IsFinal()
	if !want {
		if exists {
			if err := c.Delete(ctx, pdb); err != nil && !apierrors.IsNotFound(err) {
				return fmt.Errorf("delete PodDisruptionBudget %s: %w", key, err)
			}
		}
		return nil
	}
	minAvailable := intstr.FromInt32(1)
	if migrating {
		minAvailable = intstr.FromInt32(2)
	}
	if exists {
		if pdb.Spec.MinAvailable != nil && *pdb.Spec.MinAvailable == minAvailable {
			return nil
		}
		patch := client.MergeFrom(pdb.DeepCopy())
		pdb.Spec.MinAvailable = &minAvailable
		if err := c.Patch(ctx, pdb, patch); err != nil {
			return fmt.Errorf("update PodDisruptionBudget %s: %w", key, err)
		}
		return nil
	}
	pdb = &policyv1.PodDisruptionBudget{
		ObjectMeta: metav1.ObjectMeta{Name: key.Name, Namespace: key.Namespace,
			Labels: map[string]string{v1alpha1.VMINameLabel: vmi.Name},
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(vmi,
				v1alpha1.GroupVersion.WithKind("VirtualMachineInstance"))}},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MinAvailable: &minAvailable,
			Selector:     &metav1.LabelSelector{MatchLabels: map[string]string{v1alpha1.CreatedByLabel: string(vmi.UID)}},
		},
	}
	if err := c.Create(ctx, pdb); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create PodDisruptionBudget %s: %w", key, err)
	}
	return nil
}

// EvacuationReconciler migrates LiveMigrate VMIs off cordoned nodes.
type EvacuationReconciler struct {
	Client   client.Client
	Recorder eventRecorder
	Config   *Config
}

// cordonChanged passes a node's events when it is cordoned or uncordoned.
var cordonChanged = predicate.Funcs{
	UpdateFunc: func(e event.UpdateEvent) bool {
		old, okOld := e.ObjectOld.(*corev1.Node)
		cur, okNew := e.ObjectNew.(*corev1.Node)
		return !okOld || !okNew || old.Spec.Unschedulable != cur.Spec.Unschedulable
	},
}

// SetupWithManager watches nodes.
func (r *EvacuationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).
		Named("evacuation").
		For(&corev1.Node{}, builder.WithPredicates(cordonChanged)).
		Complete(r)
}

// Reconcile starts a migration for every LiveMigrate VMI on a cordoned
// node that has none running.
func (r *EvacuationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	node := &corev1.Node{}
	if err := r.Client.Get(ctx, req.NamespacedName, node); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if !node.Spec.Unschedulable {
		return ctrl.Result{}, nil
	}
	vmis := &v1alpha1.VirtualMachineInstanceList{}
	if err := r.Client.List(ctx, vmis, client.MatchingFields{indexNode: node.Name}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list the VMIs on node %s: %w", node.Name, err)
	}
	migrations := &v1alpha1.VirtualMachineInstanceMigrationList{}
	if err := r.Client.List(ctx, migrations); err != nil {
		return ctrl.Result{}, fmt.Errorf("list migrations: %w", err)
	}
	busy := map[types.NamespacedName]bool{}
	for _, m := range migrations.Items {
		if !m.Status.Phase.IsFinal() {
			busy[types.NamespacedName{Namespace: m.Namespace, Name: m.Spec.VMIName}] = true
		}
	}
	left := 0
	for i := range vmis.Items {
		vmi := &vmis.Items[i]
		if evictionStrategy(vmi, r.Config) != v1alpha1.EvictionStrategyLiveMigrate || vmi.Status.Phase != v1alpha1.Running || vmi.DeletionTimestamp != nil {
			continue
		}
		left++
		if busy[client.ObjectKeyFromObject(vmi)] {
			continue
		}
		m := &v1alpha1.VirtualMachineInstanceMigration{
			ObjectMeta: metav1.ObjectMeta{GenerateName: vmi.Name + "-evacuation-", Namespace: vmi.Namespace,
				Labels: map[string]string{v1alpha1.EvacuationLabel: node.Name, v1alpha1.VMINameLabel: vmi.Name}},
			Spec: v1alpha1.VirtualMachineInstanceMigrationSpec{VMIName: vmi.Name},
		}
		if err := r.Client.Create(ctx, m); err != nil {
			return ctrl.Result{}, fmt.Errorf("migrate VMI %s/%s off cordoned node %s: %w", vmi.Namespace, vmi.Name, node.Name, err)
		}
		r.Recorder.Eventf(vmi, m, corev1.EventTypeNormal, ReasonEvacuating, "Evacuate",
			"node %s is cordoned (drained): migrating to another node (vmim %s)", node.Name, m.Name)
	}
	if left > 0 {
		// Until they have left: a failed migration is tried again.
		return ctrl.Result{RequeueAfter: evacuationRetry}, nil
	}
	return ctrl.Result{}, nil
}
