package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// pauseCommand is `pause vm|vmi NAME` (pause true) or `unpause vm|vmi
// NAME`: it sets or removes the VMI's podvirt.io/paused annotation, which
// the node daemon acts on. A VM's VMI has the VM's name.
func (o *options) pauseCommand(pause bool) *cobra.Command {
	verb := "pause"
	short := "Pause a running VM's guest (its vCPUs stop; memory and devices stay)"
	if !pause {
		verb = "unpause"
		short = "Resume a paused VM's guest"
	}
	return &cobra.Command{
		Use:       verb + " (vm|vmi) NAME",
		Short:     short,
		Example:   fmt.Sprintf("  %s %s vm my-vm\n  %s %s vmi my-vm", o.name, verb, o.name, verb),
		ValidArgs: []string{"vm", "vmi"},
		Args:      kindAndName,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.setPaused(ctx, args[0], args[1], pause)
		}),
	}
}

func (s *session) setPaused(ctx context.Context, kind, name string, pause bool) (string, error) {
	vmi, err := s.runningVMI(ctx, kind, name, map[bool]string{true: "pause", false: "unpause"}[pause])
	if err != nil {
		return "", err
	}
	paused := vmi.Annotations[v1.PausedAnnotation] == "true"
	switch {
	case pause && paused:
		return "", fmt.Errorf("vmi %s is already paused (annotation %s=true): resume it with `%s unpause vmi %s`", name, v1.PausedAnnotation, s.o.name, name)
	case !pause && !paused:
		return "", fmt.Errorf("vmi %s is not paused (it has no annotation %s=true): there is nothing to unpause", name, v1.PausedAnnotation)
	}
	var value any // null removes the annotation
	if pause {
		value = "true"
	}
	b, err := json.Marshal(map[string]any{"metadata": map[string]any{
		"resourceVersion": vmi.ResourceVersion,
		"annotations":     map[string]any{v1.PausedAnnotation: value},
	}})
	if err != nil {
		return "", err
	}
	if err := s.c.Patch(ctx, vmi, client.RawPatch(types.MergePatchType, b)); err != nil {
		return "", s.apiError(err, "patch", "virtualmachineinstances", name)
	}
	if pause {
		return fmt.Sprintf("vmi %s was scheduled to pause", name), nil
	}
	return fmt.Sprintf("vmi %s was scheduled to unpause", name), nil
}

// runningVMI returns the Running VMI of a VM (kind "vm") or the VMI named
// name (kind "vmi"); the error says why there is none and what to do.
func (s *session) runningVMI(ctx context.Context, kind, name, action string) (*v1.VirtualMachineInstance, error) {
	var vm *v1.VirtualMachine
	if kind == "vm" {
		var err error
		if vm, err = s.getVM(ctx, name); err != nil {
			return nil, err
		}
	}
	vmi, err := s.getVMI(ctx, name)
	if err != nil {
		return nil, err
	}
	if vmi == nil {
		if vm == nil {
			vm = &v1.VirtualMachine{}
			if err := s.c.Get(ctx, client.ObjectKey{Namespace: s.ns, Name: name}, vm); err != nil {
				return nil, s.notFound(ctx, "vmi", name)
			}
		}
		return nil, fmt.Errorf("vm %s is %s: start it with `%s start %s`", name, vmState(vm, nil), s.o.name, name)
	}
	switch {
	case vmi.DeletionTimestamp != nil:
		return nil, fmt.Errorf("vmi %s is stopping: cannot %s it", name, action)
	case vmi.Status.Phase.IsFinal():
		return nil, fmt.Errorf("vmi %s has ended (%s): start its VM again with `%s start %s`", name, vmi.Status.Phase, s.o.name, name)
	case vmi.Status.Phase != v1.Running:
		phase := vmi.Status.Phase
		if phase == "" {
			phase = v1.Pending
		}
		return nil, fmt.Errorf("vmi %s is not running yet (%s): wait until `kubectl get vmi %s -n %s` says Running, then %s it", name, phase, name, s.ns, action)
	}
	return vmi, nil
}
