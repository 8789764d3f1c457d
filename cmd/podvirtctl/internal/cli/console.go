package cli

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/tools/remotecommand"
	"k8s.io/streaming/pkg/httpstream"
	"k8s.io/utils/exec"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// escapeByte ends a console session: Ctrl+], as with virtctl and telnet.
const escapeByte = 0x1d

// launcherCommand is the launcher binary in the launcher pod's compute
// container; `console` and `vnc` are its subcommands that pipe stdin and
// stdout to the guest's serial console and VNC display.
const launcherCommand = "podvirt-launcher"

func (o *options) consoleCommand() *cobra.Command {
	return &cobra.Command{
		Use:               "console VMI",
		Short:             "Open the serial console of a running VM (Ctrl+] leaves)",
		Args:              exactlyOneName("VMI"),
		ValidArgsFunction: o.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := o.session()
			if err != nil {
				return err
			}
			return s.console(cmd.Context(), args[0])
		},
	}
}

func (s *session) console(ctx context.Context, name string) error {
	vmi, err := s.runningVMI(ctx, "vmi", name, "open the console of")
	if err != nil {
		return err
	}
	if !vmi.Spec.Domain.Devices.SerialConsole() {
		return fmt.Errorf("vmi %s has no serial console: its spec.domain.devices.autoattachSerialConsole is false", name)
	}
	pod, err := s.launcherPod(ctx, vmi)
	if err != nil {
		return err
	}
	in, out := s.o.streams.In, s.o.streams.Out
	if f, ok := in.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		old, err := term.MakeRaw(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("console: putting the terminal in raw mode: %w", err)
		}
		defer func() { _ = term.Restore(int(f.Fd()), old) }()
	}
	fmt.Fprintf(s.o.streams.ErrOut, "Successfully connected to %s console. The escape sequence is ^]\r\n", name)
	err = s.attach(ctx, pod, "console", in, out)
	fmt.Fprint(s.o.streams.ErrOut, "\r\n")
	return err
}

// attach runs the launcher subcommand sub in pod with in and out as its
// stdin and stdout, until the user types the escape byte into in, in
// ends, or the command ends.
func (s *session) attach(ctx context.Context, pod, sub string, in io.Reader, out io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	esc := &escapeReader{r: in, escape: cancel}
	var stderr bytes.Buffer
	err := s.exec(ctx, pod, []string{launcherCommand, sub}, esc, out, &stderr)
	if esc.escaped.Load() {
		return nil
	}
	var exit exec.CodeExitError
	if errors.As(err, &exit) {
		return fmt.Errorf("%s %s in launcher pod %s exited with %d: %s", launcherCommand, sub, pod, exit.Code, bytes.TrimSpace(stderr.Bytes()))
	}
	return err
}

// escapeReader reads r until the escape byte, then ends (EOF) and calls
// escape.
type escapeReader struct {
	r       io.Reader
	escape  func()
	escaped atomic.Bool
}

func (e *escapeReader) Read(p []byte) (int, error) {
	if e.escaped.Load() {
		return 0, io.EOF
	}
	n, err := e.r.Read(p)
	if i := bytes.IndexByte(p[:n], escapeByte); i >= 0 {
		e.escaped.Store(true)
		e.escape()
		return i, io.EOF
	}
	return n, err
}

// launcherPod names the VMI's running launcher pod.
func (s *session) launcherPod(ctx context.Context, vmi *v1.VirtualMachineInstance) (string, error) {
	pods := &corev1.PodList{}
	if err := s.c.List(ctx, pods, client.InNamespace(s.ns), client.MatchingLabels{v1.CreatedByLabel: string(vmi.UID)}); err != nil {
		return "", s.apiError(err, "list", "pods", v1.CreatedByLabel+"="+string(vmi.UID))
	}
	for _, p := range pods.Items {
		if p.Status.Phase == corev1.PodRunning && p.DeletionTimestamp == nil {
			return p.Name, nil
		}
	}
	if len(pods.Items) == 0 {
		return "", fmt.Errorf("vmi %s has no launcher pod (label %s=%s) in namespace %q: see `kubectl describe vmi %s -n %s`", vmi.Name, v1.CreatedByLabel, vmi.UID, s.ns, vmi.Name, s.ns)
	}
	p := pods.Items[0]
	return "", fmt.Errorf("launcher pod %s of vmi %s is %s, not Running: see `kubectl describe pod %s -n %s`", p.Name, vmi.Name, p.Status.Phase, p.Name, s.ns)
}

// exec runs command in the launcher container of pod through the API
// server (pods/exec), over WebSocket, or SPDY when the server does not
// upgrade to WebSocket, as kubectl exec does.
func (s *session) exec(ctx context.Context, pod string, command []string, stdin io.Reader, stdout, stderr io.Writer) error {
	req := s.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(s.ns).Name(pod).SubResource("exec").
		VersionedParams(&corev1.PodExecOptions{
			Container: v1.LauncherContainerName,
			Command:   command,
			Stdin:     true,
			Stdout:    true,
			Stderr:    true,
		}, scheme.ParameterCodec)
	spdy, err := remotecommand.NewSPDYExecutor(s.config, "POST", req.URL())
	if err != nil {
		return err
	}
	ws, err := remotecommand.NewWebSocketExecutor(s.config, "GET", req.URL().String())
	if err != nil {
		return err
	}
	ex, err := remotecommand.NewFallbackExecutor(ws, spdy, func(err error) bool {
		return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
	})
	if err != nil {
		return err
	}
	err = ex.StreamWithContext(ctx, remotecommand.StreamOptions{Stdin: stdin, Stdout: stdout, Stderr: stderr})
	switch {
	case err == nil, errors.As(err, new(exec.CodeExitError)):
		return err
	case strings.Contains(err.Error(), "is forbidden"):
		// The upgrade's refusal is not a StatusError; a WebSocket exec
		// is authorized as get, SPDY as create: grant both, as for
		// kubectl exec.
		return fmt.Errorf("not allowed to exec into launcher pod %s in namespace %q: %w\nask a cluster admin for a Role granting verbs \"get\" and \"create\" on resource \"pods/exec\" (the core API group) in namespace %q",
			pod, s.ns, err, s.ns)
	}
	return s.apiError(err, "create", "pods/exec", pod)
}
