package handler

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// recordStartup writes, once, where vmi's start went (status.startup) and
// observes each step in the histogram: the API server's steps from the
// VMI and its pod, the node's from the launcher (t) and from when this
// daemon reached it (connected).
func (r *Reconciler) recordStartup(ctx context.Context, vmi *v1.VirtualMachineInstance, pod *corev1.Pod, connected time.Time, t *launchercmd.StartupTimes) error {
	if len(vmi.Status.Startup) > 0 || t.GetDomainStartedUnixMs() == 0 {
		return nil
	}
	steps := startupSteps(vmi, pod, connected, t)
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"startup": steps}})
	if err != nil {
		return err
	}
	target := &v1.VirtualMachineInstance{}
	target.Namespace, target.Name = vmi.Namespace, vmi.Name
	if err := r.Client.Status().Patch(ctx, target, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("write the startup steps of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	for _, s := range steps {
		r.metrics.startupSteps.WithLabelValues(s.Name).Observe(float64(s.Milliseconds) / 1000)
	}
	return nil
}

// startupSteps puts the start's milestones in order, each step timed from
// the one before (the first from the VMI's creation); a milestone not
// known is left out, and a clock step backwards counts as 0.
func startupSteps(vmi *v1.VirtualMachineInstance, pod *corev1.Pod, connected time.Time, t *launchercmd.StartupTimes) []v1.StartupStep {
	ms := func(v int64) time.Time {
		if v == 0 {
			return time.Time{}
		}
		return time.UnixMilli(v)
	}
	var scheduled time.Time
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodScheduled && c.Status == corev1.ConditionTrue {
			scheduled = c.LastTransitionTime.Time
		}
	}
	marks := []struct {
		name string
		at   time.Time
	}{
		{"Scheduled", scheduled},
		{"LauncherStarted", ms(t.GetLauncherStartedUnixMs())},
		{"LibvirtdReady", ms(t.GetLibvirtdReadyUnixMs())},
		{"NodeDaemonConnected", connected},
		{"DomainDefined", ms(t.GetDomainDefinedUnixMs())},
		{"DomainStarted", ms(t.GetDomainStartedUnixMs())},
	}
	var steps []v1.StartupStep
	prev := vmi.CreationTimestamp.Time
	for _, m := range marks {
		if m.at.IsZero() {
			continue
		}
		steps = append(steps, v1.StartupStep{Name: m.name, Time: metav1.NewMicroTime(m.at), Milliseconds: max(m.at.Sub(prev), 0).Milliseconds()})
		prev = m.at
	}
	return steps
}
