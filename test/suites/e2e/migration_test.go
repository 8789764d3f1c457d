package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestLiveMigration moves a running VM — a root disk from the image cache,
// an empty second disk and a containerDisk — to the other node while it
// writes a counter to its disk and a pod on the L2 connects to it every
// 10 ms: the migration succeeds; the VM keeps its MAC and address and is
// reached again after the switch; every counter value written before and
// during the migration is on the target's disk; the VM names its new
// claims and the source's volumes are gone.
func TestLiveMigration(t *testing.T) {
	useStack(t)
	twoNodes(t)
	ctx := testContext(t, 25*time.Minute)
	const name = "migrant"
	vm := stack.VMOn(name, v1.RunStrategyAlways, stack.VMNetwork)
	fs := corev1.PersistentVolumeFilesystem
	vm.Spec.DiskTemplates = append(vm.Spec.DiskTemplates, v1.DiskTemplate{
		ObjectMeta: v1.DiskTemplateMeta{Name: name + "-data"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &fs,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("64Mi")}},
		},
	})
	spec := &vm.Spec.Template.Spec
	spec.Domain.Devices.Disks = append(spec.Domain.Devices.Disks, v1.Disk{Name: "data"}, v1.Disk{Name: "scratch"})
	spec.Volumes = append(spec.Volumes,
		v1.Volume{Name: "data", VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-data"}}},
		v1.Volume{Name: "scratch", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: strings.TrimPrefix(stack.GuestSource, "docker://")}}})
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name); deleteClaimsOf(t, name) })

	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	source, ip := vmi.Status.NodeName, stack.GuestIP(vmi)
	mac := vmi.Status.Interfaces[0].MAC
	sourcePVs := map[string]string{}
	for _, c := range []string{name + "-root", name + "-data"} {
		sourcePVs[c] = boundVolume(ctx, t, c)
	}
	startCounter(ctx, t, name)
	target := st.OtherNode(source)
	wait, err := st.WatchFromPod(ctx, "watch-"+name, stack.VMNetwork, target, stack.HostPort(ip, stack.VMPort), 10*time.Millisecond, watchSpan)
	if err != nil {
		t.Fatal(err)
	}
	watching := time.Now()
	before := lastCount(ctx, t, name)

	out := podvirtctl(ctx, t, "migrate", name)
	t.Logf("%s", out)
	m := waitMigration(ctx, t, name, 10*time.Minute)
	t.Logf("migration %s: %s → %s, memory %s, disk %s, downtime %s; phases %v", m.Name, m.Status.SourceNode, m.Status.TargetNode,
		m.Status.MemoryTransferred, m.Status.DiskTransferred, m.Status.Downtime, m.Status.PhaseTransitionTimestamps)
	if m.Status.Phase != v1.MigrationSucceeded {
		t.Fatalf("migration %s: %s: %s", m.Name, m.Status.Phase, m.Status.Message)
	}
	watchOutlasts(t, m, watching)

	vmi, err = getVMI(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if vmi.Status.NodeName != target || vmi.Status.Phase != v1.Running {
		t.Fatalf("after the migration the VMI is %s on %s, want Running on %s", vmi.Status.Phase, vmi.Status.NodeName, target)
	}
	if got := stack.GuestIP(vmi); got != ip || vmi.Status.Interfaces[0].MAC != mac {
		t.Fatalf("the VM's L2 identity changed: %s %s, was %s %s", vmi.Status.Interfaces[0].MAC, got, mac, ip)
	}
	// Every value the guest wrote is on the target's disk, in order.
	check, err := st.RunInConsole(ctx, name, "awk 'NR!=$1{print \"GAP at \" NR \": \" $1; exit} END{print \"LAST \" NR}' /var/counter", 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	// Output lines, not the echo of the command typed.
	if regexp.MustCompile(`(?m)^GAP at`).MatchString(check) || !regexp.MustCompile(`(?m)^LAST \d+`).MatchString(check) {
		t.Fatalf("the counter on the target's disk has a gap, or was not read: %s", check)
	}
	if after := lastCount(ctx, t, name); after <= before {
		t.Fatalf("the counter stands at %d after the migration, was %d before: the guest stopped writing", after, before)
	}
	// Reached again after the switch, by a pod on the L2.
	logs, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reachability during the migration: %s", strings.TrimSpace(logs))
	gap, lastOK := summaryField(t, logs, "longest-gap-ms"), summaryField(t, logs, "last-ok-ago-ms")
	if lastOK > 1000 {
		t.Fatalf("the guest was not reachable at the end of the watch (%d ms without a connection)", lastOK)
	}
	t.Logf("longest time without a connection: %d ms", gap)

	// The VM names the new claims; the source's volumes are gone.
	cur := &v1.VirtualMachine{}
	if err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: name}, cur); err != nil {
		t.Fatal(err)
	}
	for _, c := range m.Status.Claims {
		found := false
		for _, v := range cur.Spec.Template.Spec.Volumes {
			found = found || (v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ClaimName == c.Target)
		}
		if !found {
			t.Errorf("vm %s does not use claim %s after the migration", name, c.Target)
		}
		pv := &corev1.PersistentVolume{}
		if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
			err := st.Client.Get(ctx, client.ObjectKey{Name: sourcePVs[c.Source]}, pv)
			return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
		}); err != nil {
			t.Errorf("the source volume %s of claim %s is still there: %v", sourcePVs[c.Source], c.Source, err)
		}
	}
}

// TestLiveMigrationSameNode moves a running VM on the macvlan L2 into a
// new launcher pod on its own node (as when the launcher image changes):
// the two pods share one node's IPAM lease and one MAC on the macvlan
// parent, which the node daemon hands from source to target at the switch.
// The VM keeps its node, MAC and address, is reached again from a pod on
// the other node, and its counter has no gap.
func TestLiveMigrationSameNode(t *testing.T) {
	useStack(t)
	twoNodes(t)
	ctx := testContext(t, 20*time.Minute)
	const name = "homebody"
	createVM(ctx, t, stack.VMOn(name, v1.RunStrategyAlways, stack.MacvlanNetwork))
	t.Cleanup(func() { deleteVM(t, name); deleteClaimsOf(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	node, pod, ip, mac := vmi.Status.NodeName, vmi.Status.LauncherPod, stack.GuestIP(vmi), vmi.Status.Interfaces[0].MAC
	startCounter(ctx, t, name)
	wait, err := st.WatchFromPod(ctx, "watch-"+name, stack.MacvlanNetwork, st.OtherNode(node), stack.HostPort(ip, stack.VMPort), 10*time.Millisecond, watchSpan)
	if err != nil {
		t.Fatal(err)
	}
	watching := time.Now()
	before := lastCount(ctx, t, name)

	t.Logf("%s", podvirtctl(ctx, t, "migrate", name, "--node", node))
	m := waitMigration(ctx, t, name, 10*time.Minute)
	t.Logf("migration %s: %s → %s, memory %s, disk %s, downtime %s", m.Name, m.Status.SourceNode, m.Status.TargetNode,
		m.Status.MemoryTransferred, m.Status.DiskTransferred, m.Status.Downtime)
	if m.Status.Phase != v1.MigrationSucceeded {
		t.Fatalf("migration %s: %s: %s", m.Name, m.Status.Phase, m.Status.Message)
	}
	watchOutlasts(t, m, watching)
	vmi, err = getVMI(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if vmi.Status.NodeName != node || vmi.Status.LauncherPod == pod || vmi.Status.Phase != v1.Running {
		t.Fatalf("after the migration the VMI is %s on %s in pod %s; want Running on %s in a new pod (was %s)", vmi.Status.Phase, vmi.Status.NodeName, vmi.Status.LauncherPod, node, pod)
	}
	if got := stack.GuestIP(vmi); got != ip || vmi.Status.Interfaces[0].MAC != mac {
		t.Fatalf("the VM's L2 identity changed: %s %s, was %s %s", vmi.Status.Interfaces[0].MAC, got, mac, ip)
	}
	if after := lastCount(ctx, t, name); after <= before {
		t.Fatalf("the counter stands at %d after the migration, was %d before: the guest stopped writing", after, before)
	}
	logs, err := wait()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("reachability during the migration: %s", strings.TrimSpace(logs))
	if lastOK := summaryField(t, logs, "last-ok-ago-ms"); lastOK > 1000 {
		t.Fatalf("the guest was not reachable on the macvlan at the end of the watch (%d ms without a connection): its new pod did not get the MAC", lastOK)
	}
	t.Logf("longest time without a connection: %d ms", summaryField(t, logs, "longest-gap-ms"))
}

// watchSpan is how long a pod on the L2 watches a migrating guest. The
// migration must end well inside it (watchOutlasts), so that the watch's
// last connections reach the guest in its new pod.
const watchSpan = 45 * time.Second

// watchOutlasts fails the test when m succeeded less than 5 s before the
// end of the watch that started at watching: its end would then prove
// nothing of the guest's new pod.
func watchOutlasts(t *testing.T, m *v1.VirtualMachineInstanceMigration, watching time.Time) {
	t.Helper()
	var done time.Time
	for _, p := range m.Status.PhaseTransitionTimestamps {
		if p.Phase == v1.MigrationSucceeded {
			done = p.PhaseTransitionTimestamp.Time
		}
	}
	if end := watching.Add(watchSpan); done.IsZero() || done.Add(5*time.Second).After(end) {
		t.Fatalf("migration %s succeeded at %s, less than 5 s before the L2 watch ends (%s): its last connections would not show the guest reached in its new pod; lengthen watchSpan",
			m.Name, done.Format(time.TimeOnly), end.Format(time.TimeOnly))
	}
}

// waitMigration waits until vm's newest migration has ended and returns it.
func waitMigration(ctx context.Context, t *testing.T, vm string, timeout time.Duration) *v1.VirtualMachineInstanceMigration {
	t.Helper()
	var m *v1.VirtualMachineInstanceMigration
	err := stack.Poll(ctx, timeout, func() (bool, error) {
		list := &v1.VirtualMachineInstanceMigrationList{}
		if err := st.Client.List(ctx, list, client.InNamespace(stack.Namespace)); err != nil {
			return false, err
		}
		m = nil
		for i := range list.Items {
			if it := &list.Items[i]; it.Spec.VMIName == vm && (m == nil || m.CreationTimestamp.Before(&it.CreationTimestamp)) {
				m = it // the newest
			}
		}
		return m != nil && m.Status.Phase.IsFinal(), nil
	})
	if err != nil {
		if m != nil {
			t.Fatalf("migration of %s: %v (now %s: %s)", vm, err, m.Status.Phase, m.Status.Message)
		}
		t.Fatalf("migration of %s: %v", vm, err)
	}
	return m
}

// boundVolume waits until claim is bound and returns its PV's name.
func boundVolume(ctx context.Context, t *testing.T, claim string) string {
	t.Helper()
	pvc := &corev1.PersistentVolumeClaim{}
	if err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, client.ObjectKey{Namespace: stack.Namespace, Name: claim}, pvc)
		return err == nil && pvc.Spec.VolumeName != "", client.IgnoreNotFound(err)
	}); err != nil {
		t.Fatalf("claim %s: %v", claim, err)
	}
	return pvc.Spec.VolumeName
}

// startCounter makes the guest count in /var/counter, each value fsync'd
// to its root disk before the next.
func startCounter(ctx context.Context, t *testing.T, vm string) {
	t.Helper()
	if _, err := st.RunInConsole(ctx, vm, "(i=0; while true; do i=$((i+1)); echo $i >> /var/counter; sync; sleep 0.05; done) >/dev/null 2>&1 & sleep 1; echo started", 3*time.Minute); err != nil {
		t.Fatal(err)
	}
}

var lastLine = regexp.MustCompile(`(?m)^COUNT (\d+)`)

// lastCount is the guest counter's last value on its disk.
func lastCount(ctx context.Context, t *testing.T, vm string) int {
	t.Helper()
	out, err := st.RunInConsole(ctx, vm, "echo COUNT $(tail -n 1 /var/counter)", 3*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	m := lastLine.FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no counter value in the console output:\n%s", out)
	}
	n, _ := strconv.Atoi(m[1])
	return n
}

// summaryField reads key=value from podvirt-probe's watch summary.
func summaryField(t *testing.T, logs, key string) int64 {
	t.Helper()
	m := regexp.MustCompile(key + `=(\d+)`).FindStringSubmatch(logs)
	if m == nil {
		t.Fatalf("no %s in the watch summary: %s", key, logs)
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	return n
}

// deleteClaimsOf deletes the PVCs of vm (its disks, retained when it was
// deleted, and those a migration made).
func deleteClaimsOf(t *testing.T, vm string) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := st.Client.DeleteAllOf(ctx, &corev1.PersistentVolumeClaim{}, client.InNamespace(stack.Namespace),
		client.MatchingLabels{v1.VMNameLabel: vm}); err != nil {
		t.Error(fmt.Errorf("delete the claims of vm %s: %w", vm, err))
	}
}

// TestLiveMigrationOnDrain drains the node of a VM with evictionStrategy
// LiveMigrate and a raw Block disk besides its root: `kubectl drain`
// completes, and the VM runs on the other node rather than being stopped,
// its Block disk copied whole onto a new Block claim there.
func TestLiveMigrationOnDrain(t *testing.T) {
	useStack(t)
	twoNodes(t)
	ctx := testContext(t, 20*time.Minute)
	const name = "drainee"
	vm := stack.VMOn(name, v1.RunStrategyAlways, stack.VMNetwork)
	live := v1.EvictionStrategyLiveMigrate
	vm.Spec.Template.Spec.EvictionStrategy = &live
	// A raw Block disk too: copied whole, onto a Block claim of its size.
	block := corev1.PersistentVolumeBlock
	vm.Spec.DiskTemplates = append(vm.Spec.DiskTemplates, v1.DiskTemplate{
		ObjectMeta: v1.DiskTemplateMeta{Name: name + "-raw"},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &block,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("16Mi")}},
		},
	})
	vm.Spec.Template.Spec.Domain.Devices.Disks = append(vm.Spec.Template.Spec.Domain.Devices.Disks, v1.Disk{Name: "raw"})
	vm.Spec.Template.Spec.Volumes = append(vm.Spec.Template.Spec.Volumes,
		v1.Volume{Name: "raw", VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-raw"}}})
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name); deleteClaimsOf(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	node, uid := vmi.Status.NodeName, vmi.UID
	t.Cleanup(func() { kubectl(context.Background(), t, "uncordon", node) })
	// Only this VM's pods: the other tests' pods share the node.
	out := kubectl(ctx, t, "drain", node, "--pod-selector", v1.VMINameLabel+"="+name, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout", "10m")
	t.Logf("%s", out)
	vmi, err = getVMI(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	if vmi.UID != uid || vmi.Status.Phase != v1.Running || vmi.Status.NodeName == node {
		t.Fatalf("after the drain vmi %s is %s on %s (uid %s, was %s on %s): want the same VMI running elsewhere", name, vmi.Status.Phase, vmi.Status.NodeName, vmi.UID, uid, node)
	}
	m := waitMigration(ctx, t, name, time.Minute)
	if m.Labels[v1.EvacuationLabel] != node || m.Status.Phase != v1.MigrationSucceeded {
		t.Fatalf("migration %s: %s, labels %v", m.Name, m.Status.Phase, m.Labels)
	}
	if !slices.ContainsFunc(m.Status.Claims, func(c v1.MigrationClaim) bool { return c.Volume == "raw" }) {
		t.Errorf("migration %s moved claims %+v, not the Block disk's", m.Name, m.Status.Claims)
	}
}

// kubectl runs kubectl against the e2e cluster and fails the test when it fails.
func kubectl(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	bin, err := deps.Binary("kubernetes", "kubectl")
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(ctx, bin, append(args, "--kubeconfig", st.Cluster.Kubeconfig())...).CombinedOutput()
	if err != nil {
		t.Fatalf("kubectl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

// migrationBandwidthMiB caps the e2e cluster's migrations (MiB/s), so a
// 256 MiB guest takes seconds to move and a test can act meanwhile.
const migrationBandwidthMiB = 16

// TestLiveMigrationFailures cancels a running migration, kills the target
// launcher in one and restarts the source node daemon in another: each
// fails, the VM runs on where it was with its data, and nothing of the
// target is left.
func TestLiveMigrationFailures(t *testing.T) {
	useStack(t)
	twoNodes(t)
	ctx := testContext(t, 25*time.Minute)
	const name = "stayer"
	createVM(ctx, t, stack.VMOn(name, v1.RunStrategyAlways, stack.VMNetwork))
	t.Cleanup(func() { deleteVM(t, name); deleteClaimsOf(t, name) })
	vmi, err := st.WaitRunning(ctx, name, 12*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	node, uid := vmi.Status.NodeName, vmi.UID
	startCounter(ctx, t, name)
	for _, tc := range []struct {
		name  string
		fault func(m *v1.VirtualMachineInstanceMigration)
		words string // a pattern of the failed migration's message; "": cancelled, so deleted
	}{
		{"cancelled", func(m *v1.VirtualMachineInstanceMigration) {
			podvirtctl(ctx, t, "migrate-cancel", name)
		}, ""},
		{"target launcher killed", func(m *v1.VirtualMachineInstanceMigration) {
			cur, err := getVMI(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			killLauncherIn(ctx, t, cur, m.Status.TargetPod)
		}, "failed|ended"},
		{"source node daemon restarted", func(m *v1.VirtualMachineInstanceMigration) {
			restartHandlerOn(ctx, t, node)
		}, "source node daemon (restarted|stopped)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := lastCount(ctx, t, name)
			podvirtctl(ctx, t, "migrate", name)
			m := waitMigrationPhase(ctx, t, name, v1.MigrationRunning)
			tc.fault(m)
			if tc.words == "" {
				// Cancelled: the migration goes once it is aborted.
				if err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
					err := st.Client.Get(ctx, client.ObjectKeyFromObject(m), &v1.VirtualMachineInstanceMigration{})
					return apierrors.IsNotFound(err), client.IgnoreNotFound(err)
				}); err != nil {
					t.Fatalf("cancelled migration %s is still there: %v", m.Name, err)
				}
			} else {
				got := waitMigration(ctx, t, name, 5*time.Minute)
				if got.Status.Phase != v1.MigrationFailed || !regexp.MustCompile(tc.words).MatchString(got.Status.Message) {
					t.Fatalf("migration %s: %s (%q), want Failed saying %q", got.Name, got.Status.Phase, got.Status.Message, tc.words)
				}
				t.Logf("migration %s failed: %s", got.Name, got.Status.Message)
			}
			cur, err := getVMI(ctx, name)
			if err != nil {
				t.Fatal(err)
			}
			if cur.UID != uid || cur.Status.Phase != v1.Running || cur.Status.NodeName != node {
				t.Fatalf("vmi %s is %s on %s (uid %s), want the same VMI running on %s", name, cur.Status.Phase, cur.Status.NodeName, cur.UID, node)
			}
			if after := lastCount(ctx, t, name); after <= before {
				t.Fatalf("the guest's counter stands at %d, was %d: it stopped", after, before)
			}
			// Nothing of the target is left: its pod and claims go.
			if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
				pods := &corev1.PodList{}
				pvcs := &corev1.PersistentVolumeClaimList{}
				if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{v1.MigrationLabel: m.Name}); err != nil {
					return false, err
				}
				if err := st.Client.List(ctx, pvcs, client.InNamespace(stack.Namespace), client.MatchingLabels{v1.MigrationLabel: m.Name}); err != nil {
					return false, err
				}
				return len(pods.Items) == 0 && len(pvcs.Items) == 0, nil
			}); err != nil {
				t.Fatalf("the target of migration %s is still there: %v", m.Name, err)
			}
		})
	}
}

// waitMigrationPhase waits until vm's newest migration reaches phase and
// returns it.
func waitMigrationPhase(ctx context.Context, t *testing.T, vm string, phase v1.MigrationPhase) *v1.VirtualMachineInstanceMigration {
	t.Helper()
	var m *v1.VirtualMachineInstanceMigration
	err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		list := &v1.VirtualMachineInstanceMigrationList{}
		if err := st.Client.List(ctx, list, client.InNamespace(stack.Namespace)); err != nil {
			return false, err
		}
		m = nil
		for i := range list.Items {
			if it := &list.Items[i]; it.Spec.VMIName == vm && !it.Status.Phase.IsFinal() {
				m = it
			}
		}
		if m != nil && m.Status.Phase.IsFinal() {
			return false, fmt.Errorf("migration %s ended %s before %s: %s", m.Name, m.Status.Phase, phase, m.Status.Message)
		}
		return m != nil && m.Status.Phase == phase, nil
	})
	if err != nil {
		t.Fatalf("migration of %s reaching %s: %v", vm, phase, err)
	}
	return m
}

// killLauncherIn kills -9 the launcher of vmi in pod.
func killLauncherIn(ctx context.Context, t *testing.T, vmi *v1.VirtualMachineInstance, pod string) {
	t.Helper()
	out, err := exec.CommandContext(ctx, "pgrep", "-f", "podvirt-launcher").Output()
	if err != nil {
		t.Fatalf("no launcher process found: %v", err)
	}
	for _, pid := range strings.Fields(string(out)) {
		env, err := os.ReadFile("/proc/" + pid + "/environ")
		if err != nil || !strings.Contains(string(env), "PODVIRT_VMI_UID="+string(vmi.UID)) || !strings.Contains(string(env), "PODVIRT_POD_NAME="+pod+"\x00") {
			continue
		}
		if err := exec.CommandContext(ctx, "kill", "-9", pid).Run(); err == nil {
			return
		}
	}
	t.Fatalf("no launcher process of vmi %s in pod %s", vmi.Name, pod)
}

// restartHandlerOn deletes the node daemon pod of node; its DaemonSet
// starts another.
func restartHandlerOn(ctx context.Context, t *testing.T, node string) {
	t.Helper()
	pods := &corev1.PodList{}
	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "handler"}); err != nil {
		t.Fatal(err)
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Spec.NodeName == node {
			if err := st.Client.Delete(ctx, p, client.GracePeriodSeconds(0)); err != nil {
				t.Fatal(err)
			}
			return
		}
	}
	t.Fatalf("no node daemon pod on %s", node)
}
