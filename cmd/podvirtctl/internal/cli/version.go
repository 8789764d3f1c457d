package cli

import (
	"context"
	"fmt"
	"strings"

	"github.com/spf13/cobra"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/cmd/internal/version"
)

// ControllerLease is the controller's leader-election lease; its holder
// names the controller pod that is in charge (podvirt-controller's
// LeaderElectionID).
const ControllerLease = "podvirt-controller.podvirt.io"

func (o *options) versionCommand() *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the client version and, when the cluster is reachable, the server's and the controller's",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			out := o.streams.Out
			fmt.Fprintf(out, "Client Version: %s %s\n", o.name, version.Version)
			if clientOnly {
				return nil
			}
			s, err := o.session()
			if err != nil {
				fmt.Fprintf(out, "Server Version: unknown (%v)\n", err)
				return nil
			}
			sv, err := s.kube.Discovery().ServerVersion()
			if err != nil {
				fmt.Fprintf(out, "Server Version: unreachable (%v)\n", err)
				return nil
			}
			fmt.Fprintf(out, "Server Version: Kubernetes %s\n", sv.GitVersion)
			fmt.Fprintf(out, "Controller: %s\n", s.controllerVersion(cmd.Context()))
			return nil
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print the client version only")
	return cmd
}

// controllerVersion finds the controller pod holding the leader lease
// (holder identity "<pod name>_<uuid>") and reports its image.
func (s *session) controllerVersion(ctx context.Context) string {
	leases := &coordinationv1.LeaseList{}
	if err := s.c.List(ctx, leases, client.MatchingFields{"metadata.name": ControllerLease}); err != nil {
		return fmt.Sprintf("unknown: cannot list leases (%v)", err)
	}
	for _, l := range leases.Items {
		if l.Spec.HolderIdentity == nil || *l.Spec.HolderIdentity == "" {
			continue
		}
		podName, _, _ := strings.Cut(*l.Spec.HolderIdentity, "_")
		pod := &corev1.Pod{}
		if err := s.c.Get(ctx, client.ObjectKey{Namespace: l.Namespace, Name: podName}, pod); err != nil {
			return fmt.Sprintf("leader %s/%s, image unknown (%v)", l.Namespace, podName, err)
		}
		for _, c := range pod.Spec.Containers {
			return fmt.Sprintf("%s (pod %s/%s)", c.Image, l.Namespace, podName)
		}
	}
	return "not found: no podvirt-controller holds the lease " + ControllerLease + " (is podvirt installed? `helm list -A`)"
}
