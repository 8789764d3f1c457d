package launcher

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/internal/atomicfile"
	"github.com/podvirt/podvirt/runtime/converter"
)

// QemuImg is the qemu-img binary in the launcher's image.
var QemuImg = "qemu-img"

// SnapshotResult is how an online snapshot went for the guest.
type SnapshotResult struct {
	GuestAgent, Quiesced, Paused, MemorySaved bool
	// AgentError says why the agent did not freeze the filesystems.
	AgentError string
	// Frozen is how long the guest was frozen or paused.
	Frozen time.Duration
}

// switchedDisk is one disk an online snapshot switches to a new overlay.
type switchedDisk struct {
	volume, dev, dir, layer, top string
	meta, before                 diskmeta.Meta
}

// snapshotDisks switches the disks of the volumes in layers (VMI volume →
// layer file name) to new overlays in one libvirt external snapshot: each
// disk's current image is linked as its layer, a new top-….img names that
// layer as its backing file, and the volume's metadata says so (before the
// switch: a crash after it leaves a volume the CSI driver settles whole).
// The guest's filesystems are frozen through its agent for the switch, or
// the guest is paused when the agent does not freeze them within
// freezeTimeout; it is thawed or resumed before this returns.
func (l *Launcher) snapshotDisks(ctx context.Context, layers map[string]string, freezeTimeout time.Duration, memoryVolume string) (SnapshotResult, error) {
	var res SnapshotResult
	d, err := l.domain()
	if err != nil {
		return res, err
	}
	disks, devs, err := l.prepareSwitch(ctx, d, layers)
	if err != nil {
		return res, err
	}
	key := snapshotKey(layers)
	if len(disks) == 0 {
		// Switched already: a caller asking again (its first answer
		// lost, or read from a stale cache) gets the same answer.
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.snapshots[key], nil
	}
	memory := ""
	if memoryVolume != "" {
		i := slices.IndexFunc(disks, func(s switchedDisk) bool { return s.volume == memoryVolume })
		if i < 0 {
			return res, fmt.Errorf("volume %s, where the memory is to be saved, is not among the disks switched", memoryVolume)
		}
		memory = filepath.Join(disks[i].dir, diskmeta.MemoryFor(disks[i].layer))
	}
	undo := func() {
		for _, s := range disks {
			_ = writeMeta(s.dir, s.before)
			_ = os.Remove(filepath.Join(s.dir, s.top))
			_ = os.Remove(filepath.Join(s.dir, s.layer))
		}
		if memory != "" {
			_ = os.Remove(memory)
		}
	}
	for _, s := range disks {
		if err := writeMeta(s.dir, s.meta); err != nil {
			undo()
			return res, err
		}
	}

	flags := libvirt.DOMAIN_SNAPSHOT_CREATE_NO_METADATA | libvirt.DOMAIN_SNAPSHOT_CREATE_REUSE_EXT | libvirt.DOMAIN_SNAPSHOT_CREATE_ATOMIC
	var held time.Time
	var release func() time.Time
	if memory == "" {
		flags |= libvirt.DOMAIN_SNAPSHOT_CREATE_DISK_ONLY
		if held, release, err = l.quiesce(ctx, d, freezeTimeout, &res); err != nil {
			undo()
			return res, err
		}
	} else {
		// Memory and disks are saved in one instant (libvirt pauses the
		// guest for the end of a live save): nothing to freeze.
		flags |= libvirt.DOMAIN_SNAPSHOT_CREATE_LIVE
		held, release = time.Now(), time.Now
	}
	snap, err := d.CreateSnapshotXML(switchXML(disks, devs, memory), flags)
	res.Frozen = release().Sub(held)
	res.MemorySaved = err == nil && memory != ""
	if snap != nil {
		_ = snap.Free()
	}
	if err != nil {
		undo()
		return res, fmt.Errorf("switch the disks to new overlays: %w", err)
	}
	slog.Info("disks switched to new overlays for a snapshot", "domain", l.name, "disks", len(disks),
		"quiesced", res.Quiesced, "paused", res.Paused, "frozen", res.Frozen)
	l.mu.Lock()
	if l.snapshots == nil {
		l.snapshots = map[string]SnapshotResult{}
	}
	l.snapshots[key] = res
	l.mu.Unlock()
	return res, nil
}

// prepareSwitch links each disk's current image as its layer and makes the
// new overlay over it, outside the freeze; devs are all the domain's disks.
func (l *Launcher) prepareSwitch(ctx context.Context, d *libvirt.Domain, layers map[string]string) (out []switchedDisk, devs []string, err error) {
	dom, err := liveDefinition(d)
	if err != nil {
		return nil, nil, err
	}
	if dom.Devices != nil {
		for _, disk := range dom.Devices.Disks {
			if disk.Target != nil {
				devs = append(devs, disk.Target.Dev)
			}
		}
	}
	for volume, layer := range layers {
		if !diskmeta.ValidLayerName(layer) {
			return nil, nil, fmt.Errorf("volume %s: %q is not a layer name (layer-….img)", volume, layer)
		}
		disk := volumeDisk(dom, volume)
		if disk == nil || disk.Source == nil || disk.Source.File == nil || disk.Target == nil {
			return nil, nil, fmt.Errorf("volume %s: the domain has no file disk for it", volume)
		}
		cur := disk.Source.File.File
		dir := filepath.Dir(cur)
		m, err := diskmeta.Read(dir)
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: %w", volume, err)
		}
		if slices.Contains(m.Layers, layer) {
			continue
		}
		if m.Format != diskmeta.FormatQCOW2 {
			return nil, nil, fmt.Errorf("volume %s holds a %s disk: only qcow2 disks switch to an overlay", volume, m.Format)
		}
		info, err := d.GetBlockInfo(disk.Target.Dev, 0)
		if err != nil {
			return nil, nil, fmt.Errorf("volume %s: size of disk %s: %w", volume, disk.Target.Dev, err)
		}
		s := switchedDisk{volume: volume, dev: disk.Target.Dev, dir: dir, layer: layer, before: m,
			top: diskmeta.TopFor(layer)}
		if err := os.Link(cur, filepath.Join(dir, layer)); err != nil && !errors.Is(err, os.ErrExist) {
			return nil, nil, fmt.Errorf("volume %s: link %s as %s: %w", volume, filepath.Base(cur), layer, err)
		}
		// -u: the layer is the image QEMU has open; nothing reads it here.
		cmd := exec.CommandContext(ctx, QemuImg, "create", "-q", "-u", "-f", diskmeta.FormatQCOW2, "-b", layer, "-F", diskmeta.FormatQCOW2, s.top, strconv.FormatUint(info.Capacity, 10))
		cmd.Dir = dir
		if b, err := cmd.CombinedOutput(); err != nil {
			return nil, nil, fmt.Errorf("volume %s: create the overlay %s: %w: %s", volume, s.top, err, strings.TrimSpace(string(b)))
		}
		s.meta = m
		s.meta.Layers = append([]string{layer}, m.Layers...)
		s.meta.Top = s.top
		out = append(out, s)
	}
	return out, devs, nil
}

// quiesce freezes the guest's filesystems through its agent within
// timeout, or pauses the guest; held is when the guest stopped running
// freely (a freeze holds writers back from its start), release undoes
// whichever it did and says when the guest ran freely again.
func (l *Launcher) quiesce(ctx context.Context, d *libvirt.Domain, timeout time.Duration, res *SnapshotResult) (held time.Time, release func() time.Time, err error) {
	held = time.Now()
	fctx, cancel := context.WithTimeout(ctx, timeout)
	_, ferr := l.agentCommand(fctx, map[string]any{"execute": "guest-fsfreeze-freeze"})
	cancel()
	if ferr == nil {
		res.GuestAgent, res.Quiesced = true, true
		return held, func() time.Time {
			if err := l.thaw(); err != nil {
				slog.Error("thaw the guest's filesystems after a snapshot", "domain", l.name, "err", err)
			}
			return time.Now()
		}, nil
	}
	res.AgentError = ferr.Error()
	res.GuestAgent = !strings.Contains(ferr.Error(), "does not answer")
	// An agent that timed out still has the freeze queued: once it wakes
	// it freezes late. libvirt sends nothing more to it until then, so a
	// thaw is tried every few seconds until one is answered (after the
	// late freeze), however long the agent sleeps, while the domain runs.
	defer func() { go l.thawLate() }()
	held = time.Now()
	if err := d.Suspend(); err != nil {
		return held, nil, fmt.Errorf("the guest agent did not freeze the filesystems (%w) and the guest could not be paused: %w", ferr, err)
	}
	res.Paused = true
	return held, func() time.Time {
		if err := d.Resume(); err != nil {
			slog.Error("resume the guest after a snapshot", "domain", l.name, "err", err)
		}
		return time.Now()
	}, nil
}

// lateThawPeriod is how often a thaw is tried after an agent that did not
// answer a freeze.
const lateThawPeriod = 2 * time.Second

// thawLate thaws the guest's filesystems once its agent answers again.
func (l *Launcher) thawLate() {
	tick := time.NewTicker(lateThawPeriod)
	defer tick.Stop()
	for {
		if err := l.thaw(); err == nil {
			slog.Info("the guest agent answered a thaw after it missed a freeze", "domain", l.name)
			return
		}
		select {
		case <-l.Done():
			return
		case <-tick.C:
		}
	}
}

// thaw thaws the guest's filesystems through its agent.
func (l *Launcher) thaw() error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err := l.agentCommand(ctx, map[string]any{"execute": "guest-fsfreeze-thaw"})
	return err
}

// switchXML is the external snapshot onto the prepared overlays, with the
// memory saved to the file memory when it is set; the domain's other disks
// (devs) are left out of it.
func switchXML(disks []switchedDisk, devs []string, memory string) string {
	snap := libvirtxml.DomainSnapshot{Disks: &libvirtxml.DomainSnapshotDisks{}}
	if memory != "" {
		snap.Memory = &libvirtxml.DomainSnapshotMemory{Snapshot: "external", File: memory}
	}
	for _, dev := range devs {
		if !slices.ContainsFunc(disks, func(s switchedDisk) bool { return s.dev == dev }) {
			snap.Disks.Disks = append(snap.Disks.Disks, libvirtxml.DomainSnapshotDisk{Name: dev, Snapshot: "no"})
		}
	}
	for _, s := range disks {
		snap.Disks.Disks = append(snap.Disks.Disks, libvirtxml.DomainSnapshotDisk{
			Name: s.dev, Snapshot: "external",
			Driver: &libvirtxml.DomainDiskDriver{Type: diskmeta.FormatQCOW2},
			Source: &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: filepath.Join(s.dir, s.top)}},
		})
	}
	out, _ := snap.Marshal()
	return out
}

// volumeDisk is the disk of VMI volume name (alias ua-NAME).
func volumeDisk(dom *libvirtxml.Domain, name string) *libvirtxml.DomainDisk {
	if dom.Devices == nil {
		return nil
	}
	for i := range dom.Devices.Disks {
		if a := dom.Devices.Disks[i].Alias; a != nil && a.Name == "ua-"+name {
			return &dom.Devices.Disks[i]
		}
	}
	return nil
}

func writeMeta(dir string, m diskmeta.Meta) error {
	b, err := diskmeta.Encode(m)
	if err != nil {
		return err
	}
	return atomicfile.Write(diskmeta.Path(dir), b, 0o644)
}

// SnapshotDisks switches the requested disks to new overlays for an online
// snapshot (launchercmd's SnapshotDisks).
func (l *Launcher) SnapshotDisks(ctx context.Context, req *launchercmd.SnapshotDisksRequest) (*launchercmd.SnapshotDisksResponse, error) {
	res, err := l.snapshotDisks(ctx, req.GetLayers(), time.Duration(req.GetFreezeTimeoutMs())*time.Millisecond, req.GetMemoryVolume())
	if err != nil {
		return nil, err
	}
	return &launchercmd.SnapshotDisksResponse{
		GuestAgent: res.GuestAgent, Quiesced: res.Quiesced, Paused: res.Paused,
		AgentError: res.AgentError, FrozenMs: res.Frozen.Milliseconds(), MemorySaved: res.MemorySaved,
	}, nil
}

// resumeState is the saved memory state a disk of opts carries for the
// guest to resume from (diskmeta Resume), and that disk's directory.
func resumeState(opts converter.Options) (memory, dir string) {
	for _, src := range opts.Disks {
		if src.Block {
			continue
		}
		d := filepath.Dir(src.Path)
		if m, err := diskmeta.Read(d); err == nil && m.Resume != "" {
			return filepath.Join(d, m.Resume), d
		}
	}
	return "", ""
}

// clearResume marks the memory state of the volume directory dir used.
func clearResume(dir string) error {
	m, err := diskmeta.Read(dir)
	if err != nil {
		return err
	}
	m.Resume = ""
	return writeMeta(dir, m)
}

// savedUUID is xml with the domain UUID of the saved memory state memory.
func (l *Launcher) savedUUID(memory, xml string) (string, error) {
	saved, err := l.conn.DomainSaveImageGetXMLDesc(memory, 0)
	if err != nil {
		return "", err
	}
	var from, to libvirtxml.Domain
	if err := from.Unmarshal(saved); err != nil {
		return "", err
	}
	if err := to.Unmarshal(xml); err != nil {
		return "", err
	}
	to.UUID = from.UUID
	return to.Marshal()
}

// snapshotKey identifies a switch by its layers.
func snapshotKey(layers map[string]string) string {
	keys := slices.Sorted(maps.Keys(layers))
	for i, k := range keys {
		keys[i] = k + "=" + layers[k]
	}
	return strings.Join(keys, ",")
}
