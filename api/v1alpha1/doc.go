// Package v1alpha1 is the podvirt.io/v1alpha1 API: VirtualMachine and
// VirtualMachineInstance, modelled on KubeVirt's kubevirt.io/v1 types so
// their users find the same fields under the same names.
//
// The CRDs under charts/podvirt/crds and zz_generated.deepcopy.go are
// generated from this package by controller-gen (see generate_test.go); the
// validation rules live here, as kubebuilder markers, and nowhere else.
//
// +kubebuilder:object:generate=true
// +groupName=podvirt.io
package v1alpha1
