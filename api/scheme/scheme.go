// Package scheme is the one runtime.Scheme podvirt's clients use: the
// Kubernetes built-in types and podvirt.io/v1alpha1. It lives apart from
// api/v1alpha1 so that binaries which only need the types (the launcher)
// do not link every built-in API.
package scheme

import (
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// New returns a scheme that knows the Kubernetes types and podvirt's.
func New() (*runtime.Scheme, error) {
	s := runtime.NewScheme()
	if err := clientgoscheme.AddToScheme(s); err != nil {
		return nil, err
	}
	if err := v1.AddToScheme(s); err != nil {
		return nil, err
	}
	return s, nil
}
