package cli

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	corev1 "k8s.io/api/core/v1"
)

// sshCommand is `ssh [USER@](VM|vm/NAME|vmi/NAME) [-- COMMAND...]`: the
// user's own ssh client, with the user's keys and known_hosts, reaching
// the guest's ssh port through `port-forward --stdio` as its
// ProxyCommand, as virtctl ssh --local-ssh does. The host key is filed
// under vmi/NAME.NAMESPACE, so one VM's key never stands for another's.
func (o *options) sshCommand() *cobra.Command {
	var user, identity, command string
	var port uint16
	var sshOpts []string
	cmd := &cobra.Command{
		Use:   "ssh [USER@](VM|vm/NAME|vmi/NAME) [-- COMMAND...]",
		Short: "ssh into a VM's guest with your ssh client, through the API server (its pod network's ssh port)",
		Long: `ssh runs your ssh client (OpenSSH's ssh, from $PATH) against the guest's ssh port,
carried through the API server by port-forward (so no node and no guest address need be
reachable). The port must be forwarded: listed in the pod interface's ports, or every port
when none are listed. Put your public key in the guest with spec.accessCredentials
(podvirtctl create vm --ssh-key-secret).`,
		Example: fmt.Sprintf(`  %[1]s ssh fedora@web
  %[1]s ssh root@vmi/web -i ~/.ssh/id_ed25519 -- uptime
  %[1]s ssh web -l fedora -t 'sudo -i' --local-ssh-opts='-o StrictHostKeyChecking=accept-new'`, o.name),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 1 {
				return fmt.Errorf("%s needs a VM: %s", cmd.CommandPath(), cmd.UseLine())
			}
			if cmd.ArgsLenAtDash() > 1 || (cmd.ArgsLenAtDash() < 0 && len(args) > 1) {
				return fmt.Errorf("%s takes one VM; put the remote command after --: %s", cmd.CommandPath(), cmd.UseLine())
			}
			return nil
		},
		ValidArgsFunction: o.completeVMs,
		RunE: func(cmd *cobra.Command, args []string) error {
			target := args[0]
			if u, rest, ok := strings.Cut(target, "@"); ok {
				if user != "" && user != u {
					return fmt.Errorf("%q and --username %s name two users: give one", target, user)
				}
				user, target = u, rest
			}
			kind, name, err := vmRef(target)
			if err != nil {
				return err
			}
			client, err := exec.LookPath("ssh")
			if err != nil {
				return errors.New("podvirtctl ssh runs your ssh client, and there is no ssh in $PATH: install OpenSSH's client (Debian: openssh-client)")
			}
			s, err := o.session()
			if err != nil {
				return err
			}
			// Fail here, with podvirtctl's words, rather than in ssh's
			// "connection closed by UNKNOWN".
			vmi, err := s.runningVMI(cmd.Context(), kind, name, "ssh into")
			if err != nil {
				return err
			}
			if err := forwarded(kind, name, &vmi.Spec, corev1.ProtocolTCP, int32(port)); err != nil {
				return err
			}
			self, err := os.Executable()
			if err != nil {
				return fmt.Errorf("podvirtctl ssh needs its own path for ssh's ProxyCommand: %w", err)
			}
			argv := sshArgs(self, kubeFlags(cmd), s.ns, kind, name, port, user, identity, command, sshOpts, args[1:])
			ssh := exec.CommandContext(cmd.Context(), client, argv...)
			ssh.Stdin, ssh.Stdout, ssh.Stderr = o.streams.In, o.streams.Out, o.streams.ErrOut
			err = ssh.Run()
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return exitCode(exit.ExitCode()) // ssh said why; pass its status on
			}
			return err
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&user, "username", "l", "", "the guest user (or USER@ before the VM); default: ssh's (your local user, or ~/.ssh/config's)")
	fl.StringVarP(&identity, "identity-file", "i", "", "the private key to log in with; default: ssh's (~/.ssh/id_*, your agent)")
	fl.Uint16VarP(&port, "port", "p", 22, "the guest's ssh port")
	fl.StringVarP(&command, "command", "c", "", "a command to run instead of a login shell (or give it after --)")
	fl.StringArrayVar(&sshOpts, "local-ssh-opts", nil, "more options for ssh, e.g. '-o StrictHostKeyChecking=accept-new' or '-t' (repeatable; split on spaces)")
	return cmd
}

// sshArgs is ssh's command line: the proxy, the host-key alias, the
// user's options, the destination, then the remote command.
func sshArgs(self string, kubeFlags []string, ns, kind, name string, port uint16, user, identity, command string, opts, remote []string) []string {
	proxy := append([]string{self}, kubeFlags...)
	proxy = append(proxy, "--namespace", ns, "port-forward", "--stdio", kind+"/"+name, strconv.Itoa(int(port)))
	host := "vmi/" + name + "." + ns
	argv := []string{"-o", "ProxyCommand=" + shellJoin(proxy), "-o", "HostKeyAlias=" + host}
	if user != "" {
		argv = append(argv, "-l", user)
	}
	if identity != "" {
		argv = append(argv, "-i", identity)
	}
	for _, o := range opts {
		argv = append(argv, strings.Fields(o)...)
	}
	argv = append(argv, host)
	if command != "" {
		argv = append(argv, command)
	}
	return append(argv, remote...)
}

// kubeFlags are the connection flags this command was given (kubeconfig,
// context, server, credentials), for the ProxyCommand's podvirtctl to
// reach the same cluster as the same user. The namespace goes apart.
func kubeFlags(cmd *cobra.Command) []string {
	var out []string
	// VisitAll and Changed: the flags were set through the subcommand's
	// merged flag set, which Visit on the root's would not see.
	cmd.Root().PersistentFlags().VisitAll(func(f *pflag.Flag) {
		if f.Changed && f.Name != "namespace" {
			out = append(out, "--"+f.Name+"="+f.Value.String())
		}
	})
	return out
}

// shellJoin quotes words for the shell ssh runs its ProxyCommand with.
func shellJoin(words []string) string {
	quoted := make([]string, len(words))
	for i, w := range words {
		if w != "" && strings.Trim(w, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./=:@,+") == "" {
			quoted[i] = w
			continue
		}
		quoted[i] = "'" + strings.ReplaceAll(w, "'", `'\''`) + "'"
	}
	return strings.Join(quoted, " ")
}
