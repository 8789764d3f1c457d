package cluster

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	runtimeapi "k8s.io/cri-api/pkg/apis/runtime/v1"

	"github.com/podvirt/podvirt/test/harness/pidproc"
)

// Down stops every process the cluster started and removes the links,
// mounts, network namespaces, cgroups and the state directory it made. It
// is safe on a cluster that is half up or already down. It returns an
// error naming anything it could not remove.
func (c *Cluster) Down(ctx context.Context) error {
	start := time.Now()
	var errs []error
	nodes := c.Nodes()
	// The kubelets go first, or they would restart the pods removed below.
	for _, n := range nodes {
		errs = append(errs, c.stopProcess(processName("kubelet", n)))
	}
	for _, name := range []string{"kube-scheduler", "kube-controller-manager"} {
		errs = append(errs, c.stopProcess(name))
	}
	for _, n := range nodes {
		if _, ok := c.running(processName("containerd", n), c.bins.containerd); ok {
			c.progress("removing the pod sandboxes of node %s through CRI ...", n.Name)
			errs = append(errs, c.removeSandboxes(ctx, n))
		}
		errs = append(errs, c.stopProcess(processName("containerd", n)))
	}
	c.killLeftovers()
	for _, n := range nodes {
		name := processName("kube-proxy", n)
		if _, ok := c.running(name, c.bins.kubeProxy); !ok {
			continue
		}
		errs = append(errs, c.stopProcess(name))
		// kube-proxy leaves its iptables chains behind unless told to go;
		// another node's go with its network namespace.
		if !n.First() {
			continue
		}
		if out, err := exec.CommandContext(ctx, c.bins.kubeProxy, "--cleanup").CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("kube-proxy --cleanup: %w: %s", err, strings.TrimSpace(string(out))))
		}
	}
	for _, n := range nodes[1:] {
		errs = append(errs, c.stopProcess(holderName(n)))
	}
	for _, name := range []string{"coredns", "kube-apiserver", "etcd"} {
		errs = append(errs, c.stopProcess(name))
	}
	errs = append(errs, c.unmountAll(), c.deleteLinks())
	for _, n := range nodes {
		errs = append(errs, removeCgroupRoot(n.Name))
	}
	errs = append(errs, removeKubeletChains())
	if left := c.Leftovers(); len(left) > 0 {
		errs = append(errs, fmt.Errorf("still present after teardown: %s", strings.Join(left, "; ")))
	} else if err := os.RemoveAll(c.cfg.Dir); err != nil {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("cluster down: %w", err)
	}
	c.progress("cluster %q is down (%.1fs); nothing of it is left", c.cfg.Name, time.Since(start).Seconds())
	return nil
}

// components maps each process the cluster records by pid to its binary.
func (c *Cluster) components() map[string]string {
	m := map[string]string{
		"etcd": c.bins.etcd, "kube-apiserver": c.bins.apiserver, "kube-controller-manager": c.bins.controllerManager,
		"kube-scheduler": c.bins.scheduler, "coredns": c.bins.coredns,
	}
	sleep, _ := sleepPath()
	for _, n := range c.Nodes() {
		m[processName("kubelet", n)] = c.bins.kubelet
		m[processName("kube-proxy", n)] = c.bins.kubeProxy
		m[processName("containerd", n)] = c.bins.containerd
		if !n.First() {
			m[holderName(n)] = sleep
		}
	}
	return m
}

func (c *Cluster) stopProcess(name string) error {
	path := c.components()[name]
	if _, ok := c.running(name, path); ok {
		c.progress("stopping %s", name)
	}
	return c.stop(name, path, 20*time.Second)
}

// removeSandboxes stops and removes every pod sandbox of node n, so its
// containerd tears down the containers, runs CNI DEL and removes the
// network namespaces.
func (c *Cluster) removeSandboxes(ctx context.Context, n Node) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	conn, err := grpc.NewClient("unix://"+n.ContainerdSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return err
	}
	defer conn.Close()
	rt := runtimeapi.NewRuntimeServiceClient(conn)
	list, err := rt.ListPodSandbox(ctx, &runtimeapi.ListPodSandboxRequest{})
	if err != nil {
		return fmt.Errorf("list pod sandboxes: %w", err)
	}
	var errs []error
	for _, sb := range list.Items {
		if _, err := rt.StopPodSandbox(ctx, &runtimeapi.StopPodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("stop sandbox %s (%s/%s): %w", sb.Id, sb.Metadata.Namespace, sb.Metadata.Name, err))
			continue
		}
		if _, err := rt.RemovePodSandbox(ctx, &runtimeapi.RemovePodSandboxRequest{PodSandboxId: sb.Id}); err != nil {
			errs = append(errs, fmt.Errorf("remove sandbox %s: %w", sb.Id, err))
		}
	}
	return errors.Join(errs...)
}

// killLeftovers kills what outlived its parent: containerd shims (their
// command line names our socket) and container processes (in our cgroups).
func (c *Cluster) killLeftovers() {
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		pids := c.strayPids()
		if len(pids) == 0 {
			return
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// strayPids are live processes of this cluster that are not recorded
// components: shims and containers. The caller and its ancestors (a `go
// run` whose arguments name the directory) are never strays.
func (c *Cluster) strayPids() []int {
	mine := ancestors()
	for name, path := range c.components() {
		if pid, ok := c.running(name, path); ok {
			mine = append(mine, pid)
		}
	}
	var pids []int
	candidates := processesUnder(c.cfg.Dir)
	for _, n := range c.Nodes() {
		candidates = append(candidates, cgroupRootPids(n.Name)...)
	}
	for _, pid := range candidates {
		if !slices.Contains(mine, pid) && !slices.Contains(pids, pid) && pidproc.Alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

func ancestors() []int {
	pids := []int{os.Getpid()}
	for pid := os.Getppid(); pid > 1; {
		pids = append(pids, pid)
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			break
		}
		next := 0
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "PPid:"); ok {
				next, _ = strconv.Atoi(strings.TrimSpace(v))
			}
		}
		pid = next
	}
	return pids
}

// mountsUnder lists mount points at or below dir, deepest first.
func mountsUnder(dir string) []string {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	defer f.Close()
	var mounts []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 5 {
			continue
		}
		mp := unescapeMountPath(fields[4])
		if mp == dir || strings.HasPrefix(mp, dir+"/") {
			mounts = append(mounts, mp)
		}
	}
	slices.SortFunc(mounts, func(a, b string) int { return len(b) - len(a) })
	return slices.Compact(mounts)
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if n, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

func (c *Cluster) unmountAll() error {
	var errs []error
	// A mount can be stacked several times on one point; go until none is left.
	for range 10 {
		mounts := mountsUnder(c.cfg.Dir)
		if len(mounts) == 0 {
			return nil
		}
		for _, mp := range mounts {
			if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
				errs = append(errs, fmt.Errorf("unmount %s: %w", mp, err))
			}
		}
	}
	return errors.Join(errs...)
}

// deleteLinks removes the links named <Name>-* (the node and pod-network
// bridges, and bridges made for the cluster's networks) and any link still
// enslaved to one of them.
func (c *Cluster) deleteLinks() error {
	links, err := netlink.LinkList()
	if err != nil {
		return fmt.Errorf("list links: %w", err)
	}
	var errs []error
	for _, l := range links {
		if c.ownsLink(l, links) {
			// ENODEV: gone with its peer (a veth pair deletes both ends).
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, syscall.ENODEV) {
				errs = append(errs, fmt.Errorf("delete link %s: %w", l.Attrs().Name, err))
			}
		}
	}
	return errors.Join(errs...)
}

func (c *Cluster) ownsLink(l netlink.Link, all []netlink.Link) bool {
	prefix := c.cfg.Name + "-"
	if strings.HasPrefix(l.Attrs().Name, prefix) {
		return true
	}
	for _, m := range all {
		if m.Attrs().Index == l.Attrs().MasterIndex && strings.HasPrefix(m.Attrs().Name, prefix) {
			return true
		}
	}
	return false
}

// Leftovers describes anything of this cluster still on the machine:
// processes, links, mounts (network namespaces among them: containerd keeps
// them under the state directory), cgroups and, once no kubelet is left,
// the kubelet's iptables chains. Empty after a clean Down.
func (c *Cluster) Leftovers() []string {
	var left []string
	for name, path := range c.components() {
		if pid, ok := c.running(name, path); ok {
			left = append(left, fmt.Sprintf("process %s (pid %d)", name, pid))
		}
	}
	for _, pid := range c.strayPids() {
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		left = append(left, fmt.Sprintf("process %d (%s)", pid, strings.ReplaceAll(strings.TrimRight(string(cmd), "\x00"), "\x00", " ")))
	}
	if links, err := netlink.LinkList(); err == nil {
		for _, l := range links {
			if c.ownsLink(l, links) {
				left = append(left, "link "+l.Attrs().Name)
			}
		}
	}
	for _, mp := range mountsUnder(c.cfg.Dir) {
		left = append(left, "mount "+mp)
	}
	for _, n := range c.Nodes() {
		for _, cg := range cgroupRootExists(n.Name) {
			left = append(left, "cgroup "+cg)
		}
	}
	if !otherKubeletRunning() {
		left = append(left, kubeletChainsLeft()...)
	}
	return left
}
