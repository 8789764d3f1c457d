package controller

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	"sigs.k8s.io/yaml"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/podlink"
	"github.com/podvirt/podvirt/internal/polltest"
)

var update = flag.Bool("update", false, "rewrite the golden files under testdata/")

func pvc(ns, name string, mode corev1.PersistentVolumeMode) *corev1.PersistentVolumeClaim {
	return &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &mode,
			Resources: corev1.VolumeResourceRequirements{
				Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("10Gi")},
			},
		},
	}
}

// representativeVMI uses every kind of disk and network and every
// placement field.
func representativeVMI(ns string) *v1alpha1.VirtualMachineInstance {
	boot := uint(1)
	grace := int64(60)
	return &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "golden", Namespace: ns, Labels: map[string]string{"app": "golden"}},
		Spec: v1alpha1.VirtualMachineInstanceSpec{
			Domain: v1alpha1.DomainSpec{
				CPU:      &v1alpha1.CPU{Sockets: 1, Cores: 2, Threads: 1},
				Memory:   v1alpha1.Memory{Guest: resource.MustParse("1Gi")},
				Machine:  &v1alpha1.Machine{Type: "q35"},
				Firmware: &v1alpha1.Firmware{Bootloader: v1alpha1.BootloaderUEFI},
				Devices: v1alpha1.Devices{
					Disks: []v1alpha1.Disk{
						{Name: "root", BootOrder: &boot},
						{Name: "data", Bus: v1alpha1.DiskBusSCSI},
						{Name: "scratch", Bus: v1alpha1.DiskBusSATA},
						{Name: "cloudinit"},
					},
					Interfaces: []v1alpha1.Interface{
						{Name: "default"},
						{Name: "l2", MACAddress: "02:00:00:00:00:2a"},
					},
					VNC: new(true),
				},
			},
			Volumes: []v1alpha1.Volume{
				{Name: "root", VolumeSource: v1alpha1.VolumeSource{PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: "golden-root"}}},
				{Name: "data", VolumeSource: v1alpha1.VolumeSource{PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: "golden-data"}}},
				{Name: "scratch", VolumeSource: v1alpha1.VolumeSource{ContainerDisk: &v1alpha1.ContainerDiskSource{Image: "podvirt.local/scratch:1"}}},
				{Name: "cloudinit", VolumeSource: v1alpha1.VolumeSource{CloudInitNoCloud: &v1alpha1.CloudInitNoCloudSource{
					UserDataSecretRef: &corev1.LocalObjectReference{Name: "golden-userdata"}, NetworkData: "version: 2\n",
				}}},
			},
			Networks: []v1alpha1.Network{
				{Name: "default", NetworkSource: v1alpha1.NetworkSource{Pod: &v1alpha1.PodNetwork{}}},
				{Name: "l2", NetworkSource: v1alpha1.NetworkSource{Multus: &v1alpha1.MultusNetwork{NetworkName: "infra/l2-bridge"}}},
			},
			NodeSelector: map[string]string{"podvirt.io/schedulable": "true"},
			Affinity: &corev1.Affinity{NodeAffinity: &corev1.NodeAffinity{
				RequiredDuringSchedulingIgnoredDuringExecution: &corev1.NodeSelector{NodeSelectorTerms: []corev1.NodeSelectorTerm{{
					MatchExpressions: []corev1.NodeSelectorRequirement{{Key: "topology.kubernetes.io/zone", Operator: corev1.NodeSelectorOpIn, Values: []string{"a"}}},
				}}},
			}},
			Tolerations:                   []corev1.Toleration{{Key: "podvirt.io/dedicated", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}},
			TerminationGracePeriodSeconds: &grace,
			AccessCredentials: []v1alpha1.AccessCredential{{SSHPublicKey: &v1alpha1.SSHPublicKeyAccessCredential{
				Source:            v1alpha1.SSHPublicKeyAccessCredentialSource{Secret: &v1alpha1.AccessCredentialSecretSource{SecretName: "golden-keys"}},
				PropagationMethod: v1alpha1.SSHPublicKeyAccessCredentialPropagationMethod{NoCloud: &v1alpha1.NoCloudPropagation{}},
			}}},
		},
	}
}

// TestLauncherPodGolden creates a representative VMI and compares the
// launcher pod the API server stored with testdata/launcher-pod.golden.yaml
// (go test ./controller -run TestLauncherPodGolden -update rewrites it).
func TestLauncherPodGolden(t *testing.T) {
	ns := namespace(t)
	create(t, pvc(ns, "golden-root", corev1.PersistentVolumeFilesystem))
	create(t, pvc(ns, "golden-data", corev1.PersistentVolumeBlock))
	vmi := representativeVMI(ns)
	create(t, vmi)
	pod := launcherPodOf(t, vmi)

	// What a reviewer must see hold, golden file or not.
	c := pod.Spec.Containers[0]
	if sc := c.SecurityContext; sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Errorf("launcher container must be explicitly unprivileged: %+v", sc)
	} else if sc.Capabilities != nil && len(sc.Capabilities.Add) > 0 {
		t.Errorf("launcher container adds capabilities %v", sc.Capabilities.Add)
	}
	for _, dev := range []corev1.ResourceName{v1alpha1.KVMDevice, v1alpha1.TunDevice, v1alpha1.VhostNetDevice} {
		if q := c.Resources.Limits[dev]; q.Value() != 1 {
			t.Errorf("limit %s = %s, want 1", dev, q.String())
		}
	}
	wantMem := resource.MustParse("1Gi")
	wantMem.Add(MemoryOverhead(&vmi.Spec, false))
	if got := c.Resources.Requests[corev1.ResourceMemory]; got.Cmp(wantMem) != 0 {
		t.Errorf("memory request %s, want guest + overhead = %s", got.String(), wantMem.String())
	}
	if got, want := pod.Annotations[v1alpha1.MultusNetworksAnnotation],
		fmt.Sprintf(`[{"name":"l2-bridge","namespace":"infra","interface":"%s","mac":"02:00:00:00:00:2a"}]`, podlink.InterfaceName("l2")); got != want {
		t.Errorf("multus annotation %s, want %s", got, want)
	}

	got := normalizedYAML(t, pod, vmi, ns)
	golden := filepath.Join("testdata", "launcher-pod.golden.yaml")
	if *update {
		if err := os.WriteFile(golden, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("launcher pod differs from %s (run with -update if the change is intended):\n%s", golden, lineDiff(string(want), string(got)))
	}

	// The VMI's status says where each disk is inside the pod.
	vmi = waitVMI(t, ns, vmi.Name, "", v1alpha1.Scheduling)
	paths := map[string]string{}
	for _, v := range vmi.Status.VolumeStatus {
		paths[v.Name] = v.Path
	}
	for name, want := range map[string]string{
		"root":    "/var/run/podvirt/disks/root/disk.img",
		"data":    "/var/run/podvirt/disks/data.dev",
		"scratch": "/var/run/podvirt/disks/scratch/disk.img",
	} {
		if paths[name] != want {
			t.Errorf("volumeStatus %s path %q, want %q", name, paths[name], want)
		}
	}
}

// normalizedYAML is pod as YAML without what differs between runs.
func normalizedYAML(t *testing.T, pod *corev1.Pod, vmi *v1alpha1.VirtualMachineInstance, ns string) []byte {
	t.Helper()
	p := pod.DeepCopy()
	p.UID, p.ResourceVersion, p.CreationTimestamp, p.ManagedFields, p.Generation = "", "", metav1.Time{}, nil, 0
	p.Status = corev1.PodStatus{}
	out, err := yaml.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	uid := string(vmi.UID)
	s = strings.ReplaceAll(s, uid, "VMI-UID")
	s = strings.ReplaceAll(s, launcherPodName(vmi), "virt-launcher-golden-XXXXX")
	s = strings.ReplaceAll(s, ns, "NAMESPACE")
	return []byte(s)
}

func lineDiff(want, got string) string {
	w, g := strings.Split(want, "\n"), strings.Split(got, "\n")
	var b strings.Builder
	for i := 0; i < max(len(w), len(g)); i++ {
		var wl, gl string
		if i < len(w) {
			wl = w[i]
		}
		if i < len(g) {
			gl = g[i]
		}
		if wl != gl {
			fmt.Fprintf(&b, "line %d:\n  want %q\n  got  %q\n", i+1, wl, gl)
		}
	}
	return b.String()
}

// TestVMIPhases walks a VMI through every phase, playing the scheduler,
// the kubelet and the node daemon.
func TestVMIPhases(t *testing.T) {
	ns := namespace(t)
	vmi := &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "walk", Namespace: ns},
		Spec:       testVM(ns, "walk", "").Spec.Template.Spec,
	}
	vmi.Spec.Volumes[0] = v1alpha1.Volume{Name: "root", VolumeSource: v1alpha1.VolumeSource{
		PersistentVolumeClaim: &v1alpha1.PersistentVolumeClaimVolumeSource{ClaimName: "walk-root"},
	}}
	create(t, vmi)

	// Pending: the PVC does not exist yet.
	polltest.Eventually(t, wait, "the VMI waits for its PVC", func() (bool, string) {
		got := getVMI(t, ns, "walk")
		c := meta.FindStatusCondition(got.Status.Conditions, ConditionSynchronized)
		return got.Status.Phase == v1alpha1.Pending && c != nil && c.Reason == ReasonPVCNotFound, fmt.Sprintf("%s %+v", got.Status.Phase, c)
	})
	if note := waitEvent(t, ns, "walk", ReasonPVCNotFound); !strings.Contains(note, "walk-root") {
		t.Errorf("PVCNotFound event %q does not name the PVC", note)
	}

	// Scheduling: the PVC appears, the pod is made, but no node fits.
	create(t, pvc(ns, "walk-root", corev1.PersistentVolumeFilesystem))
	vmi = waitVMI(t, ns, "walk", "", v1alpha1.Scheduling)
	pod := launcherPodOf(t, vmi)
	if vmi.Status.LauncherPod != pod.Name {
		t.Errorf("status.launcherPod %q, want %q", vmi.Status.LauncherPod, pod.Name)
	}
	polltest.Eventually(t, wait, "pod marked unschedulable", func() (bool, string) {
		cur := &corev1.Pod{}
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), cur); err != nil {
			return false, err.Error()
		}
		cur.Status.Phase = corev1.PodPending
		cur.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodScheduled, Status: corev1.ConditionFalse,
			Reason: corev1.PodReasonUnschedulable, Message: "0/1 nodes are available: 1 Insufficient devices.podvirt.io/kvm.", LastTransitionTime: metav1.Now()}}
		err := k8s.Status().Update(context.Background(), cur)
		return err == nil, fmt.Sprint(err)
	})
	polltest.Eventually(t, wait, "the VMI shows the pod cannot be scheduled", func() (bool, string) {
		c := meta.FindStatusCondition(getVMI(t, ns, "walk").Status.Conditions, ConditionPodScheduled)
		return c != nil && c.Status == metav1.ConditionFalse && c.Reason == ReasonUnschedulable, fmt.Sprintf("%+v", c)
	})
	if note := waitEvent(t, ns, "walk", ReasonUnschedulable); !strings.Contains(note, "Insufficient devices.podvirt.io/kvm") {
		t.Errorf("Unschedulable event %q lacks the scheduler's message", note)
	}

	// Scheduled, then Running, then Ready.
	runVMI(t, vmi)
	vmi = getVMI(t, ns, "walk")
	if vmi.Status.NodeName != "node-a" {
		t.Errorf("nodeName %q, want node-a", vmi.Status.NodeName)
	}
	var phases []v1alpha1.VirtualMachineInstancePhase
	for _, p := range vmi.Status.PhaseTransitionTimestamps {
		phases = append(phases, p.Phase)
	}
	if fmt.Sprint(phases) != "[Pending Scheduling Scheduled Running]" {
		t.Errorf("phase transitions %v", phases)
	}

	// Failed: someone deletes the launcher pod under the running VM.
	if err := k8s.Delete(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	vmi = waitVMI(t, ns, "walk", "", v1alpha1.Failed)
	if vmi.Status.Reason != ReasonPodDeleted {
		t.Errorf("reason %q, want %s", vmi.Status.Reason, ReasonPodDeleted)
	}
	if c := meta.FindStatusCondition(vmi.Status.Conditions, ConditionReady); c == nil || c.Status != metav1.ConditionFalse {
		t.Errorf("a failed VMI is Ready: %+v", c)
	}
	waitEvent(t, ns, "walk", ReasonPodDeleted)

	// Phase transition times reach /metrics.
	for _, phase := range []string{"Scheduling", "Running", "Failed"} {
		if n := histogramCount(t, "podvirt_vmi_phase_transition_time_from_creation_seconds", phase); n == 0 {
			t.Errorf("no %s observation in podvirt_vmi_phase_transition_time_from_creation_seconds", phase)
		}
	}

	// Deleting the VMI: the finalizer goes once the pod is gone.
	if err := k8s.Delete(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	waitNoVMI(t, ns, "walk")
}

// TestDeleteRunningVMI deletes a VMI whose pod runs on a node: the pod is
// deleted and the VMI goes once the kubelet has removed it.
func TestDeleteRunningVMI(t *testing.T) {
	ns := namespace(t)
	vmi := &v1alpha1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "bye", Namespace: ns},
		Spec:       testVM(ns, "bye", "").Spec.Template.Spec,
	}
	create(t, vmi)
	vmi = waitVMI(t, ns, "bye", "", "")
	pod := runVMI(t, vmi)
	if err := k8s.Delete(context.Background(), vmi); err != nil {
		t.Fatal(err)
	}
	waitNoVMI(t, ns, "bye")
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(pod), &corev1.Pod{}); err == nil {
		t.Error("the launcher pod outlived its VMI")
	}
}

// TestPausedVMI pauses a running VM's guest the way podvirtctl and the
// node daemon do (the annotation, then status.domain Paused): the VMI is
// not Ready and Paused, and so is its VM; resumed, both are Ready again and
// the Paused condition is gone.
func TestPausedVMI(t *testing.T) {
	ns := namespace(t)
	const name = "nap"
	create(t, testVM(ns, name, v1alpha1.RunStrategyAlways))
	vmi := waitVMI(t, ns, name, "", "")
	runVMI(t, vmi)

	setPausedAnnotation(t, vmi, true)
	setDomain(t, vmi, v1alpha1.DomainPaused, v1alpha1.DomainReasonPausedByUser)
	polltest.Eventually(t, wait, "the VMI is Paused and not Ready", func() (bool, string) {
		conds := getVMI(t, ns, name).Status.Conditions
		ready, paused := meta.FindStatusCondition(conds, ConditionReady), meta.FindStatusCondition(conds, ConditionPaused)
		return ready != nil && ready.Status == metav1.ConditionFalse && ready.Reason == ReasonPaused &&
				strings.Contains(ready.Message, "podvirtctl unpause vmi "+name) &&
				paused != nil && paused.Status == metav1.ConditionTrue && paused.Reason == v1alpha1.DomainReasonPausedByUser,
			fmt.Sprintf("Ready %+v, Paused %+v", ready, paused)
	})
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusPaused)
	polltest.Eventually(t, wait, "the VM of the paused VMI is not ready", func() (bool, string) {
		vm := getVM(t, ns, name)
		return !vm.Status.Ready && meta.IsStatusConditionFalse(vm.Status.Conditions, ConditionReady), fmt.Sprint(vm.Status.Conditions)
	})
	if vmi := getVMI(t, ns, name); vmi.Status.Phase != v1alpha1.Running {
		t.Errorf("paused VMI in phase %s, want Running", vmi.Status.Phase)
	}

	setPausedAnnotation(t, vmi, false)
	setDomain(t, vmi, v1alpha1.DomainRunning, "Unpaused")
	polltest.Eventually(t, wait, "the VMI is Ready and not Paused", func() (bool, string) {
		conds := getVMI(t, ns, name).Status.Conditions
		paused := meta.FindStatusCondition(conds, ConditionPaused)
		return meta.IsStatusConditionTrue(conds, ConditionReady) && paused == nil, fmt.Sprint(conds)
	})
	waitVMStatus(t, ns, name, v1alpha1.PrintableStatusRunning)
	polltest.Eventually(t, wait, "the VM of the resumed VMI is ready", func() (bool, string) {
		vm := getVM(t, ns, name)
		return vm.Status.Ready && meta.IsStatusConditionTrue(vm.Status.Conditions, ConditionReady), fmt.Sprint(vm.Status.Conditions)
	})
}

// setPausedAnnotation sets or removes podvirt.io/paused, as podvirtctl
// pause|unpause do.
func setPausedAnnotation(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, paused bool) {
	t.Helper()
	var value any
	if paused {
		value = "true"
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": map[string]any{v1alpha1.PausedAnnotation: value}}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Patch(context.Background(), vmi, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatalf("annotate VMI %s: %v", vmi.Name, err)
	}
}

// setDomain writes status.domain's state and reason, as the node daemon
// does.
func setDomain(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, state v1alpha1.DomainState, reason string) {
	t.Helper()
	patchVMIStatus(t, vmi, "domain", v1alpha1.DomainStatus{State: state, Reason: reason, LastTransitionTime: metav1.Now()})
}

// patchVMIStatus writes one field of vmi's status with a merge patch.
func patchVMIStatus(t *testing.T, vmi *v1alpha1.VirtualMachineInstance, field string, value any) {
	t.Helper()
	patch, err := json.Marshal(map[string]any{"status": map[string]any{field: value}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k8s.Status().Patch(context.Background(), vmi, client.RawPatch(types.MergePatchType, patch)); err != nil {
		t.Fatalf("write status.%s of VMI %s: %v", field, vmi.Name, err)
	}
}

func histogramCount(t *testing.T, name, phase string) uint64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if labelValue(m, "phase") == phase {
				return m.GetHistogram().GetSampleCount()
			}
		}
	}
	return 0
}

func labelValue(m *dto.Metric, name string) string {
	for _, l := range m.GetLabel() {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}
