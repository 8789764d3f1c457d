package cluster

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
)

const cgroupFS = "/sys/fs/cgroup"

// cgroupHierarchies lists the mounted cgroup hierarchies: every v1
// controller (and named/unified hierarchy) on a v1 or hybrid host, or the
// single v2 tree.
func cgroupHierarchies() []string {
	if _, err := os.Stat(filepath.Join(cgroupFS, "cgroup.controllers")); err == nil {
		return []string{cgroupFS}
	}
	entries, _ := os.ReadDir(cgroupFS)
	var dirs []string
	for _, e := range entries {
		dir := filepath.Join(cgroupFS, e.Name())
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err == nil {
			dirs = append(dirs, dir)
		}
	}
	return dirs
}

// createCgroupRoot makes /<name> in every hierarchy: the kubelet's
// cgroupRoot, which it requires to exist, and which keeps this cluster's
// pods apart from any other cluster's.
func createCgroupRoot(name string) error {
	for _, h := range cgroupHierarchies() {
		dir := filepath.Join(h, name)
		if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("create cgroup %s: %w", dir, err)
		}
		// A new cpuset cgroup starts with no CPUs or memory nodes, and no
		// task can join it until they are set.
		for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
			if b, err := os.ReadFile(filepath.Join(h, f)); err == nil {
				_ = os.WriteFile(filepath.Join(dir, f), b, 0o644)
			}
		}
	}
	return nil
}

// cgroupRootPids lists every process in /<name> or below, in any hierarchy.
func cgroupRootPids(name string) []int {
	var pids []int
	for _, h := range cgroupHierarchies() {
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d fs.DirEntry, err error) error {
			if err != nil || !d.IsDir() {
				return nil
			}
			b, _ := os.ReadFile(filepath.Join(path, "cgroup.procs"))
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && !slices.Contains(pids, pid) {
					pids = append(pids, pid)
				}
			}
			return nil
		})
	}
	return pids
}

// removeCgroupRoot removes /<name> and every cgroup below it, deepest first.
func removeCgroupRoot(name string) error {
	var errs []error
	for _, h := range cgroupHierarchies() {
		var dirs []string
		_ = filepath.WalkDir(filepath.Join(h, name), func(path string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		for _, dir := range slices.Backward(dirs) {
			if err := os.Remove(dir); err != nil && !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove cgroup %s: %w", dir, err))
			}
		}
	}
	return errors.Join(errs...)
}

// cgroupRootExists reports the hierarchies that still have /<name>.
func cgroupRootExists(name string) []string {
	var left []string
	for _, h := range cgroupHierarchies() {
		if _, err := os.Stat(filepath.Join(h, name)); err == nil {
			left = append(left, filepath.Join(h, name))
		}
	}
	return left
}
