// Package install puts the podvirt-l2 CNI plugin into a node's CNI bin dir.
// The container runtime may run the plugin at any moment, so the binary is
// replaced atomically: written to a temporary file in the same directory,
// then renamed over the old one. An invocation sees the old binary or the
// new one, never a half-written file (and a running one keeps its inode).
package install

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/podvirt/podvirt/internal/atomicfile"
)

// PluginName is the plugin's file name in the CNI bin dir, the "type" of
// its network configurations.
const PluginName = "podvirt-l2"

// Plugin installs the binary at src into binDir as PluginName, mode 0755.
// It does nothing when binDir already holds an identical executable, and
// reports whether it wrote.
func Plugin(src, binDir string) (changed bool, err error) {
	return File(src, binDir, PluginName)
}

// File installs src into dir as name, mode 0755, atomically; see Plugin.
func File(src, dir, name string) (changed bool, err error) {
	dst := filepath.Join(dir, name)
	fail := func(format string, a ...any) (bool, error) {
		return false, fmt.Errorf("installing %s as %s: %s", src, dst, fmt.Sprintf(format, a...))
	}
	in, err := os.Open(src)
	if err != nil {
		return fail("%v", err)
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return fail("%v", err)
	}
	if !fi.Mode().IsRegular() {
		return fail("the source is not a regular file (%s)", fi.Mode())
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fail("creating the bin dir: %v", err)
	}

	same, err := identical(in, fi.Size(), dst)
	if err != nil {
		return fail("comparing with the installed file: %v", err)
	}
	if same {
		return false, nil
	}
	if _, err := in.Seek(0, io.SeekStart); err != nil {
		return fail("%v", err)
	}

	if err := atomicfile.WriteFrom(dst, in, 0o755); err != nil {
		return fail("%v", err)
	}
	return true, nil
}

// identical reports whether dst is a regular file of mode 0755 with the
// same size and bytes as src (read from its current offset, size bytes).
func identical(src io.Reader, size int64, dst string) (bool, error) {
	out, err := os.Open(dst)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	defer out.Close()
	fi, err := out.Stat()
	if err != nil {
		return false, err
	}
	if !fi.Mode().IsRegular() || fi.Mode().Perm() != 0o755 || fi.Size() != size {
		return false, nil
	}
	a, b := make([]byte, 64<<10), make([]byte, 64<<10)
	for {
		na, errA := io.ReadFull(src, a)
		nb, errB := io.ReadFull(out, b)
		if na != nb || !bytes.Equal(a[:na], b[:nb]) {
			return false, nil
		}
		endA := errors.Is(errA, io.EOF) || errors.Is(errA, io.ErrUnexpectedEOF)
		endB := errors.Is(errB, io.EOF) || errors.Is(errB, io.ErrUnexpectedEOF)
		if errA != nil && !endA {
			return false, errA
		}
		if errB != nil && !endB {
			return false, errB
		}
		if endA || endB {
			return endA && endB, nil
		}
	}
}
