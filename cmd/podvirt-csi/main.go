// Command podvirt-csi is the CSI driver disk.podvirt.io: VM disks imported from registries and HTTP.
package main

import "github.com/podvirt/podvirt/cmd/internal/pending"

func main() {
	pending.Main("podvirt-csi", "the CSI driver disk.podvirt.io: VM disks imported from registries and HTTP")
}
