package converter

import (
	"fmt"
	"path/filepath"

	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// ContainerDiskFile is the disk inside a containerDisk image.
const ContainerDiskFile = "disk/disk.qcow2"

// DefaultDiskSource is where the pod has volume vol's disk when the
// launcher says nothing else: a PVC's disk.img (raw), a containerDisk's
// qcow2 under the disk dir.
func DefaultDiskSource(vol *v1.Volume, opts Options) (DiskSource, error) {
	switch {
	case vol.PersistentVolumeClaim != nil:
		return DiskSource{Path: v1.FilesystemDiskPath(vol.Name), Format: diskmeta.FormatRaw}, nil
	case vol.ContainerDisk != nil:
		return DiskSource{Path: filepath.Join(v1.DiskDir, vol.Name, ContainerDiskFile), Format: diskmeta.FormatQCOW2}, nil
	case vol.CloudInitNoCloud != nil:
		if opts.CloudInitDisk == "" {
			return DiskSource{}, fmt.Errorf("volume %q: no cloud-init disk was built", vol.Name)
		}
		return DiskSource{Path: opts.CloudInitDisk, Format: diskmeta.FormatRaw}, nil
	}
	return DiskSource{}, fmt.Errorf("volume %q has no source", vol.Name)
}

// convertDisks attaches every disk of the VMI, each with the volume of
// the same name, in order, with its declared format.
func convertDisks(dom *libvirtxml.Domain, vmi *v1.VirtualMachineInstance, opts Options) error {
	vols := map[string]*v1.Volume{}
	for i := range vmi.Spec.Volumes {
		vols[vmi.Spec.Volumes[i].Name] = &vmi.Spec.Volumes[i]
	}
	next := map[string]int{} // target prefix → next index
	scsi := false
	for _, d := range vmi.Spec.Domain.Devices.Disks {
		vol := vols[d.Name]
		if vol == nil {
			return fmt.Errorf("disk %q has no volume of that name", d.Name)
		}
		src, ok := opts.Disks[d.Name]
		if !ok {
			var err error
			if src, err = DefaultDiskSource(vol, opts); err != nil {
				return err
			}
		}
		if src.Format != diskmeta.FormatRaw && src.Format != diskmeta.FormatQCOW2 {
			return fmt.Errorf("disk %q: format %q: must be %q or %q", d.Name, src.Format, diskmeta.FormatRaw, diskmeta.FormatQCOW2)
		}
		bus := d.Bus
		if bus == "" {
			bus = v1.DiskBusVirtio
		}
		prefix := "sd"
		switch bus {
		case v1.DiskBusVirtio:
			prefix = "vd"
		case v1.DiskBusSCSI:
			scsi = true
		case v1.DiskBusSATA:
		default:
			return fmt.Errorf("disk %q: bus %q: must be virtio, sata or scsi", d.Name, bus)
		}
		disk := libvirtxml.DomainDisk{
			Device: "disk",
			Driver: &libvirtxml.DomainDiskDriver{Name: "qemu", Type: src.Format, Discard: "unmap"},
			Target: &libvirtxml.DomainDiskTarget{Dev: prefix + diskLetters(next[prefix]), Bus: string(bus)},
			Alias:  &libvirtxml.DomainAlias{Name: "ua-" + d.Name},
			Serial: d.Serial,
		}
		next[prefix]++
		if src.Block {
			disk.Source = &libvirtxml.DomainDiskSource{Block: &libvirtxml.DomainDiskSourceBlock{Dev: src.Path}}
		} else {
			disk.Source = &libvirtxml.DomainDiskSource{File: &libvirtxml.DomainDiskSourceFile{File: src.Path}}
		}
		if d.ReadOnly || vol.CloudInitNoCloud != nil || (vol.PersistentVolumeClaim != nil && vol.PersistentVolumeClaim.ReadOnly) {
			disk.ReadOnly = &libvirtxml.DomainDiskReadOnly{}
		}
		if d.BootOrder != nil {
			disk.Boot = &libvirtxml.DomainDeviceBoot{Order: *d.BootOrder}
		}
		dom.Devices.Disks = append(dom.Devices.Disks, disk)
	}
	if scsi {
		dom.Devices.Controllers = append(dom.Devices.Controllers, libvirtxml.DomainController{Type: "scsi", Model: "virtio-scsi"})
	}
	return nil
}

// diskLetters is the suffix of the i-th disk: a … z, aa, ab, …
func diskLetters(i int) string {
	s := ""
	for i++; i > 0; i = (i - 1) / 26 {
		s = string(rune('a'+(i-1)%26)) + s
	}
	return s
}
