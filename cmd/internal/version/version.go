// Package version holds the build's version, set by the Makefile through
// -ldflags "-X github.com/podvirt/podvirt/cmd/internal/version.Version=...".
package version

// Version is the podvirt release this binary was built from.
var Version = "dev"
