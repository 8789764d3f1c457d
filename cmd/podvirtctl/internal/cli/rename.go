package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/util/validation"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// renameCommand is `rename VM NEWNAME`: it asks the controller to rename a
// stopped VM (one annotation, so a killed client leaves nothing half
// done) and waits for it.
func (o *options) renameCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rename VM NEWNAME",
		Short: "Rename a stopped VM: it keeps its disks, MACs, addresses and run strategy",
		Long: `rename asks the controller to rename a stopped VM: it makes the VM NEWNAME with
the same spec (MACs and addresses included), gives it the disk-template claims
and deletes VM. It refuses a NEWNAME that exists and a VM that runs. If this
command is interrupted the controller still finishes; there is always one VM
holding the disks. For a label that can change any time, set spec.displayName.`,
		Example:           fmt.Sprintf("  %s rename web-1 frontend", o.name),
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.rename(ctx, args[0], args[1], timeout)
		}),
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "how long to wait for the controller to finish")
	return cmd
}

func (s *session) rename(ctx context.Context, name, to string, timeout time.Duration) (string, error) {
	if errs := validation.IsDNS1123Subdomain(to); len(errs) > 0 {
		return "", fmt.Errorf("%q is not a valid VM name: %s", to, errs[0])
	}
	if to == name {
		return "", fmt.Errorf("vm %s is named %s already", name, to)
	}
	vm, err := s.getVM(ctx, name)
	if err != nil {
		return "", err
	}
	switch cur := vm.Annotations[v1.RenameToAnnotation]; {
	case vm.Annotations[v1.RenamedFromAnnotation] != "":
		return "", fmt.Errorf("vm %s is being made by renaming %s: wait for that rename to end", name, vm.Annotations[v1.RenamedFromAnnotation])
	case cur != "" && cur != to:
		return "", fmt.Errorf("vm %s is being renamed to %s already", name, cur)
	}
	vmi, err := s.getVMI(ctx, name)
	if err != nil {
		return "", err
	}
	if vmi != nil {
		return "", fmt.Errorf("vm %s runs (vmi %s is %s): stop it first (%s stop %s)", name, vmi.Name, vmi.Status.Phase, s.o.name, name)
	}
	if rs := vm.Spec.RunStrategy; rs != v1.RunStrategyHalted && rs != v1.RunStrategyManual {
		return "", fmt.Errorf("vm %s has run strategy %s, which would start it: stop it first (%s stop %s)", name, rs, s.o.name, name)
	}
	other := &v1.VirtualMachine{}
	err = s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: to}, other)
	switch {
	case err == nil && other.Annotations[v1.RenamedFromAnnotation] != name:
		return "", fmt.Errorf("vm %s exists already in namespace %s: choose another name, or delete it first", to, s.ns)
	case err != nil && !apierrors.IsNotFound(err):
		return "", s.apiError(err, "get", "virtualmachines", to)
	}
	patch := client.MergeFromWithOptions(vm.DeepCopy(), client.MergeFromWithOptimisticLock{})
	if vm.Annotations == nil {
		vm.Annotations = map[string]string{}
	}
	vm.Annotations[v1.RenameToAnnotation] = to
	if err := s.c.Patch(ctx, vm, patch); err != nil {
		return "", s.patchError(err, "virtualmachines", name)
	}
	return s.waitRenamed(ctx, name, to, timeout)
}

// waitRenamed waits until the old VM is gone and the new one stands alone,
// or the controller refused.
func (s *session) waitRenamed(ctx context.Context, name, to string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	for {
		old := &v1.VirtualMachine{}
		oldErr := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, old)
		renamed := &v1.VirtualMachine{}
		newErr := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: to}, renamed)
		switch {
		case apierrors.IsNotFound(oldErr) && newErr == nil && renamed.Annotations[v1.RenamedFromAnnotation] == "":
			return fmt.Sprintf("vm %s renamed to %s", name, to), nil
		case oldErr == nil && old.DeletionTimestamp == nil && old.Annotations[v1.RenameToAnnotation] == "":
			return "", fmt.Errorf("the controller refused to rename vm %s to %s: %s", name, to, s.lastEvent(ctx, name, "RenameRefused"))
		}
		if time.Now().After(deadline) {
			return "", fmt.Errorf("vm %s is not renamed to %s after %s; the controller finishes it when it runs (kubectl get vm -n %s %s %s)", name, to, timeout, s.ns, name, to)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// lastEvent is the message of the newest event of reason about the VM.
func (s *session) lastEvent(ctx context.Context, name, reason string) string {
	list, err := s.kube.CoreV1().Events(s.ns).List(ctx, metav1.ListOptions{FieldSelector: fields.Set{
		"involvedObject.name": name, "involvedObject.kind": "VirtualMachine", "reason": reason}.String()})
	if err != nil || len(list.Items) == 0 {
		return fmt.Sprintf("see kubectl describe vm -n %s %s", s.ns, name)
	}
	newest := list.Items[0]
	for _, e := range list.Items[1:] {
		if eventTime(e).After(eventTime(newest)) {
			newest = e
		}
	}
	return newest.Message
}

func eventTime(e corev1.Event) time.Time {
	if !e.EventTime.IsZero() {
		return e.EventTime.Time
	}
	return e.LastTimestamp.Time
}
