package cli

import (
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/cli-runtime/pkg/genericiooptions"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// offline runs a command that reaches no API server (create, convert),
// with stdin, and returns stdout, stderr and the exit code Main gives.
func offline(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(stdin), Out: &out, ErrOut: &errOut}
	code := Main(append([]string{"podvirtctl"}, args...), streams)
	return out.String(), errOut.String(), code
}

// decodeVMs reads printed manifests strictly into VMs: a field that is not
// in podvirt's API fails the test, before the API server sees it.
func decodeVMs(t *testing.T, manifests string) []*v1.VirtualMachine {
	t.Helper()
	var vms []*v1.VirtualMachine
	for _, doc := range strings.Split(manifests, "\n---\n") {
		vm := &v1.VirtualMachine{}
		if err := yaml.UnmarshalStrict([]byte(doc), vm); err != nil {
			t.Fatalf("printed manifest is not a podvirt VM: %v\n%s", err, doc)
		}
		vms = append(vms, vm)
	}
	return vms
}

// createManifests creates every object of manifests, as printed, in ns on
// the real API server, with strict field validation (an unknown field is
// an error, not silently pruned), and returns the VMs as stored.
func createManifests(t *testing.T, ns, manifests string) []*v1.VirtualMachine {
	t.Helper()
	ctx := context.Background()
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(manifests), 4096)
	var stored []*v1.VirtualMachine
	for {
		obj := &unstructured.Unstructured{}
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		obj.SetNamespace(ns)
		if err := k8s.Create(ctx, obj, client.FieldValidation("Strict")); err != nil {
			t.Fatalf("the API server refused %s %s: %v\n%s", obj.GetKind(), obj.GetName(), err, manifests)
		}
		stored = append(stored, getVM(t, ns, obj.GetName()))
	}
	if len(stored) == 0 {
		t.Fatalf("no object in %q", manifests)
	}
	return stored
}

// The defaults: one disk template from --image, a pod network NIC, and
// nothing the API server would fill in.
const wantDefaultVM = `apiVersion: podvirt.io/v1alpha1
kind: VirtualMachine
metadata:
  name: web
spec:
  diskTemplates:
  - metadata:
      annotations:
        disk.podvirt.io/source: docker://quay.io/containerdisks/fedora:40
      name: web-root
    spec:
      accessModes:
      - ReadWriteOnce
      resources:
        requests:
          storage: 1Gi
  runStrategy: Always
  template:
    spec:
      domain:
        cpu:
          cores: 1
        devices:
          disks:
          - name: root
          interfaces:
          - binding: user
            name: default
        memory:
          guest: 256Mi
      networks:
      - name: default
        pod: {}
      volumes:
      - name: root
        persistentVolumeClaim:
          claimName: web-root
`

// TestCreateVM: `create vm` prints a VM per flag combination that a real
// API server with podvirt's CRDs creates as printed. Without -n the
// manifest has no namespace (kubectl apply -n puts it).
func TestCreateVM(t *testing.T) {
	ns := namespace(t)
	out, stderr, code := offline(t, "", "create", "vm", "web", "--image", "docker://quay.io/containerdisks/fedora:40")
	if code != 0 || out != wantDefaultVM {
		t.Fatalf("create vm web with defaults: exit %d, stderr %q, got\n%s\nwant\n%s", code, stderr, out, wantDefaultVM)
	}
	vm := createManifests(t, ns, out)[0]
	if vm.Spec.DiskRetentionPolicy != v1.DiskRetain || vm.Spec.Template.Spec.Domain.Devices.Disks[0].Bus != v1.DiskBusVirtio {
		t.Errorf("the API server's defaults are missing: %+v", vm.Spec)
	}

	userData := filepath.Join(t.TempDir(), "user-data")
	if err := os.WriteFile(userData, []byte("#cloud-config\nhostname: db\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name  string
		args  []string
		check func(t *testing.T, vm *v1.VirtualMachine)
	}{
		{"https image, two NADs, cloud-init, sizes", []string{
			"vm", "db", "--image", "https://images.example.com/vm/debian-12.qcow2",
			"--network", "l2-bridge", "--network", "podvirt-system/l2-macvlan", "--network", "l2-bridge",
			"--memory", "2Gi", "--cpu", "4", "--disk-size", "12Gi", "--user-data-file", userData,
		}, func(t *testing.T, vm *v1.VirtualMachine) {
			spec := vm.Spec.Template.Spec
			if got := vm.Spec.DiskTemplates[0]; got.ObjectMeta.Name != "db-root" ||
				got.ObjectMeta.Annotations[v1.DiskSourceAnnotation] != "https://images.example.com/vm/debian-12.qcow2" ||
				got.Spec.Resources.Requests.Storage().String() != "12Gi" {
				t.Errorf("disk template %+v", got)
			}
			if spec.Domain.Memory.Guest.String() != "2Gi" || spec.Domain.CPU.VCPUs() != 4 {
				t.Errorf("memory %s, %d vCPUs", spec.Domain.Memory.Guest.String(), spec.Domain.CPU.VCPUs())
			}
			want := []struct{ name, nad string }{{"l2-bridge", "l2-bridge"}, {"l2-macvlan", "podvirt-system/l2-macvlan"}, {"l2-bridge-2", "l2-bridge"}}
			if len(spec.Networks) != len(want) || len(spec.Domain.Devices.Interfaces) != len(want) {
				t.Fatalf("networks %+v, interfaces %+v", spec.Networks, spec.Domain.Devices.Interfaces)
			}
			for i, w := range want {
				n, ifc := spec.Networks[i], spec.Domain.Devices.Interfaces[i]
				if n.Name != w.name || n.Multus == nil || n.Multus.NetworkName != w.nad || ifc.Name != w.name || ifc.Binding != v1.InterfaceBindingTap {
					t.Errorf("NIC %d: network %+v, interface %+v; want %s on %s, binding tap", i, n, ifc, w.name, w.nad)
				}
			}
			if len(spec.Volumes) != 2 || spec.Volumes[1].CloudInitNoCloud == nil || spec.Volumes[1].CloudInitNoCloud.UserData != "#cloud-config\nhostname: db\n" ||
				spec.Domain.Devices.Disks[1].Name != "cloudinit" {
				t.Errorf("cloud-init: volumes %+v, disks %+v", spec.Volumes, spec.Domain.Devices.Disks)
			}
		}},
		{"ssh key from a secret", []string{
			"vm", "box", "--image", "docker://quay.io/containerdisks/fedora:40", "--ssh-key-secret", "my-keys",
		}, func(t *testing.T, vm *v1.VirtualMachine) {
			spec := vm.Spec.Template.Spec
			if ac := spec.AccessCredentials; len(ac) != 1 || ac[0].SSHPublicKey == nil || ac[0].SSHPublicKey.Source.Secret.SecretName != "my-keys" ||
				ac[0].SSHPublicKey.PropagationMethod.NoCloud == nil {
				t.Errorf("accessCredentials %+v, want my-keys through noCloud", ac)
			}
			if len(spec.Volumes) != 2 || spec.Volumes[1].CloudInitNoCloud == nil || spec.Volumes[1].CloudInitNoCloud.UserData != "#cloud-config\n" {
				t.Errorf("volumes %+v, want a #cloud-config NoCloud disk for the keys", spec.Volumes)
			}
		}},
		{"halted, storage class, http", []string{
			"vm", "small", "--image", "http://10.0.0.5:8080/cirros.qcow2", "--run-strategy", "Halted",
			"--storage-class", "podvirt", "--memory", "64Mi",
		}, func(t *testing.T, vm *v1.VirtualMachine) {
			if vm.Spec.RunStrategy != v1.RunStrategyHalted {
				t.Errorf("runStrategy %s", vm.Spec.RunStrategy)
			}
			if c := vm.Spec.DiskTemplates[0].Spec.StorageClassName; c == nil || *c != "podvirt" {
				t.Errorf("storageClassName %v", c)
			}
			if n := vm.Spec.Template.Spec.Networks; len(n) != 1 || n[0].Pod == nil {
				t.Errorf("networks %+v, want the pod network", n)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, err := podvirtctl(t, ns, append([]string{"create"}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			printed := decodeVMs(t, out)[0]
			if printed.Namespace != ns {
				t.Errorf("namespace %q, want -n's %q", printed.Namespace, ns)
			}
			tc.check(t, printed)
			tc.check(t, createManifests(t, ns, out)[0])
		})
	}
}

// TestCreateVMBadInput: each mistake is named by its flag, says what to
// write instead, prints nothing and exits non-zero; all mistakes at once.
func TestCreateVMBadInput(t *testing.T) {
	const image = "docker://quay.io/containerdisks/fedora:40"
	script := filepath.Join(t.TempDir(), "user-data.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\necho hi\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"vm", "web"}, []string{"--image is required", "docker://"}},
		{[]string{"vm", "web", "--image", "quay.io/containerdisks/fedora:40"}, []string{"--image", "no scheme", "docker://quay.io/containerdisks/fedora:40"}},
		{[]string{"vm", "web", "--image", "ftp://example.com/disk.img"}, []string{"--image", `scheme "ftp"`, "https://"}},
		{[]string{"vm", "web", "--image", "docker://Not A Ref"}, []string{"--image", "not an image reference"}},
		{[]string{"vm", "web", "--image", "https:///disk.img"}, []string{"--image", "needs a host"}},
		{[]string{"vm", "Web_1", "--image", image}, []string{`VM name "Web_1"`, "lower case alphanumeric"}},
		{[]string{"vm", "web", "--image", image, "--memory", "lots"}, []string{`--memory "lots" is not a quantity`, "512Mi"}},
		{[]string{"vm", "web", "--image", image, "--memory", "16Mi"}, []string{"--memory 16Mi", "at least 32Mi"}},
		{[]string{"vm", "web", "--image", image, "--cpu", "0"}, []string{`--cpu "0"`, "1 to 256"}},
		{[]string{"vm", "web", "--image", image, "--cpu", "1.5"}, []string{`--cpu "1.5"`}},
		{[]string{"vm", "web", "--image", image, "--disk-size", "big"}, []string{`--disk-size "big"`, "10Gi"}},
		{[]string{"vm", "web", "--image", image, "--disk-size", "0"}, []string{"--disk-size 0", "above zero"}},
		{[]string{"vm", "web", "--image", image, "--run-strategy", "always"}, []string{`--run-strategy "always"`, "Always, RerunOnFailure"}},
		{[]string{"vm", "web", "--image", image, "--network", "L2_Bridge"}, []string{`--network "L2_Bridge"`, "NAMESPACE/NAME"}},
		{[]string{"vm", "web", "--image", image, "--storage-class", "Fast SSD"}, []string{`--storage-class "Fast SSD"`}},
		{[]string{"vm", "web", "--image", image, "--user-data-file", "/nonexistent"}, []string{"--user-data-file", "no such file"}},
		{[]string{"vm", "web", "--image", image, "--ssh-key-secret", "My Keys"}, []string{`--ssh-key-secret "My Keys" is not a Secret name`}},
		{[]string{"vm", "web", "--image", image, "--ssh-key-secret", "k", "--user-data-file", script}, []string{"is not #cloud-config", "ssh_authorized_keys"}},
		{[]string{"vm", "web", "--image", image, "-n", "Bad_NS"}, []string{`--namespace "Bad_NS"`}},
		{[]string{"vm", "web", "--image", "x", "--cpu", "x", "--memory", "x"}, []string{"--image", "--cpu", "--memory"}},
		{[]string{"vm"}, []string{"exactly one VM name"}},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			out, stderr, code := offline(t, "", append([]string{"create"}, tc.args...)...)
			if code == 0 || out != "" {
				t.Fatalf("exit %d, printed %q; want an error and nothing printed", code, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("error %q does not say %q", stderr, w)
				}
			}
		})
	}
}
