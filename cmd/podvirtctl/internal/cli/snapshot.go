package cli

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// snapshotPoll is how often snapshot and restore look at what they made.
const snapshotPoll = 250 * time.Millisecond

// snapshotCommand is `snapshot VM NAME`: a VirtualMachineSnapshot, waited
// for.
func (o *options) snapshotCommand() *cobra.Command {
	var timeout time.Duration
	var memory, withVM bool
	cmd := &cobra.Command{
		Use:   "snapshot VM NAME",
		Short: "Snapshot a VM, running or stopped: its spec and every disk, in O(1) on podvirt's disks",
		Long: `snapshot creates the VirtualMachineSnapshot NAME of VM and waits until it is
ready. Each disk becomes a CSI VolumeSnapshot: on podvirt's disks the disk is
frozen where it is and the VM goes on in a new overlay, so nothing is copied.
A running VM's filesystems are frozen through its guest agent for that
instant, or the VM is paused when the agent does not answer; a stopped VM does
not start until the snapshot is taken. With --include-memory a running VM's
memory is saved too: restored into the VM, the guest resumes where it was.
The snapshot outlives the VM unless --delete-with-vm makes the VM its owner;
restore it with '%[1]s restore'.`,
		Example:           "  %[1]s snapshot web-1 before-upgrade",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.snapshot(ctx, args[0], args[1], timeout, memory, withVM)
		}),
	}
	cmd.Long = fmt.Sprintf(cmd.Long, o.name)
	cmd.Example = fmt.Sprintf(cmd.Example, o.name)
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long the snapshot may take (its failure deadline)")
	cmd.Flags().BoolVar(&memory, "include-memory", false, "save a running VM's memory too: restored into the VM, the guest resumes where it was")
	cmd.Flags().BoolVar(&withVM, "delete-with-vm", false, "delete the snapshot when the VM is deleted (it is owned by the VM); by default it outlives the VM")
	return cmd
}

func (s *session) snapshot(ctx context.Context, vmName, name string, timeout time.Duration, memory, withVM bool) (string, error) {
	vm, err := s.getVM(ctx, vmName)
	if err != nil {
		return "", err
	}
	group := v1.GroupName
	snap := &v1.VirtualMachineSnapshot{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: name},
		Spec: v1.VirtualMachineSnapshotSpec{
			Source:          corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VirtualMachine", Name: vm.Name},
			FailureDeadline: &metav1.Duration{Duration: timeout},
			IncludeMemory:   memory,
		},
	}
	if withVM {
		snap.OwnerReferences = []metav1.OwnerReference{{APIVersion: v1.GroupVersion.String(), Kind: "VirtualMachine", Name: vm.Name, UID: vm.UID}}
	}
	if err := s.c.Create(ctx, snap); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("snapshot %s exists already in namespace %s: choose another name, or delete it (kubectl delete vmsnapshot -n %s %s)", name, s.ns, s.ns, name)
		}
		return "", s.apiError(err, "create", "virtualmachinesnapshots", name)
	}
	err = s.poll(ctx, timeout, func() (bool, error) {
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(snap), snap); err != nil {
			return false, err
		}
		switch snap.Status.Phase {
		case v1.SnapshotSucceeded:
			return true, nil
		case v1.SnapshotFailed:
			return false, fmt.Errorf("snapshot %s of vm %s failed: %s", name, vmName, snapshotError(snap.Status.Error))
		}
		return false, nil
	})
	if err != nil {
		return "", s.waitError(err, fmt.Sprintf("snapshot %s of vm %s is not ready after %s: %s (kubectl get vmsnapshot -n %s %s)", name, vmName, timeout, snapshotError(snap.Status.Error), s.ns, name))
	}
	return fmt.Sprintf("vm %s snapshotted as %s (%s)", vmName, name, strings.Join(indications(snap), ", ")), nil
}

// restoreCommand is `restore VM SNAPSHOT [--to NEWVM]`: a
// VirtualMachineRestore, waited for.
func (o *options) restoreCommand() *cobra.Command {
	var to string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "restore VM SNAPSHOT",
		Short: "Restore a snapshot into its stopped VM, or as a new VM (--to)",
		Long: `restore brings SNAPSHOT of VM back, in O(1) on podvirt's disks: each disk is a
new overlay on the snapshot's frozen layer. Without --to, VM must be stopped;
its disks are replaced by the snapshot's and its spec set back (its MACs,
addresses and run strategy kept). With --to NEWVM, a new VM is made with its
own disks, Halted; it gets new MACs and addresses while VM exists. A restore
starts nothing: start the VM after it. The snapshot stays, to restore again.`,
		Example:           "  %[1]s restore web-1 before-upgrade\n  %[1]s restore web-1 before-upgrade --to web-1-copy",
		Args:              cobra.ExactArgs(2),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.restore(ctx, args[0], args[1], to, timeout)
		}),
	}
	cmd.Example = fmt.Sprintf(cmd.Example, o.name)
	cmd.Flags().StringVar(&to, "to", "", "restore as a new VM of this name instead of into VM")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for the restore")
	return cmd
}

func (s *session) restore(ctx context.Context, vmName, snapName, to string, timeout time.Duration) (string, error) {
	snap := &v1.VirtualMachineSnapshot{}
	if err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: snapName}, snap); err != nil {
		if apierrors.IsNotFound(err) {
			return "", fmt.Errorf("snapshot %s does not exist in namespace %s (kubectl get vmsnapshot -n %s)", snapName, s.ns, s.ns)
		}
		return "", s.apiError(err, "get", "virtualmachinesnapshots", snapName)
	}
	if snap.Spec.Source.Name != vmName {
		return "", fmt.Errorf("snapshot %s is of vm %s, not %s", snapName, snap.Spec.Source.Name, vmName)
	}
	target := vmName
	if to != "" {
		target = to
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: to}, &v1.VirtualMachine{}); err == nil {
			return "", fmt.Errorf("vm %s exists already in namespace %s: choose another name for --to", to, s.ns)
		}
	} else if vmi, err := s.getVMI(ctx, vmName); err != nil {
		return "", err
	} else if vmi != nil {
		return "", fmt.Errorf("vm %s runs (vmi %s is %s): stop it before restoring into it (%s stop %s), or restore as a new VM with --to", vmName, vmi.Name, vmi.Status.Phase, s.o.name, vmName)
	}
	group := v1.GroupName
	rs := &v1.VirtualMachineRestore{
		ObjectMeta: metav1.ObjectMeta{Namespace: s.ns, Name: fmt.Sprintf("%s-%s-%s", target, snapName, rand.String(5))},
		Spec: v1.VirtualMachineRestoreSpec{
			Target:                     corev1.TypedLocalObjectReference{APIGroup: &group, Kind: "VirtualMachine", Name: target},
			VirtualMachineSnapshotName: snapName,
		},
	}
	if err := s.c.Create(ctx, rs); err != nil {
		return "", s.apiError(err, "create", "virtualmachinerestores", rs.Name)
	}
	err := s.poll(ctx, timeout, func() (bool, error) {
		if err := s.c.Get(ctx, client.ObjectKeyFromObject(rs), rs); err != nil {
			return false, err
		}
		if c := rs.Status.Complete; c != nil && !*c {
			return false, fmt.Errorf("restore %s of snapshot %s into vm %s failed: %s", rs.Name, snapName, target, snapshotError(rs.Status.Error))
		}
		return rs.Status.Complete != nil, nil
	})
	if err != nil {
		return "", s.waitError(err, fmt.Sprintf("restore %s of snapshot %s into vm %s is not complete after %s: %s (kubectl get vmrestore -n %s %s)", rs.Name, snapName, target, timeout, snapshotError(rs.Status.Error), s.ns, rs.Name))
	}
	if to != "" {
		return fmt.Sprintf("snapshot %s restored as vm %s", snapName, to), nil
	}
	return fmt.Sprintf("vm %s restored from snapshot %s", vmName, snapName), nil
}

// poll calls done until it says so or fails, for at most timeout.
func (s *session) poll(ctx context.Context, timeout time.Duration, done func() (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, snapshotPoll, timeout, true, func(context.Context) (bool, error) { return done() })
}

// waitError is err, or late when the wait ran out of time.
func (s *session) waitError(err error, late string) error {
	if errors.Is(err, context.DeadlineExceeded) || wait.Interrupted(err) {
		return errors.New(late)
	}
	return err
}

func snapshotError(e *v1.SnapshotError) string {
	if e == nil || e.Message == "" {
		return "no error reported"
	}
	return e.Message
}

func indications(snap *v1.VirtualMachineSnapshot) []string {
	var out []string
	for _, i := range snap.Status.Indications {
		out = append(out, string(i))
	}
	return out
}
