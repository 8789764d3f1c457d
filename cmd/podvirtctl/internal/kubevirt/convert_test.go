package kubevirt

import (
	"fmt"
	"slices"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// vmWith is a minimal KubeVirt VM whose template spec is spec (YAML,
// indented for under "spec:" of the template).
func vmWith(spec string) string {
	return `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata:
  name: t
  namespace: ns
spec:
  runStrategy: Always
  template:
    spec:
` + spec
}

func convert(t *testing.T, in string) (*v1.VirtualMachine, []Finding) {
	t.Helper()
	objs, err := Decode(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	if len(objs) != 1 {
		t.Fatalf("%d objects", len(objs))
	}
	return Convert(objs[0])
}

// paths lists the findings as "path" (dropped) or "!path" (blocking).
func paths(fs []Finding) []string {
	var out []string
	for _, f := range fs {
		p := f.Path
		if f.Blocking {
			p = "!" + p
		}
		out = append(out, p)
	}
	return out
}

// sameList compares lists of paths in any order.
func sameList(got, want []string) bool {
	return slices.Equal(slices.Sorted(slices.Values(got)), slices.Sorted(slices.Values(want)))
}

// TestBindings: KubeVirt's bindings onto podvirt's two, and the ones that
// change what the guest gets, reported.
func TestBindings(t *testing.T) {
	for _, tc := range []struct {
		iface, network string
		want           v1.InterfaceBinding
		dropped        string
	}{
		{"masquerade: {}", "pod: {}", v1.InterfaceBindingUser, ""},
		{"passt: {}", "pod: {}", v1.InterfaceBindingUser, ""},
		{"binding: {name: passt}", "pod: {}", v1.InterfaceBindingUser, ""},
		{"bridge: {}", "pod: {}", v1.InterfaceBindingUser, "bridge"},
		{"bridge: {}", "multus: {networkName: l2-bridge}", v1.InterfaceBindingTap, ""},
		{"macvtap: {}", "multus: {networkName: l2-macvlan}", v1.InterfaceBindingTap, ""},
		{"masquerade: {}", "multus: {networkName: l2-bridge}", v1.InterfaceBindingTap, "masquerade"},
		{"binding: {name: l2bridge}", "multus: {networkName: l2-bridge}", v1.InterfaceBindingTap, "binding"},
		{"{}", "pod: {}", v1.InterfaceBindingUser, ""},
		{"{}", "multus: {networkName: l2-bridge}", v1.InterfaceBindingTap, ""},
	} {
		t.Run(tc.iface+" on "+tc.network, func(t *testing.T) {
			iface := "          - name: net\n"
			if tc.iface != "{}" {
				iface += "            " + tc.iface + "\n"
			}
			vm, fs := convert(t, vmWith(`      domain:
        memory: {guest: 64Mi}
        devices:
          interfaces:
`+iface+`      networks:
      - name: net
        `+tc.network+"\n"))
			var want []string
			if tc.dropped != "" {
				want = []string{"spec.template.spec.domain.devices.interfaces[0]." + tc.dropped}
			}
			if got := paths(fs); !sameList(got, want) {
				t.Fatalf("findings %v, want %v", fs, want)
			}
			ifaces := vm.Spec.Template.Spec.Domain.Devices.Interfaces
			if len(ifaces) != 1 || ifaces[0].Binding != tc.want {
				t.Fatalf("interfaces %+v, want binding %s", ifaces, tc.want)
			}
		})
	}
}

// TestDefaults: what KubeVirt adds to a VM that does not say — a disk per
// volume, the pod network, a graphics device, Halted without running or
// runStrategy — podvirt's VM says outright.
func TestDefaults(t *testing.T) {
	vm, fs := convert(t, `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: t}
spec:
  template:
    spec:
      domain:
        resources: {requests: {memory: 1Gi}}
      volumes:
      - name: root
        containerDisk: {image: quay.io/containerdisks/fedora:40}
`)
	if len(fs) != 0 {
		t.Fatalf("findings %v", fs)
	}
	spec := vm.Spec.Template.Spec
	if vm.Spec.RunStrategy != v1.RunStrategyHalted || spec.Domain.Memory.Guest.String() != "1Gi" ||
		len(spec.Domain.Devices.Disks) != 1 || spec.Domain.Devices.Disks[0].Name != "root" ||
		len(spec.Networks) != 1 || spec.Networks[0].Pod == nil || spec.Domain.Devices.Interfaces[0].Binding != v1.InterfaceBindingUser ||
		spec.Domain.Devices.VNC == nil || !*spec.Domain.Devices.VNC {
		t.Fatalf("got %+v", vm.Spec)
	}

	// autoattachPodInterface: false and autoattachGraphicsDevice: false
	// leave them out.
	vm, fs = convert(t, vmWith(`      domain:
        memory: {guest: 64Mi}
        devices: {autoattachPodInterface: false, autoattachGraphicsDevice: false}
`))
	if len(fs) != 0 || len(vm.Spec.Template.Spec.Networks) != 0 || vm.Spec.Template.Spec.Domain.Devices.VNC != nil {
		t.Fatalf("findings %v, spec %+v", fs, vm.Spec.Template.Spec)
	}
}

// TestDiskSources: each DataVolume source onto a disk template, or left
// out with the volumes that use it.
func TestDiskSources(t *testing.T) {
	for _, tc := range []struct {
		source     string
		annotation string // disk.podvirt.io/source
		dataSource string // kind/name
		dropped    []string
	}{
		{"registry: {url: 'docker://quay.io/containerdisks/fedora:40', pullMethod: node}", "docker://quay.io/containerdisks/fedora:40", "", nil},
		{"http: {url: 'https://example.com/disk.qcow2'}", "https://example.com/disk.qcow2", "", nil},
		{"blank: {}", "", "", nil},
		{"pvc: {name: golden, namespace: ns}", "", "PersistentVolumeClaim/golden", nil},
		{"snapshot: {name: snap}", "", "VolumeSnapshot/snap", nil},
		{"registry: {url: 'docker://quay.io/x:1', secretRef: pull, certConfigMap: ca}", "docker://quay.io/x:1", "", []string{
			"spec.dataVolumeTemplates[0].spec.source.registry.certConfigMap",
			"spec.dataVolumeTemplates[0].spec.source.registry.secretRef",
		}},
		{"pvc: {name: golden, namespace: other}", "", "", []string{
			"spec.dataVolumeTemplates[0]",
			"spec.dataVolumeTemplates[0].spec.source.pvc.namespace",
			"spec.template.spec.domain.devices.disks[0]",
			"spec.template.spec.volumes[0]",
		}},
		{"upload: {}", "", "", []string{
			"spec.dataVolumeTemplates[0]",
			"spec.dataVolumeTemplates[0].spec.source.upload",
			"spec.template.spec.domain.devices.disks[0]",
			"spec.template.spec.volumes[0]",
		}},
		{"registry: {url: 'oci-archive:///disk.tar'}", "", "", []string{
			"spec.dataVolumeTemplates[0]",
			"spec.dataVolumeTemplates[0].spec.source.registry.url",
			"spec.template.spec.domain.devices.disks[0]",
			"spec.template.spec.volumes[0]",
		}},
	} {
		t.Run(tc.source, func(t *testing.T) {
			vm, fs := convert(t, `apiVersion: kubevirt.io/v1
kind: VirtualMachine
metadata: {name: t, namespace: ns}
spec:
  running: true
  dataVolumeTemplates:
  - metadata: {name: t-root}
    spec:
      storage: {resources: {requests: {storage: 5Gi}}}
      source:
        `+tc.source+`
  template:
    spec:
      domain:
        memory: {guest: 64Mi}
        devices:
          disks: [{name: root}]
      volumes:
      - name: root
        dataVolume: {name: t-root}
`)
			if got := paths(fs); !sameList(got, tc.dropped) {
				t.Fatalf("findings %v, want %v", fs, tc.dropped)
			}
			if tc.dropped != nil && len(vm.Spec.DiskTemplates) == 0 {
				if len(vm.Spec.Template.Spec.Volumes) != 0 || len(vm.Spec.Template.Spec.Domain.Devices.Disks) != 0 {
					t.Fatalf("the template is left out but its volume is not: %+v", vm.Spec.Template.Spec)
				}
				return
			}
			tmpl := vm.Spec.DiskTemplates[0]
			if tmpl.ObjectMeta.Annotations[v1.DiskSourceAnnotation] != tc.annotation {
				t.Errorf("source annotation %q, want %q", tmpl.ObjectMeta.Annotations[v1.DiskSourceAnnotation], tc.annotation)
			}
			var ds string
			if tmpl.Spec.DataSource != nil {
				ds = tmpl.Spec.DataSource.Kind + "/" + tmpl.Spec.DataSource.Name
			}
			if ds != tc.dataSource {
				t.Errorf("dataSource %q, want %q", ds, tc.dataSource)
			}
			if tmpl.Spec.Resources.Requests.Storage().String() != "5Gi" || len(tmpl.Spec.AccessModes) != 1 {
				t.Errorf("claim spec %+v", tmpl.Spec)
			}
			if v := vm.Spec.Template.Spec.Volumes[0]; v.PersistentVolumeClaim == nil || v.PersistentVolumeClaim.ClaimName != "t-root" {
				t.Errorf("volume %+v", v)
			}
		})
	}
}

// TestFindings: every field that cannot be mapped is reported at its
// path, unknown ones included; values podvirt cannot take block.
func TestFindings(t *testing.T) {
	for _, tc := range []struct {
		name, spec string
		want       []string
	}{
		{"requests differ from guest, cpu request, limits", `      domain:
        memory: {guest: 1Gi}
        resources: {requests: {memory: 2Gi, cpu: "2"}, limits: {memory: 2Gi}}
`, []string{
			"spec.template.spec.domain.resources.limits",
			"spec.template.spec.domain.resources.requests.cpu",
			"spec.template.spec.domain.resources.requests.memory",
		}},
		{"efi with Secure Boot, RHEL machine, features", `      domain:
        memory: {guest: 1Gi}
        machine: {type: pc-q35-rhel9.2.0}
        firmware: {bootloader: {efi: {}}, uuid: 5d307ca9-b3ef-428c-8861-06e72d69f223}
        features: {acpi: {}, smm: {enabled: true}}
`, []string{
			"spec.template.spec.domain.features",
			"spec.template.spec.domain.firmware.bootloader.efi.secureBoot",
			"spec.template.spec.domain.firmware.uuid",
			"spec.template.spec.domain.machine.type",
		}},
		{"unknown fields at every depth", `      domain:
        memory: {guest: 1Gi, frobnicate: true}
        devices:
          disks: [{name: root, disk: {bus: virtio, wobble: 1}}]
          interfaces: [{name: default, masquerade: {extra: 1}}]
      networks: [{name: default, pod: {}}]
      volumes: [{name: root, containerDisk: {image: x, extra: 2}}]
      somethingNew: {}
`, []string{
			"spec.template.spec.domain.devices.disks[0].disk.wobble",
			"spec.template.spec.domain.devices.interfaces[0].masquerade.extra",
			"spec.template.spec.domain.memory.frobnicate",
			"spec.template.spec.somethingNew",
			"spec.template.spec.volumes[0].containerDisk.extra",
		}},
		{"binary user-data, credentials podvirt has not", `      domain:
        memory: {guest: 1Gi}
      volumes:
      - name: a
        cloudInitNoCloud: {secretRef: {name: user-data}}
      - name: b
        cloudInitNoCloud: {userDataBase64: H4sIAAAAAAAAA0vOzytJzSvhAgA9HvIZCAAAAA==}
      accessCredentials:
      - sshPublicKey: {source: {secret: {secretName: keys}}, propagationMethod: {qemuGuestAgent: {users: [root]}}}
      - userPassword: {source: {secret: {secretName: pw}}, propagationMethod: {qemuGuestAgent: {}}}
`, []string{
			"!spec.template.spec.volumes[1].cloudInitNoCloud.userDataBase64",
			"spec.template.spec.accessCredentials[0].sshPublicKey.propagationMethod.qemuGuestAgent",
			"spec.template.spec.accessCredentials[1].userPassword",
			"spec.template.spec.volumes[1]",
		}},
		{"ports podvirt cannot forward", `      domain:
        memory: {guest: 1Gi}
        devices:
          interfaces:
          - {name: default, masquerade: {}, ports: [{port: 9, protocol: SCTP}, {port: 80}]}
          - {name: l2, bridge: {}, ports: [{port: 80}]}
      networks: [{name: default, pod: {}}, {name: l2, multus: {networkName: l2-bridge}}]
`, []string{
			"spec.template.spec.domain.devices.interfaces[0].ports[0]",
			"spec.template.spec.domain.devices.interfaces[1].ports[0]",
		}},
		{"values podvirt cannot take", `      domain:
        cpu: {cores: 512, threads: 1.5}
        memory: {guest: 16Mi}
      terminationGracePeriodSeconds: -1
      affinity: {nodeAfinity: {}}
`, []string{
			"!spec.template.spec.affinity",
			"!spec.template.spec.domain.cpu.cores",
			"!spec.template.spec.domain.cpu.threads",
			"!spec.template.spec.domain.memory.guest",
			"!spec.template.spec.terminationGracePeriodSeconds",
		}},
		{"a volume and a network of kinds podvirt has not", `      domain:
        memory: {guest: 1Gi}
        devices:
          disks: [{name: default}]
          interfaces: [{name: default, bridge: {}}]
      networks: [{name: default}]
      volumes: [{name: default, emptyDisk: {capacity: 1Gi}}]
`, []string{
			"spec.template.spec.domain.devices.disks[0]",
			"spec.template.spec.domain.devices.interfaces[0]",
			"spec.template.spec.networks[0]",
			"spec.template.spec.volumes[0]",
			"spec.template.spec.volumes[0].emptyDisk",
		}},
		{"no memory", `      domain: {}
`, []string{"!spec.template.spec.domain.memory.guest"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, fs := convert(t, vmWith(tc.spec))
			if got := paths(fs); !sameList(got, tc.want) {
				t.Fatalf("findings:\n%v\nwant paths %v", fs, tc.want)
			}
			for _, f := range fs {
				if f.Why == "" {
					t.Errorf("%s: no reason", f.Path)
				}
			}
		})
	}
}

// TestNotAVirtualMachine: other kinds are refused, Lists are read item by
// item.
func TestNotAVirtualMachine(t *testing.T) {
	_, fs := convert(t, "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {name: x}\n")
	if len(fs) != 1 || !fs[0].Blocking || !strings.Contains(fs[0].Why, "VirtualMachines only") {
		t.Fatalf("findings %v", fs)
	}
	objs, err := Decode(strings.NewReader("apiVersion: v1\nkind: List\nitems:\n- {kind: A}\n- {kind: B}\n---\n{kind: C}\n---\n"))
	if err != nil || len(objs) != 3 {
		t.Fatalf("%v %v", objs, err)
	}
	if _, err := Decode(strings.NewReader("---\n")); err == nil {
		t.Fatal("empty input accepted")
	}
}

// The converted VM is plain podvirt API: it marshals and reads back the
// same with strict decoding.
func TestRoundTrip(t *testing.T) {
	vm, fs := convert(t, vmWith(`      domain:
        cpu: {cores: 2, model: host-passthrough}
        memory: {guest: 1Gi}
        devices:
          disks: [{name: root, bootOrder: 1, serial: ROOT1, disk: {bus: sata, readonly: true}}]
          interfaces: [{name: default, masquerade: {}, ports: [{name: http, port: 80}, {port: 53, protocol: udp}]}]
      networks: [{name: default, pod: {}}]
      volumes: [{name: root, persistentVolumeClaim: {claimName: pvc, readOnly: true}}]
      nodeSelector: {disk: ssd}
      tolerations: [{key: k, operator: Exists}]
      terminationGracePeriodSeconds: 0
      evictionStrategy: LiveMigrate
      accessCredentials:
      - sshPublicKey: {source: {secret: {secretName: my-keys}}, propagationMethod: {noCloud: {}}}
`))
	if len(fs) != 0 {
		t.Fatal(fs)
	}
	b, err := yaml.Marshal(vm)
	if err != nil {
		t.Fatal(err)
	}
	var back v1.VirtualMachine
	if err := yaml.UnmarshalStrict(b, &back); err != nil {
		t.Fatal(err)
	}
	spec := back.Spec.Template.Spec
	d := spec.Domain.Devices.Disks[0]
	if d.Bus != v1.DiskBusSATA || !d.ReadOnly || *d.BootOrder != 1 || d.Serial != "ROOT1" || !spec.Volumes[0].PersistentVolumeClaim.ReadOnly ||
		spec.NodeSelector["disk"] != "ssd" || spec.Tolerations[0].Key != "k" || *spec.TerminationGracePeriodSeconds != 0 ||
		spec.Domain.CPU.Cores != 2 || spec.Domain.CPU.Model != "host-passthrough" || back.Namespace != "ns" ||
		*spec.EvictionStrategy != v1.EvictionStrategyLiveMigrate || spec.AccessCredentials[0].SSHPublicKey.Source.Secret.SecretName != "my-keys" ||
		spec.AccessCredentials[0].SSHPublicKey.PropagationMethod.NoCloud == nil ||
		fmt.Sprint(spec.Domain.Devices.Interfaces[0].Ports) != "[{http  80} { UDP 53}]" {
		t.Fatalf("got %+v", back.Spec)
	}
}
