package chart

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/cluster"
)

type clientset = kubernetes.Interface

func typedClient(t *testing.T, cfg *rest.Config) clientset {
	t.Helper()
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return cs
}

// provisionRetainedDisk has the chart's StorageClass (reclaimPolicy Retain
// for this test) provision a disk for a pod, then deletes the pod and the
// claim, and returns the PersistentVolume left Released ("" and a test
// error when the driver did not provision).
func provisionRetainedDisk(ctx context.Context, t *testing.T, cs clientset, ns string) string {
	t.Helper()
	const name = "retained-disk"
	pvc := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PersistentVolumeClaimSpec{
			StorageClassName: new("podvirt"),
			AccessModes:      []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			Resources:        corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	}
	if _, err := cs.CoreV1().PersistentVolumeClaims("default").Create(ctx, pvc, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"},
		Spec: corev1.PodSpec{
			TerminationGracePeriodSeconds: new(int64(1)),
			AutomountServiceAccountToken:  new(false),
			Containers: []corev1.Container{{
				Name: "pause", Image: cluster.PauseImage, ImagePullPolicy: corev1.PullNever,
				VolumeMounts: []corev1.VolumeMount{{Name: "disk", MountPath: "/disk"}},
			}},
			Volumes: []corev1.Volume{{Name: "disk", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: name},
			}}},
		},
	}
	if _, err := cs.CoreV1().Pods("default").Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	var pv string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 4*time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := cs.CoreV1().PersistentVolumeClaims("default").Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pv = got.Spec.VolumeName
		return got.Status.Phase == corev1.ClaimBound, nil
	})
	if err != nil {
		t.Errorf("the chart's StorageClass did not provision a disk for pod %s within 4 minutes: %v\nclaim events:\n%s\npods of %s:\n%s",
			name, err, events(ctx, cs, "default", name), ns, podReport(ctx, cs, ns))
	}
	grace := int64(0)
	if err := cs.CoreV1().Pods("default").Delete(ctx, name, metav1.DeleteOptions{GracePeriodSeconds: &grace}); err != nil {
		t.Fatal(err)
	}
	if err := waitGone(ctx, func(ctx context.Context) error {
		_, err := cs.CoreV1().Pods("default").Get(ctx, name, metav1.GetOptions{})
		return err
	}); err != nil {
		t.Fatalf("pod %s not gone: %v", name, err)
	}
	if err := cs.CoreV1().PersistentVolumeClaims("default").Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	if pv == "" {
		return ""
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		got, err := cs.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return got.Status.Phase == corev1.VolumeReleased, nil
	})
	if err != nil {
		t.Errorf("PersistentVolume %s of a deleted claim on a Retain class is not Released: %v", pv, err)
		return ""
	}
	return pv
}

// checkNodeIntegration: what the DaemonSets must have done on the node —
// the handler installed podvirt-l2 into the CNI bin dir and registered its
// device plugin, the CSI driver registered with the kubelet.
func checkNodeIntegration(ctx context.Context, t *testing.T, c *cluster.Cluster, cs clientset) {
	t.Helper()
	if info, err := os.Stat(filepath.Join(c.CNIBinDir(), "podvirt-l2")); err != nil || info.Mode().Perm()&0o111 == 0 {
		t.Errorf("the handler did not install podvirt-l2 into %s: %v", c.CNIBinDir(), err)
	}
	err := wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		node, err := cs.CoreV1().Nodes().Get(ctx, c.NodeName(), metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		_, ok := node.Status.Capacity[corev1.ResourceName(v1alpha1.TunDevice)]
		return ok, nil
	})
	if err != nil {
		t.Errorf("node %s has no %s capacity: the handler's device plugin did not register: %v", c.NodeName(), v1alpha1.TunDevice, err)
	}
	err = wait.PollUntilContextTimeout(ctx, time.Second, time.Minute, true, func(ctx context.Context) (bool, error) {
		n, err := cs.StorageV1().CSINodes().Get(ctx, c.NodeName(), metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, nil
		}
		if err != nil {
			return false, err
		}
		for _, d := range n.Spec.Drivers {
			if d.Name == "disk.podvirt.io" && slices.Contains(d.TopologyKeys, "topology.disk.podvirt.io/node") {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		t.Errorf("CSINode %s does not list disk.podvirt.io with its topology key: the driver did not register with the kubelet: %v", c.NodeName(), err)
	}
}

func events(ctx context.Context, cs clientset, ns, name string) string {
	evs, err := cs.CoreV1().Events(ns).List(ctx, metav1.ListOptions{FieldSelector: "involvedObject.name=" + name})
	if err != nil {
		return err.Error()
	}
	var b strings.Builder
	for _, e := range evs.Items {
		fmt.Fprintf(&b, "  %s %s: %s\n", e.Type, e.Reason, e.Message)
	}
	return b.String()
}

func waitGone(ctx context.Context, get func(context.Context) error) error {
	return wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		err := get(ctx)
		if apierrors.IsNotFound(err) {
			return true, nil
		}
		return false, err
	})
}

// checkNothingLeft waits until no object of the release is left (pods take
// their grace period).
func checkNothingLeft(ctx context.Context, t *testing.T, cfg *rest.Config, release, ns string) {
	t.Helper()
	var left []string
	err := wait.PollUntilContextTimeout(ctx, time.Second, 3*time.Minute, true, func(ctx context.Context) (bool, error) {
		var err error
		left, err = Leftovers(ctx, cfg, release, ns)
		if err != nil {
			return false, err
		}
		return len(left) == 0, nil
	})
	if err != nil {
		t.Errorf("after helm uninstall the release left %v (%v)", left, err)
	}
}
