package apiserver

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
)

var server *Server

func TestMain(m *testing.M) {
	var err error
	server, err = Start(Options{CRDs: []*apiextensionsv1.CustomResourceDefinition{widgetCRD()}})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := server.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

func widgetCRD() *apiextensionsv1.CustomResourceDefinition {
	return &apiextensionsv1.CustomResourceDefinition{
		ObjectMeta: metav1.ObjectMeta{Name: "widgets.test.podvirt.io"},
		Spec: apiextensionsv1.CustomResourceDefinitionSpec{
			Group: "test.podvirt.io",
			Scope: apiextensionsv1.NamespaceScoped,
			Names: apiextensionsv1.CustomResourceDefinitionNames{Plural: "widgets", Singular: "widget", Kind: "Widget"},
			Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{
				Name: "v1", Served: true, Storage: true,
				Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
					Type: "object",
					Properties: map[string]apiextensionsv1.JSONSchemaProps{
						"spec": {
							Type:     "object",
							Required: []string{"size"},
							Properties: map[string]apiextensionsv1.JSONSchemaProps{
								"size":  {Type: "integer", Minimum: new(float64(1))},
								"color": {Type: "string"},
							},
						},
					},
				}},
			}},
		},
	}
}

// A CRD installed through the helper serves custom resources: one
// round-trips unchanged, and the schema is enforced by the real server.
func TestCustomResourceRoundTrip(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := dynamic.NewForConfig(server.Config)
	if err != nil {
		t.Fatal(err)
	}
	widgets := client.Resource(schema.GroupVersionResource{Group: "test.podvirt.io", Version: "v1", Resource: "widgets"}).Namespace("default")

	w := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "test.podvirt.io/v1",
		"kind":       "Widget",
		"metadata":   map[string]any{"name": "round-trip"},
		"spec":       map[string]any{"size": int64(3), "color": "blue"},
	}}
	if _, err := widgets.Create(ctx, w, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create widget: %v", err)
	}
	t.Cleanup(func() { _ = widgets.Delete(context.Background(), "round-trip", metav1.DeleteOptions{}) })

	got, err := widgets.Get(ctx, "round-trip", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("get widget: %v", err)
	}
	if size, _, _ := unstructured.NestedInt64(got.Object, "spec", "size"); size != 3 {
		t.Errorf("spec.size = %d, want 3", size)
	}
	if color, _, _ := unstructured.NestedString(got.Object, "spec", "color"); color != "blue" {
		t.Errorf("spec.color = %q, want blue", color)
	}
	if got.GetUID() == "" || got.GetResourceVersion() == "" {
		t.Errorf("server did not set uid/resourceVersion: %v", got.Object["metadata"])
	}

	bad := w.DeepCopy()
	bad.SetName("too-small")
	_ = unstructured.SetNestedField(bad.Object, int64(0), "spec", "size")
	if _, err := widgets.Create(ctx, bad, metav1.CreateOptions{}); err == nil {
		t.Error("a widget with spec.size=0 was accepted; the schema says minimum 1")
	}
}
