// Package cluster is the CSI driver's view of the Kubernetes API: the
// claims it fills (their source annotations, and the import state it
// records in others), the Secrets and ConfigMaps a StorageClass names, and
// the events it records on claims.
package cluster

import (
	"context"
	"encoding/json"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/record"
)

// Client reads claims, Secrets and ConfigMaps and records events.
type Client struct {
	cs          kubernetes.Interface
	broadcaster record.EventBroadcaster
	recorder    record.EventRecorder
}

// New connects to the API server of cfg. Events name component as their
// source on host (the node).
func New(cfg *rest.Config, component, host string) (*Client, error) {
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	// Import progress is a stream of Normal events on one claim: the
	// default spam filter (25, then one per 5 minutes) and aggregation
	// (10 similar in 10 minutes) would hide it. The driver limits the rate
	// itself.
	b := record.NewBroadcasterWithCorrelatorOptions(record.CorrelatorOptions{BurstSize: 100, QPS: 0.5, MaxEvents: 1000})
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: cs.CoreV1().Events("")})
	return &Client{
		cs:          cs,
		broadcaster: b,
		recorder:    b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: component, Host: host}),
	}, nil
}

// Close flushes and stops event recording.
func (c *Client) Close() { c.broadcaster.Shutdown() }

// Claim gets a PersistentVolumeClaim.
func (c *Client) Claim(ctx context.Context, namespace, name string) (*corev1.PersistentVolumeClaim, error) {
	return c.cs.CoreV1().PersistentVolumeClaims(namespace).Get(ctx, name, metav1.GetOptions{})
}

// AnnotateClaim sets a claim's annotations with a merge patch: a nil value
// removes the key, keys not named stay as they are.
func (c *Client) AnnotateClaim(ctx context.Context, namespace, name string, annotations map[string]*string) error {
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": annotations}})
	if err != nil {
		return err
	}
	_, err = c.cs.CoreV1().PersistentVolumeClaims(namespace).Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{})
	return err
}

// Secret gets a Secret.
func (c *Client) Secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	return c.cs.CoreV1().Secrets(namespace).Get(ctx, name, metav1.GetOptions{})
}

// ConfigMap gets a ConfigMap.
func (c *Client) ConfigMap(ctx context.Context, namespace, name string) (*corev1.ConfigMap, error) {
	return c.cs.CoreV1().ConfigMaps(namespace).Get(ctx, name, metav1.GetOptions{})
}

// Event records an event on obj (asynchronously).
func (c *Client) Event(obj runtime.Object, eventType, reason, message string) {
	c.recorder.Event(obj, eventType, reason, message)
}
