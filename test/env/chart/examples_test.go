package chart

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// exampleVMs are the VM examples the README lists, one per common case.
var exampleVMs = []string{
	"vm-containerdisk.yaml", "vm-http-disk.yaml", "vm-l2-bridge.yaml", "vm-l2-macvlan.yaml",
	"vm-cloudinit.yaml", "vm-two-disks.yaml", "vm-service.yaml", "vm-ssh-key.yaml",
}

// TestExamples creates every manifest of charts/podvirt/examples, as
// written, in one namespace of a real API server with podvirt's and the
// NetworkAttachmentDefinition CRDs, with strict field validation: the
// NADs, the VMs and the L2 Service. It holds the examples to each other
// too: every Multus network and podvirt.io/l2-network names an example
// NAD, and the Service's podvirt.io/l2-selector picks an example VM.
func TestExamples(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir := filepath.Join(Dir(), "examples")
	for _, name := range exampleVMs {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			t.Errorf("example %s: %v", name, err)
		}
	}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) < len(exampleVMs)+2 {
		t.Fatalf("examples: %v %v", files, err)
	}
	const ns = "examples"
	_, dyn, mapper := chartAPIServer(ctx, t, ns, filepath.Join(Dir(), "crds"))

	nads, secrets := map[string]bool{}, map[string]bool{}
	var vms []*v1.VirtualMachine
	var services []*corev1.Service
	for _, f := range files { // nad-* sort before vm-*: the NADs exist first
		t.Run(filepath.Base(f), func(t *testing.T) {
			b, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.HasPrefix(string(b), "# ") {
				t.Error("an example starts with a comment saying what it shows")
			}
			for _, obj := range decodeObjects(t, string(b)) {
				gvk := obj.GroupVersionKind()
				m, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
				if err != nil {
					t.Fatalf("%s %s: the API server does not serve it: %v", gvk.Kind, obj.GetName(), err)
				}
				if _, err := dyn.Resource(m.Resource).Namespace(ns).Create(ctx, obj, metav1.CreateOptions{FieldValidation: "Strict"}); err != nil {
					t.Fatalf("create %s %s: %v", gvk.Kind, obj.GetName(), err)
				}
				switch gvk.Kind {
				case "NetworkAttachmentDefinition":
					nads[obj.GetName()] = true
				case "Secret":
					secrets[obj.GetName()] = true
				case "VirtualMachine":
					vm := &v1.VirtualMachine{}
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, vm); err != nil {
						t.Fatal(err)
					}
					vms = append(vms, vm)
				case "Service":
					svc := &corev1.Service{}
					if err := runtime.DefaultUnstructuredConverter.FromUnstructured(obj.Object, svc); err != nil {
						t.Fatal(err)
					}
					services = append(services, svc)
				}
			}
		})
	}

	if len(vms) < len(exampleVMs) || len(services) == 0 {
		t.Fatalf("%d VMs and %d Services in the examples", len(vms), len(services))
	}
	for _, vm := range vms {
		var refs []string
		for _, ac := range vm.Spec.Template.Spec.AccessCredentials {
			refs = append(refs, ac.SSHPublicKey.Source.Secret.SecretName)
		}
		for _, v := range vm.Spec.Template.Spec.Volumes {
			if ci := v.CloudInitNoCloud; ci != nil && ci.UserDataSecretRef != nil {
				refs = append(refs, ci.UserDataSecretRef.Name)
			}
		}
		for _, r := range refs {
			if !secrets[r] {
				t.Errorf("VM %s names Secret %q, which no example defines (%v)", vm.Name, r, secrets)
			}
		}
		for _, n := range vm.Spec.Template.Spec.Networks {
			if n.Multus != nil && !nads[n.Multus.NetworkName] {
				t.Errorf("VM %s: network %s names NAD %q, which no example defines (%v)", vm.Name, n.Name, n.Multus.NetworkName, nads)
			}
		}
	}
	for _, svc := range services {
		if svc.Spec.Selector != nil {
			t.Errorf("Service %s has spec.selector: an L2 Service must not (README, An L2 Service)", svc.Name)
		}
		if nad := svc.Annotations[v1.L2NetworkAnnotation]; !nads[nad] {
			t.Errorf("Service %s: %s %q is no example NAD", svc.Name, v1.L2NetworkAnnotation, nad)
		}
		sel, err := labels.Parse(svc.Annotations[v1.L2SelectorAnnotation])
		if err != nil || sel.Empty() {
			t.Errorf("Service %s: %s %q: %v", svc.Name, v1.L2SelectorAnnotation, svc.Annotations[v1.L2SelectorAnnotation], err)
			continue
		}
		picked := false
		for _, vm := range vms {
			if sel.Matches(labels.Set(vm.Spec.Template.ObjectMeta.Labels)) {
				picked = picked || onNAD(vm, svc.Annotations[v1.L2NetworkAnnotation])
			}
		}
		if !picked {
			t.Errorf("Service %s picks no example VM with a NIC on %s", svc.Name, svc.Annotations[v1.L2NetworkAnnotation])
		}
	}
}

func onNAD(vm *v1.VirtualMachine, nad string) bool {
	for _, n := range vm.Spec.Template.Spec.Networks {
		if n.Multus != nil && n.Multus.NetworkName == nad {
			return true
		}
	}
	return false
}
