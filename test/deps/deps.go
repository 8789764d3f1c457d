// Package deps finds the tools that test/deps/deps.sh installs, so tests and
// the local cluster use exactly the pinned versions, and fail with an error
// that says to run `make deps` when something is missing.
package deps

import (
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

//go:embed versions.env
var versionsFile string

// Version returns the pinned version of tool ("kubernetes", "cni-plugins", …)
// from versions.env, or "" when the tool is not pinned there.
func Version(tool string) string {
	key := strings.ToUpper(strings.ReplaceAll(tool, "-", "_")) + "_VERSION="
	for line := range strings.Lines(versionsFile) {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), key); ok {
			return v
		}
	}
	return ""
}

// Cache is the directory everything is cached under: $PODVIRT_CACHE, or
// ~/.cache/podvirt.
func Cache() string {
	if dir := os.Getenv("PODVIRT_CACHE"); dir != "" {
		return dir
	}
	home, err := os.UserHomeDir()
	if err != nil {
		home = "/root"
	}
	return filepath.Join(home, ".cache", "podvirt")
}

// Binary returns the path of binary built as part of tool at its pinned
// version, e.g. Binary("kubernetes", "kube-apiserver").
func Binary(tool, binary string) (string, error) {
	v := Version(tool)
	if v == "" {
		return "", fmt.Errorf("tool %q has no pinned version in test/deps/versions.env", tool)
	}
	path := filepath.Join(Cache(), "bin", tool+"-"+v, binary)
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s %s (%s) is not installed at %s: run 'make deps'", tool, v, binary, path)
	}
	return path, nil
}

// CRDs returns the CustomResourceDefinition manifests deps.sh copies next
// to tool's binaries (whereabouts' IPPool and friends), sorted.
func CRDs(tool string) ([]string, error) {
	v := Version(tool)
	if v == "" {
		return nil, fmt.Errorf("tool %q has no pinned version in test/deps/versions.env", tool)
	}
	dir := filepath.Join(Cache(), "bin", tool+"-"+v)
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil || len(files) == 0 {
		return nil, fmt.Errorf("%s %s has no CRDs in %s: run 'make deps'", tool, v, dir)
	}
	return files, nil
}

// System returns the path of a program installed from Debian packages by
// `make deps`.
func System(program string) (string, error) {
	path, err := exec.LookPath(program)
	if err != nil {
		return "", fmt.Errorf("%s is not installed: run 'make deps'", program)
	}
	return path, nil
}

// File returns path when it exists, or an error naming `make deps`.
func File(path string) (string, error) {
	if _, err := os.Stat(path); err != nil {
		return "", fmt.Errorf("%s is missing: run 'make deps'", path)
	}
	return path, nil
}
