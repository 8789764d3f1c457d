package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	csidriver "github.com/podvirt/podvirt/csi/driver"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestSecondDiskFromCache: a second VM from an image a first one brought
// to the node is provisioned from the node's cache: its PVC binds without a
// download (the CSI driver's ImportCompleted event says so, and no progress
// shows). The first disk is imported or, when a test before put the image
// on the node, itself from the cache.
func TestSecondDiskFromCache(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	names := []string{"cache-first", "cache-second"}
	for _, n := range names {
		t.Cleanup(func() { deleteVM(t, n) })
		start := time.Now()
		bindDisk(ctx, t, n)
		t.Logf("vm %s: disk bound after %s", n, time.Since(start).Round(time.Millisecond))
	}
	second := names[1] + "-root"
	for _, e := range importEvents(ctx, t, second) {
		if e.Reason == csidriver.ReasonImportProgress ||
			e.Reason == csidriver.ReasonImportCompleted && !strings.Contains(e.Message, csidriver.FromCache) {
			t.Errorf("pvc %s was not provisioned from the cache: %s: %s", second, e.Reason, e.Message)
		}
	}
}

// bindDisk creates the halted VM name with the guest disk and starts it,
// so its PVC gets a consumer (WaitForFirstConsumer), and waits until the
// PVC is Bound.
func bindDisk(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	createVM(ctx, t, stack.VM(name, v1.RunStrategyHalted))
	podvirtctl(ctx, t, "start", name)
	pvc := &corev1.PersistentVolumeClaim{}
	if err := stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name + "-root"}, pvc)
		return err == nil && pvc.Status.Phase == corev1.ClaimBound, client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("pvc %s-root not Bound: %v", name, err)
	}
}
