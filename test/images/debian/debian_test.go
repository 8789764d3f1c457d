package debian

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestBuildRunsInChroot builds a small root from the host's apt archive
// (dash and what it depends on), runs its shell through chroot, and checks
// the accounts, the stripping and the cache.
func TestBuildRunsInChroot(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cache := t.TempDir()
	spec := Spec{
		Packages: []string{"dash"},
		Groups:   []Group{{Name: "kvm", GID: 36}},
		Users:    []User{{Name: "svc", UID: 1234, GID: 36, Groups: []string{"kvm"}}},
		Remove:   []string{"usr/share/debianutils", "usr/bin/which*"},
		Keep:     []string{"usr/bin/which.debianutils"},
	}
	root, err := Build(ctx, cache, spec)
	if err != nil {
		t.Fatal(err)
	}
	if len(root.Packages) < 2 || !hasPackage(root, "dash") {
		t.Errorf("packages = %v, want dash and its dependencies", root.Packages)
	}
	out, err := exec.CommandContext(ctx, "chroot", root.Dir, "/bin/sh", "-c", "echo hello from $0").CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "hello from /bin/sh" {
		t.Fatalf("chroot %s /bin/sh: %v: %q", root.Dir, err, out)
	}
	passwd, _ := os.ReadFile(filepath.Join(root.Dir, "etc/passwd"))
	group, _ := os.ReadFile(filepath.Join(root.Dir, "etc/group"))
	if !strings.Contains(string(passwd), "svc:x:1234:36:") || !strings.Contains(string(group), "kvm:x:36:svc") {
		t.Errorf("accounts: passwd\n%s\ngroup\n%s", passwd, group)
	}
	for _, gone := range []string{"usr/share/doc", "usr/share/man", "usr/share/debianutils", "usr/bin/which"} {
		if _, err := os.Lstat(filepath.Join(root.Dir, gone)); err == nil {
			t.Errorf("%s was not removed", gone)
		}
	}
	if _, err := os.Stat(filepath.Join(root.Dir, "usr/bin/which.debianutils")); err != nil && hasPackage(root, "debianutils") {
		t.Errorf("kept path was removed: %v", err)
	}
	if _, err := os.Stat(filepath.Join(root.Dir, "etc/ld.so.cache")); err != nil {
		t.Errorf("no dynamic linker cache: %v", err)
	}
	if info, err := os.Stat(filepath.Join(root.Dir, "tmp")); err != nil || info.Mode().Perm() != 0o777 || info.Mode()&os.ModeSticky == 0 {
		t.Errorf("/tmp mode: %v %v", info.Mode(), err)
	}

	// Built again: the same root, from the cache (the directory untouched:
	// checked by identity, not by timing, so a loaded machine passes too).
	before, err := os.Stat(root.Dir)
	if err != nil {
		t.Fatal(err)
	}
	again, err := Build(ctx, cache, spec)
	if err != nil {
		t.Fatal(err)
	}
	if again.Dir != root.Dir || again.Key != root.Key {
		t.Errorf("second Build = %s, first %s", again.Dir, root.Dir)
	}
	if after, err := os.Stat(again.Dir); err != nil || !os.SameFile(before, after) || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second Build made %s anew (stat: %v), want the cached root", again.Dir, err)
	}
	// A different spec is a different root.
	spec.Users[0].UID = 1235
	other, err := Build(ctx, cache, spec)
	if err != nil {
		t.Fatal(err)
	}
	if other.Key == root.Key {
		t.Errorf("a different spec reused root %s", root.Key)
	}
}

func TestBuildUnknownPackage(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, err := Build(ctx, t.TempDir(), Spec{Packages: []string{"no-such-package-podvirt"}})
	if err == nil || !strings.Contains(err.Error(), "no-such-package-podvirt") {
		t.Fatalf("Build with an unknown package: err = %v, want one naming it", err)
	}
}

func hasPackage(r *RootFS, name string) bool {
	for _, p := range r.Packages {
		if strings.HasPrefix(p, name+"=") {
			return true
		}
	}
	return false
}
