// Command podvirtctl starts, stops and reaches VMs (also usable as kubectl virt).
package main

import "github.com/podvirt/podvirt/cmd/internal/pending"

func main() {
	pending.Main("podvirtctl", "starts, stops and reaches VMs (also usable as kubectl virt)")
}
