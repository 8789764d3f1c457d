package handler

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/cni/handoff"
	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/contracts/podlink"
)

// ResultsDir is the node's CNI results store (contracts/cniresults), where
// podvirt-l2 keeps each pod interface's ADD result.
type ResultsDir string

var _ NetworkResults = ResultsDir("")

// PodNetworks returns the result of every Multus network of vmi, read
// from the pod interface podlink.InterfaceName(network) of pod.
func (d ResultsDir) PodNetworks(_ context.Context, pod *corev1.Pod, vmi *v1.VirtualMachineInstance) (*launchercmd.Networks, error) {
	byIf, err := cniresults.Load(string(d), string(pod.UID))
	if err != nil {
		return nil, err
	}
	st := &launchercmd.Networks{}
	for _, n := range vmi.Spec.Networks {
		if n.Multus == nil {
			continue
		}
		ifname := podlink.InterfaceName(n.Name)
		res, ok := byIf[ifname]
		if !ok {
			return nil, fmt.Errorf("network %q (NAD %s): no podvirt-l2 result for pod interface %s in %s; is the NAD's plugin podvirt-l2 with this results dir?",
				n.Name, n.Multus.NetworkName, ifname, d)
		}
		st.Attachments = append(st.Attachments, launchercmd.Attachment{Name: n.Name, Interface: ifname, Result: res})
	}
	return st, nil
}

// HandOver completes the handoff of pod's attachments (cni/handoff).
func (d ResultsDir) HandOver(pod *corev1.Pod) error {
	return handoff.Complete(string(d), string(pod.UID))
}
