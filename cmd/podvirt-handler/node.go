package main

import (
	"context"
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"github.com/podvirt/podvirt/cni/install"
	"github.com/podvirt/podvirt/runtime/deviceplugin"
	"github.com/podvirt/podvirt/runtime/handler"
)

// setupNode adds the node's own duties to the handler: it installs the
// podvirt-l2 CNI plugin into the node's CNI bin dir, serves the kubelet
// device plugin for /dev/kvm, /dev/net/tun and /dev/vhost-net, and reads
// the CNI results podvirt-l2 stores for the launchers.
func setupNode(mgr ctrl.Manager, f *flags, cfg *handler.Config) error {
	changed, err := install.Plugin(f.cniBinary, f.cniBinDir)
	if err != nil {
		return fmt.Errorf("installing the CNI plugin %s into %s: %w", f.cniBinary, f.cniBinDir, err)
	}
	mgr.GetLogger().Info("CNI plugin installed", "binDir", f.cniBinDir, "changed", changed)
	cfg.Networks = handler.ResultsDir(f.cniResultsDir)
	log := mgr.GetLogger().WithName("deviceplugin")
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		return deviceplugin.Serve(ctx, f.devicePluginDir, log)
	}))
}
