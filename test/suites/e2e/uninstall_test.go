package e2e

import (
	"context"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/test/env/chart"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestUninstall: helm uninstall removes every object of the release and
// every pod, and leaves the disks of deleted VMs retained: their PVCs still
// Bound to PVs that still exist. It retains one disk of its own, beside
// any other test's; the next test installs the release again.
func TestUninstall(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 20*time.Minute)
	const kept = "kept-disk"
	bindDisk(ctx, t, kept)
	deleteVM(t, kept)
	t.Cleanup(func() {
		_ = st.Client.Delete(context.Background(), &corev1.PersistentVolumeClaim{
			ObjectMeta: metav1.ObjectMeta{Namespace: stack.Namespace, Name: kept + "-root"}})
	})
	claims := &corev1.PersistentVolumeClaimList{}
	if err := st.Client.List(ctx, claims, client.InNamespace(stack.Namespace)); err != nil {
		t.Fatal(err)
	}
	uninstalled = true
	if out, err := st.Helm.Run(ctx, "uninstall", stack.Release, "--namespace", stack.Namespace, "--wait"); err != nil {
		t.Fatalf("helm uninstall: %v\n%s", err, out)
	}
	cfg, err := st.Cluster.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	var left []string
	pods := &corev1.PodList{}
	if err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		var err error
		if left, err = chart.Leftovers(ctx, cfg, stack.Release, stack.Namespace); err != nil {
			return false, err
		}
		err = st.Client.List(ctx, pods, client.InNamespace(stack.Namespace))
		return err == nil && len(left) == 0 && len(pods.Items) == 0, err
	}); err != nil {
		t.Fatalf("after helm uninstall: objects of the release %v and %d pods left: %v", left, len(pods.Items), err)
	}
	for _, c := range claims.Items {
		pvc := &corev1.PersistentVolumeClaim{}
		if err := st.Client.Get(ctx, client.ObjectKeyFromObject(&c), pvc); err != nil || pvc.Status.Phase != corev1.ClaimBound {
			t.Errorf("retained disk %s lost by helm uninstall: %v (phase %s)", c.Name, err, pvc.Status.Phase)
			continue
		}
		pv := &corev1.PersistentVolume{}
		if err := st.Client.Get(ctx, client.ObjectKey{Name: pvc.Spec.VolumeName}, pv); err != nil {
			t.Errorf("pv %s of retained disk %s lost by helm uninstall: %v", pvc.Spec.VolumeName, c.Name, err)
		}
	}
	t.Logf("after helm uninstall: %d retained disks with their PVs, no pods, no object of the release", len(claims.Items))
}
