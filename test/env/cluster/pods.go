package cluster

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// ProbeImage is the proof pod's image, built from test/cmd/podvirt-probe.
const ProbeImage = "podvirt.local/probe:1"

// ImportProbe builds the probe image and imports it into the node.
func (c *Cluster) ImportProbe(ctx context.Context) error {
	return c.BuildAndImport(ctx, "github.com/podvirt/podvirt/test/cmd/podvirt-probe", ProbeImage, []string{"/probe"})
}

// ProbePod is a pod that runs the probe once. annotations may ask Multus
// for extra networks.
func ProbePod(name string, annotations map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default", Annotations: annotations},
		Spec: corev1.PodSpec{
			RestartPolicy:                 corev1.RestartPolicyNever,
			AutomountServiceAccountToken:  new(false),
			TerminationGracePeriodSeconds: new(int64(1)),
			Containers: []corev1.Container{{
				Name:            "probe",
				Image:           ProbeImage,
				ImagePullPolicy: corev1.PullNever, // imported, never pulled
			}},
		},
	}
}

// RunToCompletion creates pod, waits until it has succeeded and returns it
// with its log, read through the API server (and so through the kubelet).
func (c *Cluster) RunToCompletion(ctx context.Context, pod *corev1.Pod, timeout time.Duration) (*corev1.Pod, string, error) {
	cs, err := c.clientset()
	if err != nil {
		return nil, "", err
	}
	pods := cs.CoreV1().Pods(pod.Namespace)
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, "", fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var got *corev1.Pod
	err = c.waitFor(ctx, "pod "+pod.Name+" Succeeded", c.kubeletLog(pod.Spec.NodeName), timeout, func(ctx context.Context) (bool, error) {
		got, err = pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		switch got.Status.Phase {
		case corev1.PodSucceeded:
			return true, nil
		case corev1.PodFailed:
			logs, _ := pods.GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
			return false, permanentError{fmt.Errorf("pod %s failed: %s; its log:\n%s", pod.Name, podProblem(got), logs)}
		}
		return false, fmt.Errorf("pod %s is %s: %s", pod.Name, got.Status.Phase, podProblem(got))
	})
	if err != nil {
		return got, "", err
	}
	logs, err := pods.GetLogs(pod.Name, &corev1.PodLogOptions{}).DoRaw(ctx)
	if err != nil {
		return got, "", fmt.Errorf("read logs of pod %s: %w", pod.Name, err)
	}
	return got, string(logs), nil
}

// StartServer creates pod (a ProbePod with PROBE_LISTEN, say) and waits
// until it runs with an address; it returns the pod.
func (c *Cluster) StartServer(ctx context.Context, pod *corev1.Pod, timeout time.Duration) (*corev1.Pod, error) {
	cs, err := c.clientset()
	if err != nil {
		return nil, err
	}
	pods := cs.CoreV1().Pods(pod.Namespace)
	if _, err := pods.Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		return nil, fmt.Errorf("create pod %s/%s: %w", pod.Namespace, pod.Name, err)
	}
	var got *corev1.Pod
	err = c.waitFor(ctx, "pod "+pod.Name+" Running", "", timeout, func(ctx context.Context) (bool, error) {
		got, err = pods.Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		if got.Status.Phase == corev1.PodFailed || got.Status.Phase == corev1.PodSucceeded {
			return false, permanentError{fmt.Errorf("pod %s ended (%s): %s", pod.Name, got.Status.Phase, podProblem(got))}
		}
		ready := got.Status.Phase == corev1.PodRunning && got.Status.PodIP != ""
		if !ready {
			return false, fmt.Errorf("pod %s is %s: %s", pod.Name, got.Status.Phase, podProblem(got))
		}
		return true, nil
	})
	return got, err
}

// kubeletLog names the log of node's kubelet (the first node's when node
// is "" or unknown).
func (c *Cluster) kubeletLog(node string) string {
	if n, err := c.node(node); err == nil {
		return processName("kubelet", n)
	}
	return "kubelet"
}

// podProblem summarises why a pod is not running: the first waiting or
// terminated container reason, or the latest event-like condition.
func podProblem(p *corev1.Pod) string {
	for _, s := range p.Status.ContainerStatuses {
		if w := s.State.Waiting; w != nil {
			return w.Reason + ": " + w.Message
		}
		if t := s.State.Terminated; t != nil && t.ExitCode != 0 {
			return fmt.Sprintf("%s (exit %d): %s", t.Reason, t.ExitCode, t.Message)
		}
	}
	for _, cond := range p.Status.Conditions {
		if cond.Status != corev1.ConditionTrue && cond.Message != "" {
			return string(cond.Type) + ": " + cond.Message
		}
	}
	return "no reason reported yet"
}
