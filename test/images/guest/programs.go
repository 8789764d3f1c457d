package guest

import (
	"debug/elf"
	"fmt"
	"os"
	"path/filepath"
	"sort"
)

// hostPrograms are the host's own Debian binaries the guest runs (an ssh
// server, QEMU's guest agent), with the package each comes from. They are
// dynamically linked: the guest gets the host's copies of the libraries
// they need, which match them since both come from the same release.
var hostPrograms = []struct{ path, pkg string }{
	{"/usr/sbin/dropbear", "dropbear-bin"},
	{"/usr/sbin/qemu-ga", "qemu-guest-agent"},
}

// libraryDirs is where the host's dynamic linker finds libraries.
var libraryDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib64", "/usr/lib64"}

// hostProgramFiles is every file the guest needs to run hostPrograms: the
// programs, their interpreter and the libraries they load, transitively.
func hostProgramFiles() ([]string, error) {
	seen := map[string]bool{}
	var walk func(path string) error
	walk = func(path string) error {
		if seen[path] {
			return nil
		}
		seen[path] = true
		f, err := elf.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type != elf.PT_INTERP {
				continue
			}
			b := make([]byte, p.Filesz)
			if _, err := p.ReadAt(b, 0); err != nil {
				return fmt.Errorf("%s: interpreter: %w", path, err)
			}
			seen[string(b[:len(b)-1])] = true // NUL-terminated
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("%s: %w", path, err)
		}
		for _, lib := range libs {
			found, err := findLibrary(lib)
			if err != nil {
				return fmt.Errorf("%s needs %w", path, err)
			}
			if err := walk(found); err != nil {
				return err
			}
		}
		return nil
	}
	for _, p := range hostPrograms {
		if err := walk(p.path); err != nil {
			return nil, err
		}
	}
	files := make([]string, 0, len(seen))
	for f := range seen {
		files = append(files, f)
	}
	sort.Strings(files)
	return files, nil
}

func findLibrary(name string) (string, error) {
	for _, d := range libraryDirs {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s, which is in none of %v: run `make deps`", name, libraryDirs)
}

// copyHostPrograms puts files (hostProgramFiles) into the guest's root at
// their host paths, symlinks resolved.
func copyHostPrograms(root string, files []string) error {
	for _, f := range files {
		info, err := os.Stat(f)
		if err != nil {
			return err
		}
		dst := filepath.Join(root, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			return err
		}
		if err := copyFile(f, dst, info.Mode().Perm()); err != nil {
			return err
		}
	}
	return nil
}
