package cli

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"
)

// portForwardCommand is `port-forward VM [LOCAL:]GUEST...`: it forwards
// local ports to the guest's through the API server (pods/portforward into
// the launcher pod, whose passt carries the port into the guest), so no
// node is reached directly, as virtctl port-forward does. With --stdio it
// connects stdin and stdout to one guest port instead (ssh's
// ProxyCommand).
func (o *options) portForwardCommand() *cobra.Command {
	var address string
	var stdio bool
	cmd := &cobra.Command{
		Use:   "port-forward (VM|vm/NAME|vmi/NAME) [LOCAL:]GUEST...",
		Short: "Forward local ports to a VM's guest through the API server (its pod-network ports)",
		Example: fmt.Sprintf(`  %[1]s port-forward web 8080:80
  %[1]s port-forward vmi/web 2222:22 --address 0.0.0.0
  ssh -o ProxyCommand='%[1]s port-forward --stdio web 22' root@web`, o.name),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 || (stdio && len(args) != 2) {
				return fmt.Errorf("%s needs a VM and its ports (one with --stdio): %s", cmd.CommandPath(), cmd.UseLine())
			}
			return nil
		},
		ValidArgsFunction: o.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.session()
			if err != nil {
				return err
			}
			kind, name, err := vmRef(args[0])
			if err != nil {
				return err
			}
			if stdio {
				return s.forwardStdio(cmd.Context(), kind, name, args[1], o.streams.In, o.streams.Out)
			}
			return s.portForward(cmd.Context(), kind, name, address, args[1:])
		},
	}
	cmd.Flags().StringVar(&address, "address", "127.0.0.1", "the local address to listen on")
	cmd.Flags().BoolVar(&stdio, "stdio", false, "connect stdin and stdout to the one GUEST port instead of listening")
	return cmd
}

// vmRef reads a VM named as NAME or vm/NAME (the VM's running VMI) or
// vmi/NAME.
func vmRef(arg string) (kind, name string, err error) {
	kind, name = "vm", arg
	if k, n, ok := strings.Cut(arg, "/"); ok {
		kind, name = k, n
	}
	if kind != "vm" && kind != "vmi" || name == "" {
		return "", "", fmt.Errorf("%q: name a VM as NAME, vm/NAME or vmi/NAME", arg)
	}
	return kind, name, nil
}

// portForward listens on address for each LOCAL:GUEST of ports until ctx
// ends.
func (s *session) portForward(ctx context.Context, kind, name, address string, ports []string) error {
	fw, err := s.forwarder(ctx, kind, name, address, ports, s.o.streams.Out)
	if err != nil {
		return err
	}
	return fw.ForwardPorts()
}

// forwardStdio connects in and out to guest port through a forwarder on a
// free loopback port.
func (s *session) forwardStdio(ctx context.Context, kind, name, port string, in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	fw, err := s.forwarder(ctx, kind, name, "127.0.0.1", []string{"0:" + port}, io.Discard)
	if err != nil {
		return err
	}
	local, err := serveLocal(fw)
	if err != nil {
		return err
	}
	conn, err := net.Dial("tcp", local)
	if err != nil {
		return err
	}
	defer conn.Close()
	go func() {
		_, _ = io.Copy(conn, in)
		if tcp, ok := conn.(*net.TCPConn); ok {
			_ = tcp.CloseWrite() // the guest sees our end of input
		}
	}()
	// Done when the guest's side ends (ssh's own end of input, or the
	// server closing).
	_, err = io.Copy(out, conn)
	return err
}

// forwarder checks that each guest port reaches the VM's guest and makes a
// port forwarder to its launcher pod.
func (s *session) forwarder(ctx context.Context, kind, name, address string, ports []string, out io.Writer) (*portforward.PortForwarder, error) {
	vmi, err := s.runningVMI(ctx, kind, name, "port-forward to")
	if err != nil {
		return nil, err
	}
	for _, p := range ports {
		guest := p[strings.LastIndex(p, ":")+1:]
		n, err := strconv.ParseUint(guest, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: want [LOCAL:]GUEST, like 8080:80", p)
		}
		if err := forwarded(kind, name, &vmi.Spec, corev1.ProtocolTCP, int32(n)); err != nil {
			return nil, err
		}
	}
	pod, err := s.launcherPod(ctx, vmi)
	if err != nil {
		return nil, err
	}
	fw, err := s.podForwarder(ctx, pod, address, ports, out)
	if err != nil {
		return nil, fmt.Errorf("port-forward to %s %s: %w", kind, name, err)
	}
	return fw, nil
}

// serveLocal starts fw, which forwards one port from a free loopback port,
// and returns that port's address; fw stops with its context.
func serveLocal(fw *portforward.PortForwarder) (string, error) {
	failed := make(chan error, 1)
	go func() { failed <- fw.ForwardPorts() }()
	select {
	case <-fw.Ready:
	case err := <-failed:
		return "", err
	}
	local, err := fw.GetPorts()
	if err != nil || len(local) != 1 {
		return "", fmt.Errorf("port-forward: no local port: %w", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(local[0].Local))), nil
}

// podForwarder makes a port forwarder to a pod of the session's namespace
// through the API server (pods/portforward).
func (s *session) podForwarder(ctx context.Context, pod, address string, ports []string, out io.Writer) (*portforward.PortForwarder, error) {
	url := s.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(s.ns).Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(s.config)
	if err != nil {
		return nil, err
	}
	dialer := spdy.NewDialerForStreaming(upgrader, &http.Client{Transport: transport}, http.MethodPost, url)
	if tunnel, err := portforward.NewSPDYOverWebsocketDialerForStreaming(url, s.config); err == nil {
		// WebSocket first, as kubectl does; SPDY where the server does not
		// upgrade to it.
		dialer = portforward.NewFallbackDialerForStreaming(tunnel, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	return portforward.NewOnAddressesForStreamingWithContext(ctx, dialer, []string{address}, ports, make(chan struct{}), out, s.o.streams.ErrOut)
}
