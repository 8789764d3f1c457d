// Command podvirt-l2 is the podvirt CNI plugin: it puts pod and VM NICs on a
// shared L2 segment in macvlan or bridge mode. See package cni.
package main

import (
	"runtime"

	"github.com/containernetworking/cni/pkg/skel"

	"github.com/podvirt/podvirt/cmd/internal/version"
	"github.com/podvirt/podvirt/cni"
)

func init() {
	// Netns switches apply to one OS thread: keep main on the main thread.
	runtime.LockOSThread()
}

func main() {
	skel.PluginMainFuncs(cni.Funcs(), cni.SupportedVersions, "CNI plugin podvirt-l2 "+version.Version)
}
