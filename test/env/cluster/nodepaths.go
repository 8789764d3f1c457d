package cluster

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// nodePaths are host paths that the kubelet, CNI plugins or podvirt's
// DaemonSets use whatever a cluster's configuration says: the kubelet
// hard-codes its device-plugins directory (and wipes it when it starts),
// host-local IPAM keeps its leases in /var/lib/cni unless a network names a
// dataDir, and the chart's defaults put podvirt's node state under
// /var/run/podvirt and /var/lib/podvirt. Each node gets its own copy under
// its state directory, bind-mounted over these paths in the mount namespace
// of its containerd and kubelet (and so of every container and CNI plugin
// they start), so clusters on one machine never share them.
var nodePaths = []struct{ host, own string }{
	{"/var/lib/kubelet/device-plugins", ownDevicePlugins},
	{"/var/lib/cni", "cni-lib"},
	{"/run/podvirt", "run-podvirt"},
	{"/var/lib/podvirt", "lib-podvirt"},
}

// ownDevicePlugins names the node's copy of the kubelet's device-plugins
// dir. The copies have short names under <Dir>/node: sockets are made
// there, and a unix socket's path has at most 107 bytes.
const ownDevicePlugins = "device-plugins"

// DevicePluginDir is, on the host, the directory the first node's kubelet
// sees as /var/lib/kubelet/device-plugins: where a device plugin run
// outside the cluster's pods (a test) registers with this kubelet.
func (c *Cluster) DevicePluginDir() string { return c.first().DevicePluginDir }

// nodeNamespaceScript runs in a new mount namespace that still shares the
// cluster's state directory with the host (see shareStateDir). Its
// arguments are source/target pairs, then "--", then the command to exec.
// Each target's mount is made a slave first, so the bind never propagates
// back to the host on machines where / is a shared mount (systemd's
// default); the state directory is a mount of its own and stays shared.
// When PODVIRT_NODE_SHARED names a directory (a node with namespaces of its
// own, made private), the mounts at and below it are made shared last.
const nodeNamespaceScript = `set -eu
while [ "$1" != -- ]; do
	mkdir -p "$1" "$2"
	mount --make-slave "$(findmnt -n -o TARGET --target "$2")"
	mount --bind "$1" "$2"
	shift 2
done
shift
if [ -n "${PODVIRT_NODE_SHARED:-}" ]; then mount --make-rshared "$PODVIRT_NODE_SHARED"; fi
exec "$@"`

// inNodeNamespace wraps p so it runs in a mount namespace of its own with
// the node's copies of nodePaths mounted. unshare and sh exec in place, so
// the recorded pid is the component's own.
func (c *Cluster) inNodeNamespace(p process) process {
	args := []string{"--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", nodeNamespaceScript, "podvirt-node-namespace"}
	for _, np := range nodePaths {
		args = append(args, c.path("node", np.own), np.host)
	}
	args = append(append(args, "--", p.path), p.args...)
	return process{name: p.name, path: p.path, launcher: "/usr/bin/unshare", args: args, env: p.env}
}

// shareStateDir makes the state directory a shared mount of its own (a
// bind mount onto itself), so what the kubelet and containerd mount under
// it from their own mount namespaces (volumes, network namespaces) is seen
// by each other and by the host. Done once; Down unmounts it with the rest.
func (c *Cluster) shareStateDir() error {
	if len(mountsAt(c.cfg.Dir)) == 0 {
		if err := unix.Mount(c.cfg.Dir, c.cfg.Dir, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount the state directory %s onto itself: %w", c.cfg.Dir, err)
		}
	}
	if err := unix.Mount("", c.cfg.Dir, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make the state directory %s a shared mount: %w", c.cfg.Dir, err)
	}
	return nil
}

// mountsAt lists the mounts whose mount point is exactly dir.
func mountsAt(dir string) []string {
	var at []string
	for _, mp := range mountsUnder(dir) {
		if mp == dir {
			at = append(at, mp)
		}
	}
	return at
}
