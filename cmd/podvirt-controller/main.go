// Command podvirt-controller turns VirtualMachines into VirtualMachineInstances and launcher pods.
package main

import "github.com/podvirt/podvirt/cmd/internal/pending"

func main() {
	pending.Main("podvirt-controller", "turns VirtualMachines into VirtualMachineInstances and launcher pods")
}
