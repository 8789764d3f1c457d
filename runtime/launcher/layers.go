package launcher

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"slices"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// baseImage is the base of a volume's chain (csi/volume).
const baseImage = "base.img"

// pullLayers merges the snapshot layers (contracts/diskmeta Layers) of the
// listed disks into the top of their chains, while the guest runs: a live
// migration copies only the top, onto the same base on the target, so the
// layers in between must not stay behind. The base is kept; a disk with no
// base is pulled whole. Disks without layers are left alone. The layers
// themselves stay where they are, for the snapshots that share them.
func (l *Launcher) pullLayers(ctx context.Context, d *libvirt.Domain, devs []string) error {
	dom, err := liveDefinition(d)
	if err != nil {
		return err
	}
	if dom.Devices == nil {
		return nil
	}
	for _, disk := range dom.Devices.Disks {
		if disk.Target == nil || !slices.Contains(devs, disk.Target.Dev) {
			continue
		}
		base, layered := layersBase(disk.BackingStore)
		if !layered {
			continue
		}
		dev := disk.Target.Dev
		var flags libvirt.DomainBlockRebaseFlags
		if base != "" {
			flags = libvirt.DOMAIN_BLOCK_REBASE_RELATIVE
		}
		slog.Info("merging snapshot layers into the disk before it moves", "domain", l.name, "disk", dev, "base", base)
		if err := d.BlockRebase(dev, base, 0, flags); err != nil {
			return fmt.Errorf("disk %s: merge its snapshot layers: %w", dev, err)
		}
		if err := waitBlockJob(ctx, d, dev); err != nil {
			_ = d.BlockJobAbort(dev, 0)
			return fmt.Errorf("disk %s: merge its snapshot layers: %w", dev, err)
		}
	}
	return nil
}

// layersBase walks a disk's backing chain: layered when it holds an image
// other than the base (base.img, the image the volume was made from, which
// the target has too: csi/volume); base is the base's path ("" when the
// disk has none).
func layersBase(bs *libvirtxml.DomainDiskBackingStore) (base string, layered bool) {
	for ; bs != nil; bs = bs.BackingStore {
		if bs.Source == nil || bs.Source.File == nil {
			continue
		}
		if filepath.Base(bs.Source.File.File) == baseImage {
			base = bs.Source.File.File
			continue
		}
		layered = true
	}
	return base, layered
}

// waitBlockJob waits for the block job on dev to finish.
func waitBlockJob(ctx context.Context, d *libvirt.Domain, dev string) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := d.GetBlockJobInfo(dev, 0)
		if err != nil {
			return err
		}
		if info.Type == 0 { // no job: it completed
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
