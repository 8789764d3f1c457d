package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdclient"
	"github.com/podvirt/podvirt/runtime/launcher"
)

// subcommand runs `podvirt-launcher console` or `podvirt-launcher vnc`
// (what podvirtctl execs in the launcher container through the API server)
// and exits; for anything else it returns, and the launcher runs.
//
//	podvirt-launcher console [--socket-dir DIR] [--uid UID]
//	podvirt-launcher vnc [--run-dir DIR]
//
// console pipes stdin and stdout to the guest's serial console through the
// launcher's command socket <socket dir>/<$PODVIRT_VMI_UID>.sock; vnc pipes
// them to the domain's VNC socket. Both end when stdin ends or the guest
// goes away.
func subcommand(args []string) {
	if len(args) == 0 || (args[0] != "console" && args[0] != "vnc") {
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer stop()
	fs := flag.NewFlagSet("podvirt-launcher "+args[0], flag.ContinueOnError)
	var err error
	switch args[0] {
	case "console":
		socketDir := fs.String("socket-dir", v1.SocketDir, "directory of the command socket <vmi-uid>.sock")
		uid := fs.String("uid", os.Getenv(UIDEnv), "the VMI's UID (default $"+UIDEnv+")")
		if err = fs.Parse(args[1:]); err != nil {
			os.Exit(2)
		}
		if *uid == "" {
			err = fmt.Errorf("no VMI UID: set $%s (the launcher pod has it) or pass --uid", UIDEnv)
			break
		}
		err = attachConsole(ctx, launchercmd.SocketPath(*socketDir, *uid), os.Stdin, os.Stdout)
	case "vnc":
		runDir := fs.String("run-dir", v1.PrivateDir, "the launcher's run dir, holding "+launcher.VNCSocketName)
		if err = fs.Parse(args[1:]); err != nil {
			os.Exit(2)
		}
		err = attachVNC(ctx, filepath.Join(*runDir, launcher.VNCSocketName), os.Stdin, os.Stdout)
	}
	if err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-launcher %s: %v\n", args[0], err)
		os.Exit(1)
	}
	os.Exit(0)
}

// attachConsole relays in to the serial console and the console to out
// until in ends (then the stream is closed cleanly), the guest goes away,
// or ctx ends.
func attachConsole(ctx context.Context, sock string, in io.Reader, out io.Writer) error {
	if _, err := os.Stat(sock); err != nil {
		return fmt.Errorf("command socket: %w: is the launcher of this VMI running in this pod?", err)
	}
	client, cc, err := cmdclient.Dial(sock)
	if err != nil {
		return err
	}
	defer cc.Close()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, err := client.Console(ctx)
	if err != nil {
		return consoleError(sock, err)
	}
	sendErr := make(chan error, 1)
	go func() { sendErr <- pump(in, stream) }()
	for {
		m, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil // the guest is gone, or the server ended after our CloseSend
		}
		if err != nil {
			select {
			case serr := <-sendErr:
				if serr != nil {
					return serr
				}
			default:
			}
			return consoleError(sock, err)
		}
		if _, err := out.Write(m.GetData()); err != nil {
			return fmt.Errorf("writing console output: %w", err)
		}
	}
}

// pump sends what in gives to the console, and closes the sending side
// when in ends.
func pump(in io.Reader, stream launchercmd.Command_ConsoleClient) error {
	buf := make([]byte, 32<<10)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			if serr := stream.Send(&launchercmd.ConsoleData{Data: append([]byte(nil), buf[:n]...)}); serr != nil {
				return nil // Recv reports why the stream ended
			}
		}
		if errors.Is(err, io.EOF) {
			return stream.CloseSend()
		}
		if err != nil {
			_ = stream.CloseSend()
			return fmt.Errorf("reading stdin: %w", err)
		}
	}
}

func consoleError(sock string, err error) error {
	if s, ok := status.FromError(err); ok {
		switch s.Code() {
		case codes.FailedPrecondition:
			return fmt.Errorf("%s: the guest has no console now", s.Message())
		case codes.Canceled:
			return nil
		case codes.Unavailable:
			return fmt.Errorf("launcher at %s is not answering (%s): is it still running?", sock, s.Message())
		}
		return errors.New(s.Message())
	}
	return err
}

// attachVNC relays in and out to the VNC socket until either side ends.
func attachVNC(ctx context.Context, sock string, in io.Reader, out io.Writer) error {
	c, err := (&net.Dialer{}).DialContext(ctx, "unix", sock)
	if err != nil {
		return fmt.Errorf("VNC socket: %w: is VNC enabled on this VMI (spec.domain.devices.vnc) and its launcher running?", err)
	}
	defer c.Close()
	done := make(chan error, 2)
	go func() {
		_, err := io.Copy(c, in)
		_ = c.(*net.UnixConn).CloseWrite()
		done <- err
	}()
	go func() {
		_, err := io.Copy(out, c)
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return nil
	}
}
