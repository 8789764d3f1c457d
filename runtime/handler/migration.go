package handler

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// A live migration, as the two node daemons see it (the controller makes
// the target pod and writes the VMI's status.migrationState; see
// api/v1alpha1.MigrationState for who writes what):
//
//   - the target's daemon asks its launcher to PrepareMigration and
//     publishes where it listens, its token and its domain XML;
//   - the source's daemon then runs Migrate on its launcher, publishing
//     progress, and the outcome when it ends (or aborts it when asked).
//
// Neither writes the domain's status meanwhile: the source's states
// (paused at the switch, shut off after) are the migration's, and the
// target's domain becomes the VMI's only once the controller names its
// pod the VMI's launcher pod.

// Event reasons of migrations.
const (
	ReasonMigrationTargetReady = "MigrationTargetReady"
	ReasonMigrationFailed      = "MigrationFailed"
	ReasonMigrated             = "Migrated"
)

// migrations are the Migrate calls this daemon runs, by migration UID.
type migrations struct {
	mu sync.Mutex
	m  map[types.UID]context.CancelFunc
}

func (ms *migrations) running(uid types.UID) (context.CancelFunc, bool) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	c, ok := ms.m[uid]
	return c, ok
}

func (ms *migrations) add(uid types.UID, cancel context.CancelFunc) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	if ms.m == nil {
		ms.m = map[types.UID]context.CancelFunc{}
	}
	ms.m[uid] = cancel
}

func (ms *migrations) remove(uid types.UID) {
	ms.mu.Lock()
	defer ms.mu.Unlock()
	delete(ms.m, uid)
}

// patchMigration merges fields into the VMI's status.migrationState, as
// long as it is still the migration uid.
func (r *Reconciler) patchMigration(ctx context.Context, vmi *v1.VirtualMachineInstance, uid types.UID, fields map[string]any) error {
	fields["migrationUID"] = uid
	patch, err := json.Marshal(map[string]any{"status": map[string]any{"migrationState": fields}})
	if err != nil {
		return err
	}
	target := &v1.VirtualMachineInstance{}
	target.Namespace, target.Name = vmi.Namespace, vmi.Name
	if err := r.Client.Status().Patch(ctx, target, client.RawPatch(types.MergePatchType, patch)); err != nil {
		return fmt.Errorf("write the migration state of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	return nil
}

// prepareTarget asks the target launcher to get ready and publishes where
// it listens.
func (r *Reconciler) prepareTarget(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, pod *corev1.Pod, ms *v1.MigrationState) error {
	nets, err := r.networksOf(ctx, vmi, pod, "PrepareMigration")
	if err != nil {
		return err
	}
	spec, err := json.Marshal(vmi)
	if err != nil {
		return err
	}
	if pod.Status.PodIP == "" {
		return fmt.Errorf("target pod %s has no IP yet", pod.Name)
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	resp, err := sess.client.PrepareMigration(ctx, &launchercmd.PrepareMigrationRequest{Vmi: spec, Networks: nets,
		ListenAddress: net.JoinHostPort(pod.Status.PodIP, "0")})
	if err != nil {
		msg := fmt.Sprintf("target launcher %s could not get ready: %s", pod.Name, status.Convert(err).Message())
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonMigrationFailed, "Migrate", "%s", msg)
		return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"failed": true, "failureReason": msg, "endTimestamp": metav1.Now()})
	}
	r.Recorder.Eventf(vmi, pod, corev1.EventTypeNormal, ReasonMigrationTargetReady, "Migrate", "target launcher %s listens on %s", pod.Name, resp.GetAddress())
	return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"targetAddress": resp.GetAddress(),
		"targetToken": base64.StdEncoding.EncodeToString(resp.GetToken()), "targetDomain": resp.GetDomainXml(),
		"targetCertificateSHA256": base64.StdEncoding.EncodeToString(resp.GetCertificateSha256())})
}

// syncSource starts, aborts or closes the books on the migration from
// this node.
func (r *Reconciler) syncSource(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, pod *corev1.Pod, ms *v1.MigrationState) error {
	cancel, running := r.migrations.running(ms.MigrationUID)
	switch {
	case running && ms.AbortRequested:
		cancel()
	case running:
	case ms.StartTimestamp != nil:
		// Started by this daemon before it restarted: the call was cut,
		// which aborted the migration in the launcher.
		msg := "the source node daemon restarted during the migration, which aborted it; the VMI runs where it was"
		return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"failed": true, "failureReason": msg, "endTimestamp": metav1.Now()})
	case ms.AbortRequested:
		return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"failed": true, "failureReason": "cancelled before it started", "endTimestamp": metav1.Now()})
	case ms.TargetAddress != "":
		token, err := base64.StdEncoding.DecodeString(ms.TargetToken)
		if err != nil {
			return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"failed": true, "failureReason": "the target's token is not base64", "endTimestamp": metav1.Now()})
		}
		certSum, err := base64.StdEncoding.DecodeString(ms.TargetCertificateSHA256)
		if err != nil || len(certSum) == 0 {
			return r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"failed": true,
				"failureReason": "the target announced no TLS certificate digest (a target launcher older than the source's?)", "endTimestamp": metav1.Now()})
		}
		if err := r.patchMigration(ctx, vmi, ms.MigrationUID, map[string]any{"startTimestamp": metav1.Now()}); err != nil {
			return err
		}
		// The migration outlives this reconcile; AbortRequested or the
		// daemon's end cancels it.
		mctx, mcancel := context.WithCancel(context.WithoutCancel(ctx))
		r.migrations.add(ms.MigrationUID, mcancel)
		req := &launchercmd.MigrateRequest{TargetAddress: ms.TargetAddress, Token: token, CertificateSha256: certSum, DomainXml: ms.TargetDomain,
			BandwidthMib: r.Config.Migration.BandwidthMiB, AutoConverge: r.Config.Migration.AutoConverge, PostCopy: r.Config.Migration.AllowPostCopy,
			DeadlineSeconds: r.Config.Migration.deadline(vmi)}
		go r.migrate(mctx, sess, vmi.DeepCopy(), pod.Name, ms.MigrationUID, req)
	}
	return nil
}

// migrate runs the source launcher's Migrate and publishes its progress
// and outcome.
func (r *Reconciler) migrate(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, pod string, uid types.UID, req *launchercmd.MigrateRequest) {
	defer r.migrations.remove(uid)
	logger := log.FromContext(ctx).WithValues("vmi", vmi.Namespace+"/"+vmi.Name, "migration", uid)
	bg := context.WithoutCancel(ctx) // the outcome is written even when ctx was cancelled
	fields := func(p *launchercmd.MigrationProgress) map[string]any {
		return map[string]any{"memoryBytes": p.GetMemoryProcessed(), "memoryTotal": p.GetMemoryTotal(),
			"diskBytes": p.GetDiskProcessed(), "diskTotal": p.GetDiskTotal()}
	}
	var last *launchercmd.MigrationProgress
	err := func() error {
		stream, err := sess.client.Migrate(ctx, req)
		if err != nil {
			return err
		}
		sent := time.Time{}
		for {
			p, err := stream.Recv()
			if err != nil {
				return err
			}
			last = p
			if p.GetDone() {
				return nil
			}
			if time.Since(sent) >= time.Second {
				sent = time.Now()
				if err := r.patchMigration(bg, vmi, uid, fields(p)); err != nil {
					logger.Info("migration progress not written", "err", err)
				}
			}
		}
	}()
	out := map[string]any{"endTimestamp": metav1.Now()}
	if last != nil {
		out = fields(last)
		out["endTimestamp"] = metav1.Now()
	}
	if err != nil {
		msg := fmt.Sprintf("migration from pod %s failed: %s", pod, status.Convert(err).Message())
		select {
		case <-r.stop:
			msg = "the source node daemon stopped during the migration, which aborted it; the VMI runs where it was (" + msg + ")"
		default:
			if ctx.Err() != nil {
				msg = "cancelled: " + msg
			}
		}
		out["failed"], out["failureReason"] = true, msg
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonMigrationFailed, "Migrate", "%s", msg)
	} else {
		if ms := vmi.Status.MigrationState; ms != nil && ms.TargetNode == r.Config.NodeName {
			// The target is on this node: it gets the guest's L2 identity
			// from the source now, before the VMI moves to it.
			target := &corev1.Pod{}
			if err := r.Client.Get(bg, types.NamespacedName{Namespace: vmi.Namespace, Name: ms.TargetPod}, target); err != nil {
				logger.Error(err, "target pod not found for the L2 handoff; its reconcile does it")
			} else if err := r.handOver(vmi, target); err != nil {
				logger.Error(err, "L2 handoff; its reconcile retries")
			}
		}
		out["completed"], out["downtimeMilliseconds"] = true, last.GetDowntimeMs()
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonMigrated, "Migrate", "migrated from pod %s in %s, downtime %dms",
			pod, time.Duration(last.GetElapsedMs())*time.Millisecond, last.GetDowntimeMs())
	}
	for attempt := 0; attempt < 10; attempt++ {
		if err := r.patchMigration(bg, vmi, uid, out); err == nil {
			break
		} else {
			logger.Error(err, "migration outcome not written; retrying")
			time.Sleep(time.Second)
		}
	}
}

// handOver gives the VMI's launcher pod, after a migration from a pod on
// this same node, the guest's L2 identity. The source daemon does it at
// once when the migration ends; a pod whose handoff was cut short (a
// daemon restart) gets it here.
func (r *Reconciler) handOver(vmi *v1.VirtualMachineInstance, pod *corev1.Pod) error {
	if r.Config.Networks == nil || !needsNetworks(vmi) {
		return nil
	}
	if err := r.Config.Networks.HandOver(pod); err != nil {
		msg := fmt.Sprintf("the L2 address and MAC of pod %s's source on this node could not be handed over to it: %v", pod.Name, err)
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonNetworkFailed, "Migrate", "%s", msg)
		return errors.New(msg)
	}
	return nil
}

// MigrationConfig is the cluster's migration settings, applied by the
// source node's daemon.
type MigrationConfig struct {
	// BandwidthMiB caps each migration (MiB/s; 0: unlimited).
	BandwidthMiB uint64
	// CompletionTimeoutPerGiB is how long a migration may take per GiB of
	// guest memory before it is aborted (or switched to post-copy).
	CompletionTimeoutPerGiB time.Duration
	AutoConverge            bool
	AllowPostCopy           bool
}

// deadline is the migration's completion timeout for vmi, in seconds.
func (c MigrationConfig) deadline(vmi *v1.VirtualMachineInstance) int64 {
	if c.CompletionTimeoutPerGiB <= 0 {
		return 0
	}
	gib := float64(vmi.Spec.Domain.Memory.Guest.Value()) / (1 << 30)
	return int64(max(gib, 1) * c.CompletionTimeoutPerGiB.Seconds())
}
