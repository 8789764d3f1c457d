// Command podvirt-launcher runs one VM's QEMU through libvirt inside its launcher pod.
package main

import "github.com/podvirt/podvirt/cmd/internal/pending"

func main() { pending.Main("podvirt-launcher", "runs one VM's QEMU through libvirt inside its launcher pod") }
