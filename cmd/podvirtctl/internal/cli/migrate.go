package cli

import (
	"context"
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// migrateCommand is `migrate VM [--node NODE]`: it creates a
// VirtualMachineInstanceMigration of the VM's VMI, as virtctl migrate does.
func (o *options) migrateCommand() *cobra.Command {
	var node string
	cmd := &cobra.Command{
		Use:   "migrate VM",
		Short: "Move a running VM live to another node, or into a new launcher pod on its own; its disks follow (only what the VM wrote crosses)",
		Example: fmt.Sprintf("  %s migrate my-vm\n  %s migrate my-vm --node worker-2\n  %s migrate my-vm --node \"$(kubectl get vmi my-vm -o jsonpath='{.status.nodeName}')\"   # same node: a new launcher pod\n  kubectl get vmim -w   # follow it\n  %s migrate-cancel my-vm",
			o.name, o.name, o.name, o.name),
		Args:              exactlyOneName("VM"),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.migrate(ctx, args[0], node)
		}),
	}
	cmd.Flags().StringVar(&node, "node", "", "the node to move to, its own node included (default: any other node the scheduler picks)")
	return cmd
}

// migrateCancelCommand is `migrate-cancel VM`: it deletes the VM's running
// migration, which aborts it; the VM keeps running where it was.
func (o *options) migrateCancelCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "migrate-cancel VM",
		Short:             "Cancel a VM's running live migration; the VM keeps running where it was",
		Args:              exactlyOneName("VM"),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.cancelMigration(ctx, args[0])
		}),
	}
}

func (s *session) migrate(ctx context.Context, name, node string) (string, error) {
	vmi, err := s.runningVMI(ctx, "vm", name, "migrate")
	if err != nil {
		return "", err
	}
	if m, err := s.runningMigration(ctx, name); err != nil {
		return "", err
	} else if m != nil {
		return "", fmt.Errorf("vm %s is being migrated already (vmim %s, %s): follow it with `kubectl get vmim %s -w`, or cancel it with `%s migrate-cancel %s`",
			name, m.Name, m.Status.Phase, m.Name, s.o.name, name)
	}
	m := &v1.VirtualMachineInstanceMigration{
		ObjectMeta: metav1.ObjectMeta{GenerateName: name + "-migration-", Namespace: s.ns, Labels: map[string]string{v1.VMINameLabel: name}},
		Spec:       v1.VirtualMachineInstanceMigrationSpec{VMIName: name, TargetNode: node},
	}
	if err := s.c.Create(ctx, m); err != nil {
		return "", s.apiError(err, "create", "virtualmachineinstancemigrations", name)
	}
	to := "another node"
	switch node {
	case "":
	case vmi.Status.NodeName:
		to = "a new launcher pod on " + node
	default:
		to = node
	}
	return fmt.Sprintf("vm %s is being migrated from %s to %s (vmim %s): follow it with `kubectl get vmim %s -w`", name, vmi.Status.NodeName, to, m.Name, m.Name), nil
}

func (s *session) cancelMigration(ctx context.Context, name string) (string, error) {
	m, err := s.runningMigration(ctx, name)
	if err != nil {
		return "", err
	}
	if m == nil {
		return "", fmt.Errorf("vm %s has no migration running: there is nothing to cancel", name)
	}
	if err := s.c.Delete(ctx, m); err != nil && !apierrors.IsNotFound(err) {
		return "", s.apiError(err, "delete", "virtualmachineinstancemigrations", m.Name)
	}
	return fmt.Sprintf("migration %s of vm %s was cancelled: the VM keeps running on its node", m.Name, name), nil
}

// runningMigration is the VM's unfinished migration, or nil.
func (s *session) runningMigration(ctx context.Context, name string) (*v1.VirtualMachineInstanceMigration, error) {
	list := &v1.VirtualMachineInstanceMigrationList{}
	if err := s.c.List(ctx, list, client.InNamespace(s.ns)); err != nil {
		return nil, s.apiError(err, "list", "virtualmachineinstancemigrations", "")
	}
	for i := range list.Items {
		m := &list.Items[i]
		if m.Spec.VMIName == name && !m.Status.Phase.IsFinal() && m.DeletionTimestamp == nil {
			return m, nil
		}
	}
	return nil, nil
}
