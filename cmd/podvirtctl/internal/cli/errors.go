package cli

import (
	"context"
	"fmt"
	"sort"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// apiError turns an error of an API call (verb on resource, e.g. "patch"
// on "virtualmachines/status") into one that says what to do.
func (s *session) apiError(err error, verb, resource, name string) error {
	group := v1.GroupVersion.Group
	if !strings.Contains(resource, "virtualmachine") {
		group = "" // core: pods, pods/exec
	}
	where := fmt.Sprintf("in namespace %q", s.ns)
	switch {
	case apierrors.IsForbidden(err):
		grp := "the core API group"
		if group != "" {
			grp = "API group " + group
		}
		return fmt.Errorf("not allowed to %s %s %q %s: %w\nask a cluster admin for a Role granting verb %q on resource %q (%s) %s",
			verb, resource, name, where, err, verb, resource, grp, where)
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%s %s %q: the API server did not accept your credentials (%w): check --kubeconfig and --context, or log in again", verb, resource, name, err)
	}
	return fmt.Errorf("%s %s %q %s: %w", verb, resource, name, where, err)
}

// getVM reads the VM; when it does not exist the error lists the VMs
// that do.
func (s *session) getVM(ctx context.Context, name string) (*v1.VirtualMachine, error) {
	vm := &v1.VirtualMachine{}
	err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, vm)
	if apierrors.IsNotFound(err) {
		return nil, s.notFound(ctx, "vm", name)
	}
	if err != nil {
		return nil, s.apiError(err, "get", "virtualmachines", name)
	}
	return vm, nil
}

// getVMI reads the VMI, nil when there is none.
func (s *session) getVMI(ctx context.Context, name string) (*v1.VirtualMachineInstance, error) {
	vmi := &v1.VirtualMachineInstance{}
	err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, vmi)
	if apierrors.IsNotFound(err) {
		return nil, nil
	}
	if err != nil {
		return nil, s.apiError(err, "get", "virtualmachineinstances", name)
	}
	return vmi, nil
}

// notFound says that kind name does not exist in the namespace and what
// does.
func (s *session) notFound(ctx context.Context, kind, name string) error {
	var names []string
	var listErr error
	if kind == "vm" {
		list := &v1.VirtualMachineList{}
		if listErr = s.c.List(ctx, list, client.InNamespace(s.ns)); listErr == nil {
			for _, vm := range list.Items {
				names = append(names, vm.Name)
			}
		}
	} else {
		list := &v1.VirtualMachineInstanceList{}
		if listErr = s.c.List(ctx, list, client.InNamespace(s.ns)); listErr == nil {
			for _, vmi := range list.Items {
				names = append(names, vmi.Name)
			}
		}
	}
	msg := fmt.Sprintf("%s %q not found in namespace %q", kind, name, s.ns)
	switch {
	case listErr != nil:
		return fmt.Errorf("%s: see `kubectl get %s -n %s` (or -A for every namespace)", msg, kind, s.ns)
	case len(names) == 0:
		return fmt.Errorf("%s, which has no %ss: pick the namespace with -n (`kubectl get %s -A` lists them all)", msg, kind, kind)
	}
	sort.Strings(names)
	return fmt.Errorf("%s; %ss there: %s (or pick another namespace with -n)", msg, kind, strings.Join(names, ", "))
}

// running reports whether vmi is a VMI that runs or is on its way to
// running: not being deleted, not finished.
func running(vmi *v1.VirtualMachineInstance) bool {
	return vmi != nil && vmi.DeletionTimestamp == nil && !vmi.Status.Phase.IsFinal()
}

// vmState is the VM's state in one word for messages.
func vmState(vm *v1.VirtualMachine, vmi *v1.VirtualMachineInstance) string {
	if vm != nil && vm.Status.PrintableStatus != "" {
		return string(vm.Status.PrintableStatus)
	}
	switch {
	case vmi == nil:
		return string(v1.PrintableStatusStopped)
	case vmi.DeletionTimestamp != nil:
		return string(v1.PrintableStatusStopping)
	case vmi.Status.Phase == "":
		return string(v1.Pending)
	}
	return string(vmi.Status.Phase)
}
