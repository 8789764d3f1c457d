// Package cli is podvirtctl's command tree. Every command that acts talks
// to the API server only: lifecycle commands edit the VM's run strategy or
// its status.stateChangeRequests as the controller expects, pause/unpause
// set the VMI's podvirt.io/paused annotation for the node daemon, and
// console and vnc reach the launcher pod through pods/exec. create and
// convert only print manifests and reach no server. image push and inspect
// talk to registries (the API server only for push --storage-class).
package cli

import (
	"context"
	"errors"
	"fmt"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"github.com/spf13/cobra"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/scheme"
)

// Main runs the command line args (args[0] is the program) and returns the
// exit code.
func Main(args []string, streams genericiooptions.IOStreams) int {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	cmd := NewRootCommand(commandName(args[0]), streams)
	cmd.SetArgs(args[1:])
	if err := cmd.ExecuteContext(ctx); err != nil {
		var code exitCode
		if errors.As(err, &code) {
			return int(code)
		}
		fmt.Fprintf(streams.ErrOut, "error: %v\n", err)
		return 1
	}
	return 0
}

// exitCode is the error of a command that ran another program (ssh),
// which has already said what went wrong: podvirtctl exits with its
// status and adds nothing.
type exitCode int

func (c exitCode) Error() string { return fmt.Sprintf("exit status %d", int(c)) }

// commandName is how the user called us: "kubectl virt" through the
// kubectl plugin mechanism (a binary or link named kubectl-virt).
func commandName(argv0 string) string {
	if strings.HasPrefix(filepath.Base(argv0), "kubectl-virt") {
		return "kubectl virt"
	}
	return "podvirtctl"
}

// options are the flags every command shares, and the streams.
type options struct {
	name    string
	flags   *genericclioptions.ConfigFlags
	streams genericiooptions.IOStreams
}

// NewRootCommand is podvirtctl's command tree; name is how the user calls
// it, used in usage and in the hints of error messages.
func NewRootCommand(name string, streams genericiooptions.IOStreams) *cobra.Command {
	o := &options{name: name, flags: genericclioptions.NewConfigFlags(true), streams: streams}
	root := &cobra.Command{
		Use:           name,
		Annotations:   map[string]string{cobra.CommandDisplayNameAnnotation: name}, // "kubectl virt" in usage
		Short:         "Create, start, stop and reach podvirt virtual machines",
		Long:          name + " drives podvirt VMs (podvirt.io VirtualMachine and VirtualMachineInstance) through the Kubernetes API server.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(streams.In)
	root.SetOut(streams.Out)
	root.SetErr(streams.ErrOut)
	o.flags.AddFlags(root.PersistentFlags())
	root.AddCommand(
		o.startCommand(), o.stopCommand(), o.restartCommand(),
		o.pauseCommand(true), o.pauseCommand(false),
		o.migrateCommand(), o.migrateCancelCommand(), o.exposeCommand(), o.portForwardCommand(), o.sshCommand(),
		o.consoleCommand(), o.vncCommand(), o.versionCommand(),
		o.createCommand(), o.convertCommand(), o.imageCommand(), o.imageUploadCommand(), o.renameCommand(),
		o.snapshotCommand(), o.restoreCommand(), o.guestOSInfoCommand(),
	)
	return root
}

// session is a connection to the API server in the chosen namespace.
type session struct {
	o      *options
	config *rest.Config
	c      client.Client
	kube   kubernetes.Interface
	ns     string
}

func (o *options) session() (*session, error) {
	cfg, err := o.flags.ToRESTConfig()
	if err != nil {
		return nil, fmt.Errorf("no usable kubeconfig: %w (set --kubeconfig or $KUBECONFIG, or --context)", err)
	}
	ns, _, err := o.flags.ToRawKubeConfigLoader().Namespace()
	if err != nil {
		return nil, fmt.Errorf("namespace from kubeconfig: %w", err)
	}
	scheme, err := scheme.New()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		return nil, fmt.Errorf("connect to the API server %s: %w (check --kubeconfig/--context)", cfg.Host, err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	return &session{o: o, config: cfg, c: c, kube: kube, ns: ns}, nil
}

// report is a RunE for a command that does one thing through the API
// server and says what it did: do gets a session and the arguments.
func (o *options) report(do func(ctx context.Context, s *session, args []string) (string, error)) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		s, err := o.session()
		if err != nil {
			return err
		}
		msg, err := do(cmd.Context(), s, args)
		if err != nil {
			return err
		}
		fmt.Fprintln(o.streams.Out, msg)
		return nil
	}
}

// kindAndName is cobra's argument check for `COMMAND (vm|vmi) NAME`.
func kindAndName(cmd *cobra.Command, args []string) error {
	if len(args) != 2 || (args[0] != "vm" && args[0] != "vmi") {
		return fmt.Errorf("%s needs a kind (vm or vmi) and a name: %s", cmd.CommandPath(), cmd.UseLine())
	}
	return nil
}

// exactlyOneName is cobra's argument check, with a message that says what
// is missing.
func exactlyOneName(kind string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != 1 {
			return fmt.Errorf("%s needs exactly one %s name, got %d: %s", cmd.CommandPath(), kind, len(args), cmd.UseLine())
		}
		return nil
	}
}
