package v1alpha1_test

import (
	"os"
	"slices"
	"testing"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"sigs.k8s.io/yaml"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// TestDomainStatesMatchCRD: the states the launcher reports and the node
// daemon writes (DomainStates) are exactly those the VMI CRD accepts.
func TestDomainStatesMatchCRD(t *testing.T) {
	b, err := os.ReadFile("../../charts/podvirt/crds/podvirt.io_virtualmachineinstances.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextensionsv1.CustomResourceDefinition
	if err := yaml.Unmarshal(b, &crd); err != nil {
		t.Fatal(err)
	}
	var enum []string
	for _, v := range crd.Spec.Versions {
		if v.Name != v1alpha1.GroupVersion.Version {
			continue
		}
		state := v.Schema.OpenAPIV3Schema.Properties["status"].Properties["domain"].Properties["state"]
		for _, e := range state.Enum {
			var s string
			if err := yaml.Unmarshal(e.Raw, &s); err != nil {
				t.Fatal(err)
			}
			enum = append(enum, s)
		}
	}
	var states []string
	for _, s := range v1alpha1.DomainStates {
		states = append(states, string(s))
	}
	if !slices.Equal(enum, states) {
		t.Errorf("CRD enum of status.domain.state is %q, DomainStates %q (run make generate?)", enum, states)
	}
}
