package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"net/netip"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// observed is the part of a VMI's status the handler owns.
type observed struct {
	Domain      *v1.DomainStatus                            `json:"domain"`
	Interfaces  []v1.VirtualMachineInstanceNetworkInterface `json:"interfaces"`
	Readiness   *v1.ProbeStatus                             `json:"readiness"`
	GuestOSInfo *v1.GuestOSInfo                             `json:"guestOSInfo"`
}

// observe turns the launcher's last status (and why it was lost, if it
// was) into the VMI status fields the handler owns. cur is the VMI's
// current domain status, whose transition time is kept while the state
// stays.
func observe(last *launchercmd.StatusResponse, lost string, cur *v1.DomainStatus, now metav1.Time) observed {
	var o observed
	state := last.DomainState()
	reason, message := last.GetReason(), last.GetMessage()
	switch {
	case lost != "":
		state, reason, message = v1.DomainCrashed, ReasonLauncherLost, lost
	}
	if state != "" {
		o.Domain = &v1.DomainStatus{State: state, Reason: reason, Message: message, LastTransitionTime: now,
			GuestAgentConnected: lost == "" && last.GetGuestAgentConnected()}
		if cur != nil && cur.State == state {
			o.Domain.LastTransitionTime = cur.LastTransitionTime
		}
	}
	if r := last.GetReadiness(); r != "" && lost == "" {
		o.Readiness = &v1.ProbeStatus{Ready: r == launchercmd.Ready, Message: last.GetReadinessMessage()}
	}
	if i := last.GetGuestOsInfo(); i != nil && lost == "" {
		o.GuestOSInfo = &v1.GuestOSInfo{Name: i.GetName(), ID: i.GetId(), Version: i.GetVersion(), KernelRelease: i.GetKernelRelease(), PrettyName: i.GetPrettyName()}
	}
	for _, i := range last.GetInterfaces() {
		ni := v1.VirtualMachineInstanceNetworkInterface{Name: i.GetNetwork(), MAC: i.GetMac()}
		if p, err := netip.ParsePrefix(i.GetIp()); err == nil {
			ni.IP = p.Addr().String()
			ni.IPs = []string{ni.IP}
		}
		o.Interfaces = append(o.Interfaces, ni)
	}
	return o
}

// writeStatus writes status.domain and status.interfaces when they
// changed, with a merge patch of just those fields, and records the
// domain's state changes as events on the VMI.
func (r *Reconciler) writeStatus(ctx context.Context, vmi *v1.VirtualMachineInstance, o observed) error {
	if o.Domain == nil {
		return nil // the launcher waits for Start: nothing to say yet
	}
	if equality.Semantic.DeepEqual(o.Domain, vmi.Status.Domain) && equality.Semantic.DeepEqual(o.Interfaces, vmi.Status.Interfaces) &&
		equality.Semantic.DeepEqual(o.Readiness, vmi.Status.Readiness) && equality.Semantic.DeepEqual(o.GuestOSInfo, vmi.Status.GuestOSInfo) {
		return nil
	}
	patch, err := json.Marshal(map[string]observed{"status": o})
	if err != nil {
		return err
	}
	prev := vmi.DeepCopy()
	if err := r.Client.Status().Patch(ctx, vmi, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("write status of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	r.metrics.statusWrites.Inc()
	r.recordTransition(prev, o.Domain)
	return nil
}

// recordTransition records a change of the domain's state as an event.
func (r *Reconciler) recordTransition(vmi *v1.VirtualMachineInstance, next *v1.DomainStatus) {
	if vmi.Status.Domain != nil && vmi.Status.Domain.State == next.State {
		return
	}
	from := "none"
	if vmi.Status.Domain != nil {
		from = string(vmi.Status.Domain.State)
	}
	switch {
	case next.Reason == ReasonLauncherLost:
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonLauncherLost, "Sync", "%s", next.Message)
	case next.State == v1.DomainCrashed:
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonDomainCrashed, "Sync", "the domain crashed (%s) %s", next.Reason, next.Message)
	case next.State == v1.DomainShutdown:
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonShutdown, "Sync", "the guest shut down (%s)", next.Reason)
	default:
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonDomainState, "Sync", "domain %s → %s", from, next.State)
	}
}
