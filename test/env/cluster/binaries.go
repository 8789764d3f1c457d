package cluster

import (
	"github.com/podvirt/podvirt/test/deps"
)

// binaries are the programs a cluster runs, all installed by `make deps`.
type binaries struct {
	etcd, apiserver, controllerManager, scheduler, kubelet, kubeProxy string
	containerd, runc, ctr                                             string
	multus, whereabouts, coredns                                      string
	// cniPlugins maps a plugin name to the Debian-packaged binary that the
	// node's CNI bin dir gets a copy of.
	cniPlugins map[string]string
}

// debianCNIDir is where Debian's containernetworking-plugins installs.
const debianCNIDir = "/usr/lib/cni"

func findBinaries() (binaries, error) {
	var b binaries
	var err error
	k8s := func(name string) string {
		if err != nil {
			return ""
		}
		var p string
		p, err = deps.Binary("kubernetes", name)
		return p
	}
	b.apiserver = k8s("kube-apiserver")
	b.controllerManager = k8s("kube-controller-manager")
	b.scheduler = k8s("kube-scheduler")
	b.kubelet = k8s("kubelet")
	b.kubeProxy = k8s("kube-proxy")
	if err != nil {
		return b, err
	}
	if b.multus, err = deps.Binary("multus", "multus"); err != nil {
		return b, err
	}
	for _, s := range []struct {
		dst  *string
		name string
	}{{&b.etcd, "etcd"}, {&b.containerd, "containerd"}, {&b.runc, "runc"}, {&b.ctr, "ctr"}} {
		if *s.dst, err = deps.System(s.name); err != nil {
			return b, err
		}
	}
	b.cniPlugins = map[string]string{}
	for _, name := range []string{"bridge", "host-local", "loopback", "static", "macvlan"} {
		if b.cniPlugins[name], err = deps.File(debianCNIDir + "/" + name); err != nil {
			return b, err
		}
	}
	if b.whereabouts, err = deps.Binary("whereabouts", "whereabouts"); err != nil {
		return b, err
	}
	if b.coredns, err = deps.Binary("coredns", "coredns"); err != nil {
		return b, err
	}
	b.cniPlugins["multus"] = b.multus
	b.cniPlugins["whereabouts"] = b.whereabouts
	return b, nil
}
