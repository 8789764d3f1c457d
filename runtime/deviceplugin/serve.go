// Package deviceplugin is the node daemon's kubelet device plugin: it
// advertises devices.podvirt.io/kvm, /tun and /vhost-net, each as
// DevicesPerResource shareable devices, and hands a container that asks
// for one the matching device node (/dev/kvm, /dev/net/tun,
// /dev/vhost-net), so launcher pods run unprivileged. A resource whose node
// is missing — or, for kvm, whose KVM cannot run guests (runtime/kvm) — is
// advertised with every device Unhealthy, so the node's allocatable is 0;
// health is checked again periodically.
//
// Each resource is its own plugin on its own socket in the kubelet's
// device-plugins directory. When the kubelet restarts it wipes that
// directory and makes a new kubelet.sock; Serve notices either and starts
// over, so the resources come back without restarting the node daemon.
package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
	"github.com/go-logr/logr"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// DefaultDir is the kubelet's device-plugins directory. The kubelet
// (v1.36) listens on DefaultDir/kubelet.sock whatever its --root-dir: it
// is one directory per machine, so only one kubelet per machine can serve
// device plugins.
var DefaultDir = filepath.Dir(pluginapi.KubeletSocket)

// KubeletSocketName is the kubelet's registration socket in the
// device-plugins directory.
var KubeletSocketName = filepath.Base(pluginapi.KubeletSocket)

// Serve runs the device plugins against the kubelet whose device-plugins
// directory is pluginDir (DefaultDir for a real kubelet), until ctx is
// done; then it removes its sockets and returns nil. It registers again
// whenever the kubelet restarts. It returns an error only when it cannot
// watch pluginDir or listen there.
func Serve(ctx context.Context, pluginDir string, log logr.Logger) error {
	return serve(ctx, config{
		pluginDir:      pluginDir,
		log:            log,
		resources:      defaultResources(),
		healthInterval: 10 * time.Second,
		retryInterval:  5 * time.Second,
	})
}

type config struct {
	pluginDir string
	log       logr.Logger
	resources []resource
	// healthInterval is how often health is checked again.
	healthInterval time.Duration
	// retryInterval is how long to wait before registering again after
	// the kubelet refused or was not there.
	retryInterval time.Duration
}

func serve(ctx context.Context, cfg config) error {
	if err := os.MkdirAll(cfg.pluginDir, 0o755); err != nil {
		return fmt.Errorf("device plugins: creating the kubelet's device-plugins directory %s: %w", cfg.pluginDir, err)
	}
	watcher, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("device plugins: watching %s: %w", cfg.pluginDir, err)
	}
	defer watcher.Close()
	if err := watcher.Add(cfg.pluginDir); err != nil {
		return fmt.Errorf("device plugins: watching %s: %w", cfg.pluginDir, err)
	}

	for {
		plugins := make([]*plugin, 0, len(cfg.resources))
		var startErr error
		for _, res := range cfg.resources {
			p := newPlugin(res, cfg.pluginDir, cfg.log)
			if startErr = p.start(); startErr != nil {
				break
			}
			plugins = append(plugins, p)
		}
		if startErr == nil {
			startErr = runUntilRestart(ctx, cfg, watcher, plugins)
		}
		for _, p := range plugins {
			p.stop()
		}
		if startErr != nil {
			return fmt.Errorf("device plugins: %w", startErr)
		}
		if ctx.Err() != nil {
			return nil
		}
		cfg.log.Info("kubelet restarted: serving the device plugins again", "dir", cfg.pluginDir)
	}
}

// runUntilRestart registers the running plugins with the kubelet (again
// and again until it accepts), checks their health, and returns when ctx
// is done or the kubelet has restarted: kubelet.sock is a new file, or one
// of the plugins' sockets is gone.
func runUntilRestart(ctx context.Context, cfg config, watcher *fsnotify.Watcher, plugins []*plugin) error {
	kubeletSocket := filepath.Join(cfg.pluginDir, KubeletSocketName)
	ours := map[string]uint64{} // socket path → inode it was created with
	for _, p := range plugins {
		ino, err := inode(p.socket)
		if err != nil {
			return fmt.Errorf("device plugin socket %s vanished right after it was made: %w", p.socket, err)
		}
		ours[p.socket] = ino
	}

	var kubeletInode uint64 // of the kubelet.sock that accepted the plugins
	pending := plugins      // not registered yet
	registerAll := func() {
		ino, err := inode(kubeletSocket)
		if err != nil {
			cfg.log.V(1).Info("kubelet not up yet: waiting for its socket", "socket", kubeletSocket)
			return
		}
		var failed []*plugin
		for _, p := range pending {
			if err := p.register(ctx, kubeletSocket); err != nil {
				cfg.log.Error(err, "device plugin registration failed; trying again", "resource", p.res.name, "retryIn", cfg.retryInterval)
				failed = append(failed, p)
				continue
			}
			cfg.log.Info("registered with the kubelet", "resource", p.res.name, "socket", p.socket)
		}
		pending = failed
		if len(pending) == 0 {
			kubeletInode = ino
		}
	}
	registerAll()

	retry := time.NewTicker(cfg.retryInterval)
	defer retry.Stop()
	health := time.NewTicker(cfg.healthInterval)
	defer health.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-watcher.Events:
			if !ok {
				return errors.New("the watch on the device-plugins directory ended")
			}
			switch {
			case ev.Name == kubeletSocket && ev.Has(fsnotify.Create):
				if len(pending) > 0 {
					registerAll()
					continue
				}
				if ino, err := inode(kubeletSocket); err == nil && ino != kubeletInode {
					return nil // a new kubelet, which knows none of our plugins
				}
			case ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename):
				want, isOurs := ours[ev.Name]
				if !isOurs {
					continue
				}
				if ino, err := inode(ev.Name); err != nil || ino != want {
					return nil // the kubelet wiped its directory: it is restarting
				}
			}
		case err, ok := <-watcher.Errors:
			if ok {
				cfg.log.Error(err, "watching the device-plugins directory", "dir", cfg.pluginDir)
			}
		case <-retry.C:
			if len(pending) > 0 {
				registerAll()
			}
		case <-health.C:
			for _, p := range plugins {
				p.checkHealth(false)
			}
		}
	}
}

// inode is the inode number of path, which tells a re-created file from
// the one seen before.
func inode(path string) (uint64, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("stat %s: no inode", path)
	}
	return st.Ino, nil
}
