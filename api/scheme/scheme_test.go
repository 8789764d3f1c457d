package scheme

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestNew(t *testing.T) {
	s, err := New()
	if err != nil {
		t.Fatal(err)
	}
	for _, obj := range []runtime.Object{&corev1.Pod{}, &v1.VirtualMachine{}, &v1.VirtualMachineInstance{}} {
		if _, _, err := s.ObjectKinds(obj); err != nil {
			t.Error(err)
		}
	}
}
