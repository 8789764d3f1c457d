package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"libvirt.org/go/libvirtxml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/runtime/libvirtd"
	"github.com/podvirt/podvirt/test/env/stack"
	"github.com/podvirt/podvirt/test/harness/durations"
	"github.com/podvirt/podvirt/test/harness/netnstest"
	"github.com/podvirt/podvirt/test/images/guest"
)

// BenchmarkBootVsLibvirt measures, for at least 5 VMs one after another,
// VM created → guest boot marker on the cluster (VMI, launcher pod, disk
// from the node's cache, the launcher's own libvirtd, the handler's Start)
// side by side with a bare libvirt start of the same domain: the XML the
// launcher defined, on fresh copies of the same disks, `virsh define` +
// `virsh start` on a libvirtd already running on the node. It reports both
// medians and their ratio (goal ≤ 1.10):
//
//	go test -run '^$' -bench BootVsLibvirt -benchtime 1x -timeout 60m ./test/suites/e2e/
func BenchmarkBootVsLibvirt(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Minute)
	defer cancel()
	bare := startBareLibvirt(b)
	runs := max(b.N, 5)
	// The medians are the result; ns/op counts the copies between runs too.
	var onCluster, onBare []time.Duration
	for i := range runs {
		took, dom := bootOnCluster(ctx, b, fmt.Sprintf("boot-%d", i))
		onCluster = append(onCluster, took)
		onBare = append(onBare, bootBare(ctx, b, bare, dom))
	}
	c, l := durations.Median(onCluster), durations.Median(onBare)
	b.ReportMetric(float64(c.Milliseconds()), "cluster-ms")
	b.ReportMetric(float64(l.Milliseconds()), "libvirt-ms")
	b.ReportMetric(float64(c)/float64(l), "cluster/libvirt")
	b.Logf("VM created → boot marker, median of %d: podvirt %s, bare libvirt %s, ratio %.3f (goal ≤ 1.10); podvirt %v; libvirt %v",
		runs, c.Round(time.Millisecond), l.Round(time.Millisecond), float64(c)/float64(l), durations.Rounded(onCluster), durations.Rounded(onBare))
}

// BenchmarkTenVMsAtOnce creates 10 VMs at once and measures the time until
// all their VMIs are Running with an L2 address, and each VM's own time:
//
//	go test -run '^$' -bench TenVMsAtOnce -benchtime 1x -timeout 60m ./test/suites/e2e/
func BenchmarkTenVMsAtOnce(b *testing.B) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	const n = 10
	for range b.N {
		names := make([]string, n)
		for i := range names {
			names[i] = fmt.Sprintf("ten-%d", i)
		}
		b.Cleanup(func() {
			for _, name := range names {
				removeVM(b, name)
			}
		})
		start := time.Now()
		for _, name := range names {
			if err := st.Client.Create(ctx, stack.VM(name, v1.RunStrategyAlways)); err != nil {
				b.Fatalf("creating vm %s: %v", name, err)
			}
		}
		running := map[string]time.Duration{}
		err := stack.Poll(ctx, 20*time.Minute, func() (bool, error) {
			for _, name := range names {
				if _, ok := running[name]; ok {
					continue
				}
				vmi, err := getVMI(ctx, name)
				if err != nil {
					if apierrors.IsNotFound(err) {
						continue
					}
					return false, err
				}
				if vmi.Status.Phase == v1.Failed {
					return false, fmt.Errorf("vmi %s Failed: %s", name, vmi.Status.Message)
				}
				if vmi.Status.Phase == v1.Running && stack.GuestIP(vmi) != "" {
					running[name] = time.Since(start)
				}
			}
			return len(running) == n, nil
		})
		if err != nil {
			b.Fatalf("%d of %d VMs Running: %v", len(running), n, err)
		}
		all := time.Since(start)
		each := make([]time.Duration, 0, n)
		for _, d := range running {
			each = append(each, d)
		}
		b.ReportMetric(float64(all.Milliseconds()), "all-running-ms")
		b.ReportMetric(float64(durations.Median(each).Milliseconds()), "per-vm-median-ms")
		b.Logf("%d VMs created at once: all Running with an L2 address after %s; per VM median %s, slowest %s",
			n, all.Round(time.Millisecond), durations.Median(each).Round(time.Millisecond), slices.Max(each).Round(time.Millisecond))
		for _, name := range names {
			removeVM(b, name)
		}
	}
}

// bootedDomain is what a bare libvirt needs to start the domain a launcher
// ran: its XML with every file it names copied out of the pod.
type bootedDomain struct {
	name string
	xml  *libvirtxml.Domain
	dir  string // the copies, and the serial log
}

// bootOnCluster creates a VM and returns the time from its creation to the
// boot marker in the serial log its launcher writes into the pod's private
// dir (on the node, under the kubelet's pod dir). Before the VM is removed
// it takes the launcher's domain for bootBare.
func bootOnCluster(ctx context.Context, b *testing.B, name string) (time.Duration, *bootedDomain) {
	b.Helper()
	defer removeVM(b, name)
	vm := stack.VM(name, v1.RunStrategyAlways)
	// On the first node, whose kubelet dir is the host's view of it.
	vm.Spec.Template.Spec.NodeSelector = map[string]string{corev1.LabelHostname: st.Cluster.NodeName()}
	start := time.Now()
	if err := st.Client.Create(ctx, vm); err != nil {
		b.Fatalf("creating vm %s: %v", name, err)
	}
	var vmi *v1.VirtualMachineInstance
	var pod *corev1.Pod
	err := stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		if pod == nil {
			var err error
			if vmi, pod, err = launcherPod(ctx, name); err != nil || pod == nil {
				return false, err
			}
		}
		log, err := os.ReadFile(filepath.Join(podVolumeDir(pod, "kubernetes.io~empty-dir", v1.PrivateVolumeName), "console.log"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
		return strings.Contains(string(log), guest.BootMarker), nil
	})
	took := time.Since(start)
	if err != nil {
		b.Fatalf("vm %s: no boot marker in its serial log: %v", name, err)
	}
	if cur, err := getVMI(ctx, name); err == nil {
		steps := make([]string, 0, len(cur.Status.Startup))
		for _, s := range cur.Status.Startup {
			steps = append(steps, fmt.Sprintf("%s %d ms", s.Name, s.Milliseconds))
		}
		b.Logf("vm %s: boot marker after %s; startup steps: %s", name, took.Round(time.Millisecond), strings.Join(steps, ", "))
	}
	return took, copyDomain(ctx, b, vmi, pod)
}

// launcherPod finds the VM's VMI and its launcher pod once the pod runs.
func launcherPod(ctx context.Context, name string) (*v1.VirtualMachineInstance, *corev1.Pod, error) {
	vmi, err := getVMI(ctx, name)
	if err != nil {
		return nil, nil, client.IgnoreNotFound(err)
	}
	pods := &corev1.PodList{}
	if err := st.Client.List(ctx, pods, client.InNamespace(stack.Namespace), client.MatchingLabels{v1.CreatedByLabel: string(vmi.UID)}); err != nil {
		return nil, nil, err
	}
	for i := range pods.Items {
		if p := &pods.Items[i]; p.Status.Phase == corev1.PodRunning {
			return vmi, p, nil
		}
	}
	return vmi, nil, nil
}

// podVolumeDir is where the kubelet keeps a pod's volume on the node.
func podVolumeDir(pod *corev1.Pod, plugin, volume string) string {
	return filepath.Join(st.Cluster.KubeletRootDir(), "pods", string(pod.UID), "volumes", plugin, volume)
}

// copyDomain reads the domain from the launcher's libvirtd and copies every
// file it uses out of the pod: a qcow2 overlay gets a fresh overlay on a
// hard link of its backing image, anything else a plain copy.
func copyDomain(ctx context.Context, b *testing.B, vmi *v1.VirtualMachineInstance, pod *corev1.Pod) *bootedDomain {
	b.Helper()
	private := podVolumeDir(pod, "kubernetes.io~empty-dir", v1.PrivateVolumeName)
	// The socket's path on the node is longer than a unix socket address
	// allows (108 bytes): virsh reaches it through a short symlink.
	short := filepath.Join(b.TempDir(), "run")
	if err := os.Symlink(filepath.Join(private, "libvirt", "run"), short); err != nil {
		b.Fatal(err)
	}
	uri := "qemu:///system?socket=" + filepath.Join(short, "libvirt-sock")
	dom := converter.DomainName(vmi)
	out, err := exec.CommandContext(ctx, "virsh", "-c", uri, "dumpxml", "--inactive", dom).CombinedOutput()
	if err != nil {
		b.Fatalf("virsh dumpxml %s from the launcher's libvirtd: %v: %s", dom, err, out)
	}
	x := &libvirtxml.Domain{}
	if err := x.Unmarshal(string(out)); err != nil {
		b.Fatal(err)
	}
	hostDirs := map[string]string{} // mount path in the pod → dir on the node
	for _, c := range pod.Spec.Containers {
		if c.Name != v1.LauncherContainerName {
			continue
		}
		for _, m := range c.VolumeMounts {
			hostDirs[m.MountPath] = volumeHostDir(ctx, b, pod, m.Name)
		}
	}
	d := &bootedDomain{name: dom, xml: x, dir: b.TempDir()}
	for i := range x.Devices.Disks {
		disk := &x.Devices.Disks[i]
		if disk.Source == nil || disk.Source.File == nil {
			continue
		}
		host := onNode(b, hostDirs, disk.Source.File.File)
		copyPath := filepath.Join(d.dir, fmt.Sprintf("disk-%d", i))
		copyDisk(ctx, b, host, copyPath)
		disk.Source.File.File = copyPath
		disk.BackingStore = nil
	}
	for i := range x.Devices.Serials {
		if s := &x.Devices.Serials[i]; s.Log != nil {
			s.Log.File = filepath.Join(d.dir, "console.log")
		}
	}
	for i := range x.Devices.Interfaces {
		// The pod's tap is the CNI plugin's; here libvirt makes its own,
		// in the bare libvirtd's network namespace.
		if t := x.Devices.Interfaces[i].Target; t != nil {
			t.Managed = ""
		}
	}
	return d
}

func volumeHostDir(ctx context.Context, b *testing.B, pod *corev1.Pod, name string) string {
	for _, v := range pod.Spec.Volumes {
		if v.Name != name {
			continue
		}
		switch {
		case v.EmptyDir != nil:
			return podVolumeDir(pod, "kubernetes.io~empty-dir", name)
		case v.PersistentVolumeClaim != nil:
			pvc := &corev1.PersistentVolumeClaim{}
			if err := st.Client.Get(ctx, client.ObjectKey{Namespace: pod.Namespace, Name: v.PersistentVolumeClaim.ClaimName}, pvc); err != nil {
				b.Fatal(err)
			}
			return filepath.Join(podVolumeDir(pod, "kubernetes.io~csi", pvc.Spec.VolumeName), "mount")
		}
	}
	return "" // projected and other volumes: no disk lives there
}

// onNode maps a path inside the launcher pod to the node.
func onNode(b *testing.B, hostDirs map[string]string, path string) string {
	best := ""
	for mount := range hostDirs {
		if (path == mount || strings.HasPrefix(path, mount+"/")) && len(mount) > len(best) {
			best = mount
		}
	}
	if best == "" || hostDirs[best] == "" {
		b.Fatalf("%s is on no volume of the launcher pod (mounts %v)", path, hostDirs)
	}
	return filepath.Join(hostDirs[best], strings.TrimPrefix(path, best))
}

// copyDisk makes dst a fresh copy of the disk src: a new overlay on the
// same backing image (hard-linked, so it outlives the volume's mount) for
// an overlay, a byte copy otherwise.
func copyDisk(ctx context.Context, b *testing.B, src, dst string) {
	out, err := exec.CommandContext(ctx, "qemu-img", "info", "-U", "--output=json", src).Output()
	if err != nil {
		b.Fatalf("qemu-img info %s: %v", src, err)
	}
	var info struct {
		Format        string `json:"format"`
		VirtualSize   int64  `json:"virtual-size"`
		Backing       string `json:"backing-filename"`
		BackingFormat string `json:"backing-filename-format"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		b.Fatal(err)
	}
	if info.Backing == "" {
		if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", src, dst).CombinedOutput(); err != nil {
			b.Fatalf("copy %s: %v: %s", src, err, out)
		}
		return
	}
	backing := info.Backing
	if !filepath.IsAbs(backing) {
		backing = filepath.Join(filepath.Dir(src), backing)
	}
	link := dst + ".base"
	if err := os.Link(backing, link); errors.Is(err, syscall.EXDEV) {
		if out, err := exec.CommandContext(ctx, "cp", "--sparse=always", backing, link).CombinedOutput(); err != nil {
			b.Fatalf("copy %s: %v: %s", backing, err, out)
		}
	} else if err != nil {
		b.Fatal(err)
	}
	if out, err := exec.CommandContext(ctx, "qemu-img", "create", "-q", "-f", info.Format, "-b", link, "-F", info.BackingFormat,
		dst, fmt.Sprint(info.VirtualSize)).CombinedOutput(); err != nil {
		b.Fatalf("qemu-img create overlay on %s: %v: %s", link, err, out)
	}
}

// startBareLibvirt runs a private libvirtd on the node, in a network
// namespace of its own (the domains' taps land there, connected to
// nothing), stopped at cleanup.
func startBareLibvirt(b *testing.B) *libvirtd.Daemon {
	b.Helper()
	if err := libvirtd.CheckInstalled(); err != nil {
		b.Fatal(err)
	}
	netns := netnstest.New(b)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var d *libvirtd.Daemon
	err := netns.Do(func(ns.NetNS) error {
		var err error
		d, err = libvirtd.Start(ctx, libvirtd.Config{Dir: b.TempDir(), Private: true})
		return err
	})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if err := d.Stop(); err != nil {
			b.Errorf("stopping the bare libvirtd: %v", err)
		}
	})
	return d
}

// bootBare defines and starts the domain on the bare libvirtd and returns
// the time to the boot marker in its serial log; the domain is removed.
func bootBare(ctx context.Context, b *testing.B, d *libvirtd.Daemon, dom *bootedDomain) time.Duration {
	b.Helper()
	xml, err := dom.xml.Marshal()
	if err != nil {
		b.Fatal(err)
	}
	xmlPath := filepath.Join(dom.dir, "domain.xml")
	if err := os.WriteFile(xmlPath, []byte(xml), 0o644); err != nil {
		b.Fatal(err)
	}
	virsh := func(args ...string) error {
		out, err := exec.CommandContext(ctx, "virsh", append([]string{"-c", d.URI}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("virsh %v: %w: %s", args, err, out)
		}
		return nil
	}
	defer func() {
		_ = virsh("destroy", dom.name)
		if err := virsh("undefine", "--nvram", dom.name); err != nil {
			b.Errorf("removing domain %s: %v", dom.name, err)
		}
	}()
	start := time.Now()
	if err := virsh("define", xmlPath); err != nil {
		b.Fatal(err)
	}
	if err := virsh("start", dom.name); err != nil {
		b.Fatal(err)
	}
	err = stack.Poll(ctx, 10*time.Minute, func() (bool, error) {
		log, err := os.ReadFile(filepath.Join(dom.dir, "console.log"))
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			return false, err
		}
		return strings.Contains(string(log), guest.BootMarker), nil
	})
	took := time.Since(start)
	if err != nil {
		b.Fatalf("bare libvirt: domain %s printed no boot marker: %v", dom.name, err)
	}
	return took
}

// removeVM deletes a benchmark's VM and its disk, and waits until both
// are gone.
func removeVM(b *testing.B, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	deleteVM(b, name)
	pvc := &corev1.PersistentVolumeClaim{}
	pvc.Namespace, pvc.Name = stack.Namespace, name+"-root"
	if err := st.Client.Delete(ctx, pvc); err != nil && !apierrors.IsNotFound(err) {
		b.Errorf("deleting pvc %s: %v", pvc.Name, err)
	}
	if err := stack.Poll(ctx, 3*time.Minute, func() (bool, error) {
		err := st.Client.Get(ctx, client.ObjectKeyFromObject(pvc), pvc)
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		b.Errorf("pvc %s still there: %v", pvc.Name, err)
	}
}
