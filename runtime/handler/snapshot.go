package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// Online snapshot events.
const (
	ReasonDisksSwitched      = "SnapshotDisksSwitched"
	ReasonDisksSwitchFailed  = "SnapshotDisksSwitchFailed"
	snapshotSwitchGrace      = time.Minute
	defaultFreezeTimeoutMsec = 5000
)

// syncSnapshot carries out the online snapshot the controller asked for in
// the VMI's status.snapshotState: the launcher switches the disks, and the
// outcome goes into the same field.
func (r *Reconciler) syncSnapshot(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, last *launchercmd.StatusResponse) error {
	ss := vmi.Status.SnapshotState
	if ss == nil || ss.Completed || ss.Error != "" {
		return nil
	}
	if st := last.DomainState(); st != v1.DomainRunning && st != v1.DomainPaused {
		return nil // the controller fails it when the VMI goes
	}
	freeze := ss.FreezeTimeoutMilliseconds
	if freeze <= 0 {
		freeze = defaultFreezeTimeoutMsec
	}
	ctx, cancel := context.WithTimeout(ctx, time.Duration(freeze)*time.Millisecond+snapshotSwitchGrace)
	defer cancel()
	resp, err := sess.client.SnapshotDisks(ctx, &launchercmd.SnapshotDisksRequest{Layers: ss.Layers, FreezeTimeoutMs: freeze, MemoryVolume: ss.MemoryVolume})
	result := v1.SnapshotState{Completed: err == nil}
	if err != nil {
		result.Error = status.Convert(err).Message()
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonDisksSwitchFailed, "Snapshot", "switching the disks for snapshot %s: %s", ss.SnapshotUID, result.Error)
	} else {
		result.GuestAgent, result.Quiesced, result.Paused = resp.GetGuestAgent(), resp.GetQuiesced(), resp.GetPaused()
		result.AgentError, result.FrozenMilliseconds, result.MemorySaved = resp.GetAgentError(), resp.GetFrozenMs(), resp.GetMemorySaved()
		how := "filesystems frozen by the guest agent"
		switch {
		case result.MemorySaved:
			how = "memory saved with them, guest paused"
		case result.Paused:
			how = "guest paused (" + result.AgentError + ")"
		}
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonDisksSwitched, "Snapshot", "%d disks switched to new overlays for a snapshot; %s for %d ms", len(ss.Layers), how, result.FrozenMilliseconds)
	}
	// A merge patch of the node daemon's fields only: the controller's
	// request stays as it wrote it.
	patch, perr := json.Marshal(map[string]any{"status": map[string]any{"snapshotState": map[string]any{
		"completed": result.Completed, "error": result.Error, "guestAgent": result.GuestAgent, "quiesced": result.Quiesced,
		"paused": result.Paused, "agentError": result.AgentError, "frozenMilliseconds": result.FrozenMilliseconds, "memorySaved": result.MemorySaved,
	}}})
	if perr != nil {
		return perr
	}
	if err := r.Client.Status().Patch(ctx, vmi, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("write the snapshot outcome of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	return nil
}
