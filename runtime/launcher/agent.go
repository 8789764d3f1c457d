package launcher

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// osInfoTimeout bounds the guest-get-osinfo asked when the agent connects.
const osInfoTimeout = 30 * time.Second

// onAgent follows the guest agent's connection (libvirt's agent lifecycle
// event: qemu-ga opened or closed its port) and, once it connects, asks it
// about the guest's OS.
func (l *Launcher) onAgent(_ *libvirt.Connect, d *libvirt.Domain, ev *libvirt.DomainEventAgentLifecycle) {
	name, err := d.GetName()
	if err != nil || name != l.name {
		return
	}
	connected := ev.State == libvirt.CONNECT_DOMAIN_EVENT_AGENT_LIFECYCLE_STATE_CONNECTED
	l.mu.Lock()
	changed := l.health.GuestAgent != connected
	l.health.GuestAgent = connected
	if changed {
		l.notifyLocked()
	}
	l.mu.Unlock()
	if connected {
		go l.readOSInfo(context.Background())
	}
}

// readOSInfo asks the agent about the guest's OS and keeps the answer.
func (l *Launcher) readOSInfo(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, osInfoTimeout)
	defer cancel()
	raw, err := l.agentCommand(ctx, map[string]any{"execute": "guest-get-osinfo"})
	if err != nil {
		slog.Info("the guest agent did not say which OS the guest runs", "domain", l.name, "err", err)
		return
	}
	var info struct {
		Name          string `json:"name"`
		ID            string `json:"id"`
		Version       string `json:"version"`
		KernelRelease string `json:"kernel-release"`
		PrettyName    string `json:"pretty-name"`
	}
	if err := json.Unmarshal(raw, &info); err != nil {
		slog.Info("the guest agent's guest-get-osinfo", "domain", l.name, "err", err)
		return
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	l.health.GuestAgent = true // it answered
	l.health.OSInfo = &launchercmd.GuestOSInfo{Name: info.Name, Id: info.ID, Version: info.Version, KernelRelease: info.KernelRelease, PrettyName: info.PrettyName}
	l.notifyLocked()
}
