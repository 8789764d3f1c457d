package controller

import (
	"encoding/json"
	"fmt"
	"reflect"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// The VM's RestartRequired condition (KubeVirt's): True while its VMI runs
// from a template the user has changed since; the VMI goes on unchanged and
// the change takes effect at the next start.
const (
	ConditionRestartRequired = "RestartRequired"
	ReasonTemplateChanged    = "TemplateChanged"
)

// setRestartRequired sets or clears the VM's RestartRequired condition from
// what differs between its template and the spec vmi runs (nil: none
// runs), and says so in an event when it turns on.
func (r *VMReconciler) setRestartRequired(vm *v1alpha1.VirtualMachine, vmi *v1alpha1.VirtualMachineInstance) {
	var changed []string
	// Naming the fields decodes both specs as JSON: only when they differ,
	// which they seldom do.
	if vmi != nil && vmi.DeletionTimestamp == nil && !vmi.Status.Phase.IsFinal() &&
		!equality.Semantic.DeepEqual(vm.Spec.Template.Spec, vmi.Spec) {
		changed = specChanges(&vm.Spec.Template.Spec, &vmi.Spec)
	}
	if len(changed) == 0 {
		meta.RemoveStatusCondition(&vm.Status.Conditions, ConditionRestartRequired)
		return
	}
	msg := fmt.Sprintf("spec.template.spec %s changed since VMI %s started; restart the VM to apply (podvirtctl restart %s)",
		strings.Join(changed, ", "), vmi.Name, vm.Name)
	if old := meta.FindStatusCondition(vm.Status.Conditions, ConditionRestartRequired); old == nil || old.Message != msg {
		r.Recorder.Eventf(vm, vmi, corev1.EventTypeNormal, ConditionRestartRequired, "Update", "%s", msg)
	}
	meta.SetStatusCondition(&vm.Status.Conditions, metav1.Condition{
		Type: ConditionRestartRequired, Status: metav1.ConditionTrue, Reason: ReasonTemplateChanged,
		Message: msg, ObservedGeneration: vm.Generation,
	})
}

// specChanges names the fields of want that running lacks or has
// otherwise: the top-level fields, and domain's one level down.
func specChanges(want, running *v1alpha1.VirtualMachineInstanceSpec) []string {
	w, r := fieldsOf(want), fieldsOf(running)
	var changed []string
	for k := range union(w, r) {
		if k == "domain" {
			wd, _ := w[k].(map[string]any)
			rd, _ := r[k].(map[string]any)
			for dk := range union(wd, rd) {
				if !reflect.DeepEqual(wd[dk], rd[dk]) {
					changed = append(changed, "domain."+dk)
				}
			}
			continue
		}
		if !reflect.DeepEqual(w[k], r[k]) {
			changed = append(changed, k)
		}
	}
	sort.Strings(changed)
	return changed
}

// fieldsOf is spec as JSON decodes it: empty fields are absent, quantities
// in their canonical form.
func fieldsOf(spec *v1alpha1.VirtualMachineInstanceSpec) map[string]any {
	b, err := json.Marshal(spec)
	if err != nil {
		panic(fmt.Sprintf("marshal a VMI spec: %v", err)) // only plain API types
	}
	m := map[string]any{}
	if err := json.Unmarshal(b, &m); err != nil {
		panic(fmt.Sprintf("unmarshal a VMI spec: %v", err))
	}
	return m
}

func union(a, b map[string]any) map[string]bool {
	keys := map[string]bool{}
	for k := range a {
		keys[k] = true
	}
	for k := range b {
		keys[k] = true
	}
	return keys
}
