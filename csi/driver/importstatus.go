package driver

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/csi/importer"
)

// importUpdate is a change to a claim's import annotations
// (v1.ImportPhaseAnnotation and the rest): a nil value removes a key, a
// key not named stays as it is.
type importUpdate map[string]*string

// importAnnotations is the update for a claim whose import enters phase:
// progress (may be nil) while Importing, the error while Retrying or
// Failed. Progress is kept through a failure, to show how far it got.
func importAnnotations(phase v1.DiskImportPhase, pr *importer.Progress, errMsg string) importUpdate {
	u := importUpdate{v1.ImportPhaseAnnotation: new(string(phase))}
	switch phase {
	case v1.ImportImporting:
		u[v1.ImportProgressAnnotation] = new("")
		u[v1.ImportMirrorAnnotation] = nil
		u[v1.ImportErrorAnnotation] = nil
		if pr != nil {
			u[v1.ImportProgressAnnotation] = new(progressPercent(*pr))
			if pr.Mirror != "" {
				u[v1.ImportMirrorAnnotation] = new(pr.Mirror)
			}
		}
	case v1.ImportSucceeded:
		u[v1.ImportProgressAnnotation] = new(progressPercent(importer.Progress{Bytes: 1, Total: 1}))
		u[v1.ImportMirrorAnnotation] = nil
		u[v1.ImportErrorAnnotation] = nil
	case v1.ImportRetrying, v1.ImportFailed:
		u[v1.ImportMirrorAnnotation] = nil
		u[v1.ImportErrorAnnotation] = new(boundedError(errMsg))
	case v1.ImportPending:
		u[v1.ImportMirrorAnnotation] = nil
		u[v1.ImportErrorAnnotation] = nil
	}
	return u
}

// progressPercent is v1.ImportProgressAnnotation's value: "42.0%", or ""
// while the image's size is unknown.
func progressPercent(pr importer.Progress) string {
	if pr.Total <= 0 {
		return ""
	}
	return fmt.Sprintf("%.1f%%", float64(min(pr.Bytes, pr.Total))*100/float64(pr.Total))
}

// boundedError cuts msg to v1.ImportErrorMaxLength bytes, on a character
// boundary: an annotation is no place for a megabyte of registry output.
func boundedError(msg string) string {
	if len(msg) <= v1.ImportErrorMaxLength {
		return msg
	}
	const ellipsis = "…"
	cut := v1.ImportErrorMaxLength - len(ellipsis)
	for cut > 0 && !utf8.RuneStart(msg[cut]) {
		cut--
	}
	return msg[:cut] + ellipsis
}

// shows reports whether claim (as read) carries u already.
func (u importUpdate) shows(claim *corev1.PersistentVolumeClaim) bool {
	for k, v := range u {
		got, ok := claim.Annotations[k]
		if (v == nil && ok) || (v != nil && (!ok || got != *v)) {
			return false
		}
	}
	return true
}

// recordImport records an import's phase on its claim, in the background.
func (d *Driver) recordImport(claim *corev1.PersistentVolumeClaim, u importUpdate) {
	if claim == nil || d.annotations == nil {
		return
	}
	d.annotations.add(types.NamespacedName{Namespace: claim.Namespace, Name: claim.Name}, u)
}

// reassertImport records u on a claim that does not show it, read at the
// start of this call: the update of an earlier call may have been lost
// with the driver that made it.
func (d *Driver) reassertImport(claim *corev1.PersistentVolumeClaim, u importUpdate) {
	if claim != nil && !u.shows(claim) {
		d.recordImport(claim, u)
	}
}

// Limits of claimAnnotator's writes.
const (
	annotateTimeout  = 15 * time.Second
	annotateAttempts = 5
)

// claimAnnotator writes claims' import annotations with merge patches, one
// at a time, off the caller's path: a slow API server never holds up a
// download. An update not yet written is merged with the next one for the
// same claim, so the claim shows the latest state and a burst costs one
// write. A failed write is retried with back-off, a few times.
type claimAnnotator struct {
	cluster Cluster
	log     *slog.Logger
	queue   workqueue.TypedRateLimitingInterface[types.NamespacedName]
	ctx     context.Context
	cancel  context.CancelFunc
	done    chan struct{}

	mu      sync.Mutex
	pending map[types.NamespacedName]importUpdate
}

func newClaimAnnotator(cluster Cluster, log *slog.Logger) *claimAnnotator {
	a := &claimAnnotator{
		cluster: cluster,
		log:     log,
		queue: workqueue.NewTypedRateLimitingQueue(
			workqueue.NewTypedItemExponentialFailureRateLimiter[types.NamespacedName](time.Second, 30*time.Second)),
		done:    make(chan struct{}),
		pending: map[types.NamespacedName]importUpdate{},
	}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	go a.run()
	return a
}

// add queues u for the claim key, over what is queued for it already.
func (a *claimAnnotator) add(key types.NamespacedName, u importUpdate) {
	a.mu.Lock()
	a.merge(key, u, true)
	a.mu.Unlock()
	a.queue.Add(key)
}

// merge puts u into key's pending update: over it when newer, under it
// when u is a failed write that later updates have overtaken. a.mu is
// held.
func (a *claimAnnotator) merge(key types.NamespacedName, u importUpdate, newer bool) {
	p := a.pending[key]
	if p == nil {
		p = importUpdate{}
		a.pending[key] = p
	}
	for k, v := range u {
		if _, ok := p[k]; newer || !ok {
			p[k] = v
		}
	}
}

func (a *claimAnnotator) run() {
	defer close(a.done)
	for a.writeNext() {
	}
}

// writeNext writes the pending update of the next claim in the queue;
// false once the queue is shut down.
func (a *claimAnnotator) writeNext() bool {
	key, quit := a.queue.Get()
	if quit {
		return false
	}
	defer a.queue.Done(key)
	a.mu.Lock()
	u := a.pending[key]
	delete(a.pending, key)
	a.mu.Unlock()
	if len(u) == 0 {
		return true
	}
	ctx, cancel := context.WithTimeout(a.ctx, annotateTimeout)
	err := a.cluster.AnnotateClaim(ctx, key.Namespace, key.Name, u)
	cancel()
	switch {
	case err == nil || apierrors.IsNotFound(err):
		a.queue.Forget(key)
	case a.queue.NumRequeues(key) < annotateAttempts-1 && a.ctx.Err() == nil:
		a.mu.Lock()
		a.merge(key, u, false)
		a.mu.Unlock()
		a.queue.AddRateLimited(key)
	default:
		a.queue.Forget(key)
		a.log.Error("record import status on claim: giving up", "claim", key, "phase", valueOf(u[v1.ImportPhaseAnnotation]), "err", err)
	}
	return true
}

func valueOf(s *string) string {
	if s == nil {
		return ""
	}
	return *s
}

// stop writes what is queued, waiting at most grace, and ends the writer.
func (a *claimAnnotator) stop(grace time.Duration) {
	go a.queue.ShutDownWithDrain()
	select {
	case <-a.done:
	case <-time.After(grace):
		a.log.Error("record import status on claims: the API server is too slow, dropping the updates left")
		a.cancel()
		a.queue.ShutDown()
		<-a.done
	}
	a.cancel()
}
