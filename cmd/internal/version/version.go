// Package version holds the build's version, set by the Makefile through
// -ldflags "-X github.com/podvirt/podvirt/cmd/internal/version.Version=...".
package version

import (
	"fmt"
	"io"
)

// Version is the podvirt release this binary was built from.
var Version = "dev"

// Asked reports whether args (os.Args[1:]) ask for the version
// ("version" or "--version"), and if so prints "<binary> <version>" to w.
func Asked(w io.Writer, binary string, args []string) bool {
	if len(args) == 0 || (args[0] != "version" && args[0] != "--version") {
		return false
	}
	fmt.Fprintf(w, "%s %s\n", binary, Version)
	return true
}
