// Package pending is the entry point of a component whose issue has not
// landed yet. It answers `version` and `help`, and refuses everything else
// with a non-zero exit, so nothing pretends to work.
package pending

import (
	"fmt"
	"io"
	"os"

	"github.com/podvirt/podvirt/cmd/internal/version"
)

// Main runs the placeholder command line for the component name, whose job
// is described by about, and exits.
func Main(name, about string) {
	os.Exit(run(name, about, os.Args[1:], os.Stdout, os.Stderr))
}

func run(name, about string, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		usage(name, about, stderr)
		return 2
	}
	switch args[0] {
	case "version", "--version":
		fmt.Fprintf(stdout, "%s %s\n", name, version.Version)
		return 0
	case "help", "-h", "--help":
		usage(name, about, stdout)
		return 0
	}
	fmt.Fprintf(stderr, "%s: unknown command %q: this component is not implemented yet; run '%s help'\n", name, args[0], name)
	return 2
}

func usage(name, about string, w io.Writer) {
	fmt.Fprintf(w, "%s — %s\n\nNot implemented yet in this build (%s).\n\nCommands:\n  version   print the version\n  help      print this text\n", name, about, version.Version)
}
