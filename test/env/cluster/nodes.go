package cluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"syscall"
	"time"

	"github.com/containernetworking/plugins/pkg/ip"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"

	"github.com/podvirt/podvirt/test/harness/pidproc"
)

// maxNodes bounds Config.Nodes: every node is a kubelet and a containerd
// on the machine's cores.
const maxNodes = 8

// A cluster's first node is the machine itself: its kubelet, containerd and
// kube-proxy run in the host's network namespace, on the paths under Dir,
// as a single-node cluster always has (tests run node daemons on the host
// against it). Every other node is isolated the lightest way that gives it
// state of its own: a sleeping "holder" process owns a new network and
// mount namespace, and the node's containerd, kubelet and kube-proxy join
// both with nsenter. In that mount namespace the node's own directories
// under Dir/nodes/<name> are bind-mounted over the first node's paths
// (nodeLocalDirs) and over the host paths the kubelet and podvirt use
// whatever they are told (nodePaths), so every node sees the same paths
// (one chart value fits all) but none sees another's files. A veth joins
// the node to the <Name>-node bridge, the underlay every node and the API
// server share; static routes carry each node's pod /24. When the holder
// and its node's processes are gone, the kernel removes both namespaces
// with every mount, link and iptables rule in them.
//
// nodeLocalDirs are the first node's directories under Dir that each other
// node has a copy of: containerd's root and socket, the kubelet root (and
// the CSI state under it), CNI plugins, config and IPAM leases, and pod
// logs (a kubelet removes logs of pods it does not know).
var nodeLocalDirs = []string{"containerd", "kubelet", "cni", "pod-logs"}

// Node is one node of the cluster as the host sees it.
type Node struct {
	Name string
	// IP is the node's address on the underlay.
	IP net.IP
	// PodSubnet is the node's /24 of the cluster's pod network.
	PodSubnet string
	// ContainerdSocket, DevicePluginDir and KubeletRootDir are host paths
	// of the node's own containerd socket, device-plugins directory (what
	// its kubelet sees as /var/lib/kubelet/device-plugins) and kubelet root.
	ContainerdSocket, DevicePluginDir, KubeletRootDir string

	index int // 1-based; 1 is the machine itself
}

// First reports whether n is the node that runs in the host's namespaces.
func (n Node) First() bool { return n.index == 1 }

// Nodes lists the cluster's nodes, the first first.
func (c *Cluster) Nodes() []Node {
	nodes := make([]Node, c.cfg.nodeCount())
	_, pods, _ := net.ParseCIDR(c.cfg.PodSubnet)
	for i := range nodes {
		n := Node{index: i + 1, Name: c.cfg.Name}
		if i > 0 {
			n.Name = c.cfg.Name + "-" + strconv.Itoa(i+1)
		}
		n.IP = offsetIP(c.cfg.NodeIP, i)
		subnet := &net.IPNet{IP: offsetIP(pods.IP, i<<8), Mask: net.CIDRMask(24, 32)}
		n.PodSubnet = subnet.String()
		n.ContainerdSocket = c.nodePath(n, "containerd", "containerd.sock")
		n.DevicePluginDir = c.nodePath(n, "node", ownDevicePlugins)
		n.KubeletRootDir = c.nodePath(n, "kubelet")
		nodes[i] = n
	}
	return nodes
}

func (c *Cluster) first() Node { return c.Nodes()[0] }

// node finds a node by name.
func (c *Cluster) node(name string) (Node, error) {
	var names []string
	for _, n := range c.Nodes() {
		if n.Name == name {
			return n, nil
		}
		names = append(names, n.Name)
	}
	return Node{}, fmt.Errorf("cluster %s has no node %q (its nodes: %v)", c.cfg.Name, name, names)
}

func offsetIP(base net.IP, n int) net.IP {
	v4 := base.To4()
	v := uint32(v4[0])<<24 | uint32(v4[1])<<16 | uint32(v4[2])<<8 | uint32(v4[3])
	v += uint32(n)
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// nodePath is where, on the host, node n keeps what it sees at
// Dir/<parts...> (parts[0] one of nodeLocalDirs, or "node" for its copies
// of nodePaths).
func (c *Cluster) nodePath(n Node, parts ...string) string {
	if n.First() {
		return c.path(parts...)
	}
	return c.path(append([]string{"nodes", n.Name}, parts...)...)
}

// processName names a node's component in pids/ and logs/: the first
// node's keep the names a single-node cluster has always used.
func processName(component string, n Node) string {
	if n.First() {
		return component
	}
	return component + "-" + n.Name
}

func holderName(n Node) string { return "node-" + n.Name }

// sleepPath is the holder's program; it never exits on its own.
func sleepPath() (string, error) {
	p, err := exec.LookPath("sleep")
	if err != nil {
		return "", fmt.Errorf("the node holder needs sleep (coreutils): %w", err)
	}
	return filepath.EvalSymlinks(p)
}

// startHolder starts (or finds) node n's namespace holder and wires its
// network. Only for nodes other than the first.
func (c *Cluster) startHolder(ctx context.Context, n Node) error {
	sleep, err := sleepPath()
	if err != nil {
		return err
	}
	args := []string{"--mount", "--net", "--propagation", "private", "--", "/bin/sh", "-c", nodeNamespaceScript, "podvirt-node-namespace"}
	for _, dir := range nodeLocalDirs {
		args = append(args, c.nodePath(n, dir), c.path(dir))
	}
	for _, np := range nodePaths {
		args = append(args, c.nodePath(n, "node", np.own), np.host)
	}
	args = append(args, "--", sleep, "infinity")
	err = c.start(process{name: holderName(n), path: sleep, launcher: "/usr/bin/unshare", args: args,
		// The state dir is private after unshare: share it again within
		// the node, so its kubelet's volume mounts reach its containers
		// (Bidirectional propagation) as on the first node.
		env: []string{"PODVIRT_NODE_SHARED=" + c.cfg.Dir}})
	if err != nil {
		return err
	}
	// The holder is sh until its mounts are made, then sleep.
	var pid int
	err = c.waitFor(ctx, "node "+n.Name+" namespaces", holderName(n), 30*time.Second, func(context.Context) (bool, error) {
		p, ok := c.running(holderName(n), sleep)
		pid = p
		if !ok && !c.recordedAlive(holderName(n)) {
			return false, permanentError{fmt.Errorf("the namespace holder of node %s exited; its log %s ends with:\n%s",
				n.Name, c.path("logs", holderName(n)+".log"), tail(c.path("logs", holderName(n)+".log"), 10))}
		}
		return ok, nil
	})
	if err != nil {
		return err
	}
	return c.wireNode(n, pid)
}

// underlayLink is what node n's underlay NIC is called on the host (the
// first node has none: the bridge itself holds its address).
func (c *Cluster) underlayLink(n Node) string { return c.link("n" + strconv.Itoa(n.index)) }

// wireNode gives node n (held by pid) its underlay NIC "eth0" with the
// node's address, a default route through the host, routes to the other
// nodes' pod subnets, its L2 segment NICs (see segment.go), forwarding on;
// and tells the host where n's pods are.
func (c *Cluster) wireNode(n Node, pid int) error {
	netNS, err := ns.GetNS(fmt.Sprintf("/proc/%d/ns/net", pid))
	if err != nil {
		return fmt.Errorf("node %s: its network namespace: %w", n.Name, err)
	}
	defer netNS.Close()
	handle := netns.NsHandle(netNS.Fd())
	bridge, err := netlink.LinkByName(c.link("node"))
	if err != nil {
		return fmt.Errorf("node %s: the underlay bridge: %w", n.Name, err)
	}
	if err := c.vethInto(handle, c.underlayLink(n), "eth0", bridge); err != nil {
		return fmt.Errorf("node %s: underlay NIC: %w", n.Name, err)
	}
	if err := c.segmentNICs(n, handle); err != nil {
		return err
	}
	in, err := netlink.NewHandleAt(handle)
	if err != nil {
		return err
	}
	defer in.Close()
	for _, name := range []string{"lo", "eth0"} {
		l, err := in.LinkByName(name)
		if err == nil {
			err = in.LinkSetUp(l)
		}
		if err != nil {
			return fmt.Errorf("node %s: set %s up: %w", n.Name, name, err)
		}
	}
	eth0, err := in.LinkByName("eth0")
	if err != nil {
		return err
	}
	if err := in.AddrReplace(eth0, &netlink.Addr{IPNet: &net.IPNet{IP: n.IP, Mask: net.CIDRMask(24, 32)}}); err != nil {
		return fmt.Errorf("node %s: address %s on eth0: %w", n.Name, n.IP, err)
	}
	if err := in.RouteReplace(&netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: c.cfg.NodeIP}); err != nil {
		return fmt.Errorf("node %s: default route via %s: %w", n.Name, c.cfg.NodeIP, err)
	}
	for _, other := range c.Nodes() {
		if other.index == n.index || other.First() {
			continue // the first node's pods are behind the default route
		}
		if err := in.RouteReplace(podRoute(other, eth0.Attrs().Index)); err != nil {
			return fmt.Errorf("node %s: route to %s's pods: %w", n.Name, other.Name, err)
		}
	}
	if err := netNS.Do(func(ns.NetNS) error { return ip.EnableIP4Forward() }); err != nil {
		return fmt.Errorf("node %s: IPv4 forwarding: %w", n.Name, err)
	}
	// The host forwards between nodes and the first node's pods.
	if err := ip.EnableIP4Forward(); err != nil {
		return fmt.Errorf("host IPv4 forwarding: %w", err)
	}
	if err := netlink.RouteReplace(podRoute(n, bridge.Attrs().Index)); err != nil {
		return fmt.Errorf("host route to node %s's pods: %w", n.Name, err)
	}
	return nil
}

func podRoute(to Node, linkIndex int) *netlink.Route {
	_, dst, _ := net.ParseCIDR(to.PodSubnet)
	return &netlink.Route{LinkIndex: linkIndex, Dst: dst, Gw: to.IP}
}

// vethInto makes a veth pair whose end host stays on the host as a port of
// master (when not nil) and whose other end is inside the namespace handle
// as inner; both up. An existing host end means it was done already.
func (c *Cluster) vethInto(handle netns.NsHandle, host, inner string, master netlink.Link) error {
	if _, err := netlink.LinkByName(host); err != nil {
		veth := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: host}, PeerName: inner, PeerNamespace: netlink.NsFd(int(handle))}
		if err := netlink.LinkAdd(veth); err != nil {
			return fmt.Errorf("create veth %s (inside: %s): %w", host, inner, err)
		}
	}
	l, err := netlink.LinkByName(host)
	if err != nil {
		return err
	}
	if master != nil {
		if err := netlink.LinkSetMaster(l, master); err != nil {
			return fmt.Errorf("add %s to %s: %w", host, master.Attrs().Name, err)
		}
	}
	if err := netlink.LinkSetUp(l); err != nil {
		return fmt.Errorf("set %s up: %w", host, err)
	}
	in, err := netlink.NewHandleAt(handle)
	if err != nil {
		return err
	}
	defer in.Close()
	il, err := in.LinkByName(inner)
	if err == nil {
		err = in.LinkSetUp(il)
	}
	if err != nil {
		return fmt.Errorf("set %s up inside the node: %w", inner, err)
	}
	return nil
}

// inNode wraps p so it runs in node n's namespaces: the first node's in a
// mount namespace of its own (inNodeNamespace); any other's in its
// holder's network and mount namespaces. nsenter execs in place, so the
// recorded pid is the component's own.
func (c *Cluster) inNode(n Node, p process) (process, error) {
	if n.First() {
		return c.inNodeNamespace(p), nil
	}
	sleep, err := sleepPath()
	if err != nil {
		return p, err
	}
	pid, ok := c.running(holderName(n), sleep)
	if !ok {
		return p, fmt.Errorf("node %s: its namespace holder is not running", n.Name)
	}
	args := append([]string{"--target", strconv.Itoa(pid), "--mount", "--net", "--", p.path}, p.args...)
	return process{name: p.name, path: p.path, launcher: "/usr/bin/nsenter", args: args, env: p.env}, nil
}

// StopNode powers node name off: every process of it dies at once
// (kubelet, kube-proxy, containerd, its shims and containers, VMs among
// them) and its namespaces go with them, as in a power loss; its disks
// (its state directory) stay. The first node is the machine itself and
// cannot be stopped.
func (c *Cluster) StopNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	if n.First() {
		return fmt.Errorf("node %s is the machine itself (it shares the control plane's network): stop another node", name)
	}
	sleep, err := sleepPath()
	if err != nil {
		return err
	}
	holder, _ := c.running(holderName(n), sleep)
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids := c.nodePids(n, holder)
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("node %s: processes %v still alive after SIGKILL", name, pids)
		}
		for _, pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	var errs []error
	for _, name := range []string{processName("kubelet", n), processName("kube-proxy", n), processName("containerd", n), holderName(n)} {
		errs = append(errs, ignoreNotExist(os.Remove(c.path("pids", name+".pid"))))
	}
	// The host end of its underlay veth went with the namespace; its pod
	// route went with the link.
	c.progress("node %s is off", name)
	return errors.Join(errs...)
}

// StartNode starts a node StopNode stopped (or finishes starting it) and
// waits for it to be Ready.
func (c *Cluster) StartNode(ctx context.Context, name string) error {
	n, err := c.node(name)
	if err != nil {
		return err
	}
	for _, s := range c.nodeSteps(n) {
		if err := s.run(ctx); err != nil {
			return fmt.Errorf("start node %s: %s: %w", name, s.name, err)
		}
	}
	return c.waitNodeReady(ctx, n)
}

// nodePids lists the live processes of node n: those in its holder's mount
// namespace (the holder, containerd, its shims, the kubelet, kube-proxy)
// and those in its kubelet's cgroup root (containers).
func (c *Cluster) nodePids(n Node, holder int) []int {
	pids := cgroupRootPids(n.Name)
	if holder > 0 {
		want, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", holder))
		if err == nil {
			entries, _ := os.ReadDir("/proc")
			for _, e := range entries {
				pid, err := strconv.Atoi(e.Name())
				if err != nil {
					continue
				}
				if got, err := os.Readlink(fmt.Sprintf("/proc/%d/ns/mnt", pid)); err == nil && got == want && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
		}
	}
	var alive []int
	for _, pid := range pids {
		if pidproc.Alive(pid) {
			alive = append(alive, pid)
		}
	}
	return alive
}

func ignoreNotExist(err error) error {
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}
