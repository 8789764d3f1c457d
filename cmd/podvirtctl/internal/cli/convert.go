package cli

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cmd/podvirtctl/internal/kubevirt"
)

// convertCommand is `convert -f FILE`: KubeVirt VirtualMachines in,
// podvirt's out. A field it cannot map stops it, unless --lossy, so that
// nothing the user wrote is lost without them knowing.
func (o *options) convertCommand() *cobra.Command {
	var file string
	var lossy bool
	cmd := &cobra.Command{
		Use:   "convert -f FILE",
		Short: "Print KubeVirt VirtualMachines (kubevirt.io/v1) as podvirt ones",
		Long: `Print KubeVirt VirtualMachines (kubevirt.io/v1, from YAML or JSON: documents, or a List
as kubectl get -o yaml prints it) as podvirt VirtualMachines. dataVolumeTemplates become disk
templates (registry and http sources as the disk.podvirt.io/source annotation), bindings
masquerade/passt on the pod network become user, bridge/macvtap on Multus networks tap.

Fields podvirt has no place for are all listed, with their path and why, and nothing is
printed; with --lossy the VMs are printed without them and the list goes to stderr.`,
		Example: fmt.Sprintf(`  %[1]s convert -f kubevirt-vm.yaml | kubectl apply -f -
  kubectl get vm.kubevirt.io my-vm -o yaml | %[1]s convert -f - --lossy`, o.name),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if file == "" {
				return fmt.Errorf("%s needs -f FILE (or -f - for stdin): the KubeVirt VirtualMachine to convert", cmd.CommandPath())
			}
			in, source := o.streams.In, "stdin"
			if file != "-" {
				source = file
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("-f: %w", err)
				}
				defer f.Close()
				in = f
			}
			ns := ""
			if o.flags.Namespace != nil {
				ns = *o.flags.Namespace
			}
			return o.convert(in, source, ns, lossy)
		},
	}
	cmd.Flags().StringVarP(&file, "filename", "f", "", "the file holding KubeVirt VirtualMachines, - for stdin")
	cmd.Flags().BoolVar(&lossy, "lossy", false, "print the VMs without the fields podvirt cannot hold, listing those on stderr")
	return cmd
}

// convert converts every VM of in (named source in messages) and prints
// them all, or none.
func (o *options) convert(in io.Reader, source, namespace string, lossy bool) error {
	objs, err := kubevirt.Decode(in)
	if err != nil {
		return fmt.Errorf("%s: %w", source, err)
	}
	var vms []*v1.VirtualMachine
	var blocking, dropped []string
	for i, obj := range objs {
		vm, findings := kubevirt.Convert(obj)
		kind, _ := obj["kind"].(string)
		what := fmt.Sprintf("%s %q", kind, kubevirt.Name(obj))
		if len(objs) > 1 {
			what = fmt.Sprintf("object %d, %s", i+1, what)
		}
		var block, drop []string
		for _, f := range findings {
			if f.Blocking {
				block = append(block, "  "+f.String())
			} else {
				drop = append(drop, "  "+f.String())
			}
		}
		if len(block) > 0 {
			blocking = append(blocking, what+":", strings.Join(block, "\n"))
		}
		if len(drop) > 0 {
			dropped = append(dropped, what+":", strings.Join(drop, "\n"))
		}
		if namespace != "" {
			vm.Namespace = namespace
		}
		vms = append(vms, vm)
	}
	switch {
	case len(blocking) > 0:
		msg := fmt.Sprintf("%s cannot be converted: fix these fields in the KubeVirt VM and run convert again:\n%s", source, strings.Join(blocking, "\n"))
		if len(dropped) > 0 {
			msg += fmt.Sprintf("\nand these fields have no podvirt equivalent (--lossy leaves them out):\n%s", strings.Join(dropped, "\n"))
		}
		return fmt.Errorf("%s", msg)
	case len(dropped) > 0 && !lossy:
		return fmt.Errorf("%s has fields podvirt has no place for; nothing was printed. Edit them out, or run again with --lossy to print the VMs without them:\n%s",
			source, strings.Join(dropped, "\n"))
	case len(dropped) > 0:
		fmt.Fprintf(o.streams.ErrOut, "warning: left out of %s (--lossy), as podvirt has no place for them:\n%s\n", source, strings.Join(dropped, "\n"))
	}
	return printVMs(o.streams.Out, vms...)
}
