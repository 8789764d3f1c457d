package cli

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"

	"github.com/spf13/cobra"
)

// vncCommand serves the VMI's VNC display on a local TCP port. The display
// is a unix socket inside the launcher pod (never a TCP port there), so
// each VNC connection is carried by a pods/exec of `podvirt-launcher vnc`,
// which pipes it to that socket.
func (o *options) vncCommand() *cobra.Command {
	var address string
	var port int
	cmd := &cobra.Command{
		Use:               "vnc VMI",
		Short:             "Serve a running VM's VNC display on a local port (only for VMs with VNC enabled)",
		Args:              exactlyOneName("VMI"),
		ValidArgsFunction: o.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.session()
			if err != nil {
				return err
			}
			return s.vnc(cmd.Context(), args[0], net.JoinHostPort(address, strconv.Itoa(port)))
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "local address to listen on")
	cmd.Flags().IntVar(&port, "port", 0, "local port to listen on (0: any free port)")
	return cmd
}

func (s *session) vnc(ctx context.Context, name, listen string) error {
	vmi, err := s.runningVMI(ctx, "vmi", name, "reach the display of")
	if err != nil {
		return err
	}
	if v := vmi.Spec.Domain.Devices.VNC; v == nil || !*v {
		return fmt.Errorf("VNC isn't enabled on vmi %s: set spec.template.spec.domain.devices.vnc: true on its VM, then `%s restart %s`", name, s.o.name, name)
	}
	pod, err := s.launcherPod(ctx, vmi)
	if err != nil {
		return err
	}
	lis, err := (&net.ListenConfig{}).Listen(ctx, "tcp", listen)
	if err != nil {
		return fmt.Errorf("vnc: listening on %s: %w (pick another with --port)", listen, err)
	}
	defer lis.Close()
	go func() {
		<-ctx.Done()
		lis.Close()
	}()
	fmt.Fprintf(s.o.streams.Out, "VNC of vmi %s: vnc://%s (point a VNC viewer there; Ctrl+C stops)\n", name, lis.Addr())
	for {
		conn, err := lis.Accept()
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("vnc: %w", err)
		}
		go func() {
			defer conn.Close()
			if err := s.attach(ctx, pod, "vnc", conn, conn); err != nil {
				fmt.Fprintf(s.o.streams.ErrOut, "vnc connection from %s: %v\n", conn.RemoteAddr(), err)
			}
		}()
	}
}
