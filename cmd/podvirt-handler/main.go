// Command podvirt-handler is the node daemon that keeps each VMI's domain and the cluster in sync.
package main

import "github.com/podvirt/podvirt/cmd/internal/pending"

func main() {
	pending.Main("podvirt-handler", "the node daemon: keeps each VMI's domain and the cluster in sync")
}
