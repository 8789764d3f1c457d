package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/meta"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// guestOSInfoCommand is `guestosinfo VMI`: what the guest agent says of
// the guest's OS, as JSON (virtctl guestosinfo).
func (o *options) guestOSInfoCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "guestosinfo VMI",
		Short:             "Print what the guest agent says of a running VMI's OS, as JSON",
		Long:              "guestosinfo prints the VMI's status.guestOSInfo: the OS name, ID, version,\nkernel release and pretty name the guest agent (qemu-guest-agent) reported.",
		Args:              cobra.ExactArgs(1),
		ValidArgsFunction: o.completeVMs,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.guestOSInfo(ctx, args[0])
		}),
	}
}

func (s *session) guestOSInfo(ctx context.Context, name string) (string, error) {
	vmi, err := s.getVMI(ctx, name)
	if err != nil {
		return "", err
	}
	if vmi == nil {
		return "", s.notFound(ctx, "vmi", name)
	}
	if vmi.Status.Phase != v1.Running {
		return "", fmt.Errorf("vmi %s is %s, not Running: its guest agent says nothing", name, vmi.Status.Phase)
	}
	if !meta.IsStatusConditionTrue(vmi.Status.Conditions, v1.VMIConditionAgentConnected) {
		return "", fmt.Errorf("vmi %s: the guest agent is not connected (does the guest run qemu-guest-agent? kubectl get vmi -n %s %s -o jsonpath='{.status.conditions}')", name, s.ns, name)
	}
	if vmi.Status.GuestOSInfo == nil {
		return "", fmt.Errorf("vmi %s: the guest agent is connected but has not said which OS it runs yet; try again", name)
	}
	b, err := json.MarshalIndent(vmi.Status.GuestOSInfo, "", "  ")
	if err != nil {
		return "", err
	}
	return string(b), nil
}
