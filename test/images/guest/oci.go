package guest

import (
	"fmt"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"github.com/podvirt/podvirt/test/images/oci"
)

// ContainerDiskPath is where a containerDisk image holds its disk.
const ContainerDiskPath = "disk/disk.qcow2"

// WriteContainerDisk writes the guest's disk as a containerDisk OCI image
// (the qcow2 at /disk/disk.qcow2, nothing else) in an OCI image-layout tar
// at path, tagged ref.
func WriteContainerDisk(art Artifacts, ref, path string) error {
	img, err := ContainerDisk(art)
	if err != nil {
		return fmt.Errorf("containerDisk %s: %w", ref, err)
	}
	return oci.WriteOCITar(img, ref, path)
}

// ContainerDisk is the guest's disk as a containerDisk image, to push to a
// registry.
func ContainerDisk(art Artifacts) (v1.Image, error) {
	return oci.Build(oci.Spec{
		Ref:   "podvirt.local/guest:containerdisk",
		Files: []oci.File{{Path: ContainerDiskPath, Source: art.Disk, Mode: 0o444}},
	})
}
