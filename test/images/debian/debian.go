// Package debian builds a Debian root filesystem for an image from a list of
// packages, without debootstrap or a container engine: the host's apt
// resolves the full dependency closure against an empty status file, `apt-get
// download` fetches the .debs from the archive the host already uses, and
// each is unpacked with `dpkg-deb --fsys-tarfile | tar -x
// --keep-directory-symlink`. No maintainer script runs; what the packages'
// scripts would have done and the image needs (users and groups, the
// dynamic linker cache) is done here.
//
// Root filesystems are cached under <cache>/rootfs/<key>, where key hashes the
// exact package versions and the recipe, so a rebuild with unchanged apt
// lists costs a directory lookup.
package debian

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	"golang.org/x/sync/errgroup"

	"github.com/podvirt/podvirt/internal/atomicfile"
)

// recipe changes whenever the way a root is assembled changes, so that
// cached roots built the old way are not reused.
const recipe = "debian-rootfs-5"

// Spec describes a root filesystem.
type Spec struct {
	// Packages are installed with their Depends and Pre-Depends (no
	// Recommends).
	Packages []string
	// Users and Groups are added to /etc/passwd and /etc/group (root and
	// nobody are always there), as the packages' maintainer scripts would.
	Users  []User
	Groups []Group
	// Remove lists paths (globs, relative to the root) deleted after
	// unpacking, on top of documentation, man pages and locales.
	Remove []string
	// Keep lists paths (globs) kept even when Remove matches them.
	Keep []string
}

// User is a system user.
type User struct {
	Name     string
	UID, GID int
	Home     string
	Groups   []string // supplementary groups
}

// Group is a system group.
type Group struct {
	Name string
	GID  int
}

// RootFS is a built root filesystem.
type RootFS struct {
	// Dir is the root, shared by every caller: treat it as read-only.
	Dir string
	// Key identifies the content: the recipe and every package version.
	Key string
	// Packages are the installed packages as name=version, sorted.
	Packages []string
}

// Build returns the root filesystem for spec, from the cache under
// cacheDir or built there.
func Build(ctx context.Context, cacheDir string, spec Spec) (*RootFS, error) {
	for _, tool := range []string{"apt-get", "dpkg-deb", "tar", "ldconfig"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("debian rootfs: %s is not installed (Debian packages apt, dpkg, tar, libc-bin): run 'make deps'", tool)
		}
	}
	base := filepath.Join(cacheDir, "rootfs")
	if err := os.MkdirAll(filepath.Join(base, "resolved"), 0o755); err != nil {
		return nil, err
	}
	pkgs, err := resolve(ctx, base, spec)
	if err != nil {
		return nil, err
	}
	specJSON, _ := json.Marshal(spec)
	sum := sha256.Sum256([]byte(recipe + "\n" + string(specJSON) + "\n" + strings.Join(pkgs, "\n")))
	key := hex.EncodeToString(sum[:8])
	root := &RootFS{Dir: filepath.Join(base, key), Key: key, Packages: pkgs}
	if _, err := os.Stat(root.Dir); err == nil {
		return root, nil
	}
	// Another process (a second test binary, `make images`) may be building
	// the same root: one builds, the other waits and finds it.
	unlock, err := lock(root.Dir + ".lock")
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(root.Dir); err == nil {
		return root, nil
	}
	tmp := root.Dir + ".tmp"
	if err := os.RemoveAll(tmp); err != nil {
		return nil, err
	}
	if err := assemble(ctx, filepath.Join(cacheDir, "debs"), tmp, pkgs, spec); err != nil {
		_ = os.RemoveAll(tmp)
		return nil, fmt.Errorf("debian rootfs %s: %w", key, err)
	}
	if err := os.Rename(tmp, root.Dir); err != nil {
		return nil, err
	}
	return root, nil
}

// resolve lists name=version of every package spec needs. The answer is
// cached by the requested packages and the state of the host's apt lists:
// apt's solver takes seconds, and nothing changes until `apt-get update`.
func resolve(ctx context.Context, base string, spec Spec) ([]string, error) {
	lists, err := aptListsState()
	if err != nil {
		return nil, err
	}
	sum := sha256.Sum256([]byte(recipe + "\n" + strings.Join(spec.Packages, " ") + "\n" + lists))
	cached := filepath.Join(base, "resolved", hex.EncodeToString(sum[:8]))
	if b, err := os.ReadFile(cached); err == nil {
		return strings.Fields(string(b)), nil
	}
	empty := filepath.Join(base, "resolved", "empty-status")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		return nil, err
	}
	args := []string{"-s", "-o", "Dir::State::status=" + empty, "-o", "Debug::NoLocking=1",
		"install", "--no-install-recommends"}
	out, err := exec.CommandContext(ctx, "apt-get", append(args, spec.Packages...)...).CombinedOutput()
	if err != nil {
		return nil, fmt.Errorf("resolve Debian packages %v with apt-get: %w: %s (run 'apt-get update' / 'make deps')",
			spec.Packages, err, lastLines(out))
	}
	var pkgs []string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		// Inst libc6 (2.36-9+deb12u14 Debian:12.15/oldstable [amd64]) []
		f := strings.Fields(sc.Text())
		if len(f) >= 3 && f[0] == "Inst" && strings.HasPrefix(f[2], "(") {
			pkgs = append(pkgs, f[1]+"="+strings.TrimPrefix(f[2], "("))
		}
	}
	if len(pkgs) == 0 {
		return nil, fmt.Errorf("resolve Debian packages %v: apt-get planned no installs: %s", spec.Packages, lastLines(out))
	}
	slices.Sort(pkgs)
	if err := atomicfile.Write(cached, []byte(strings.Join(pkgs, "\n")+"\n"), 0o644); err != nil {
		return nil, err
	}
	return pkgs, nil
}

// aptListsState fingerprints the host's package lists by name, size and
// modification time.
func aptListsState() (string, error) {
	lists, err := filepath.Glob("/var/lib/apt/lists/*_Packages*")
	if err != nil {
		return "", err
	}
	if len(lists) == 0 {
		return "", fmt.Errorf("debian rootfs: the host has no apt package lists: run 'apt-get update' (or 'make deps')")
	}
	var b strings.Builder
	for _, l := range lists {
		info, err := os.Stat(l)
		if err != nil {
			return "", err
		}
		fmt.Fprintf(&b, "%s %d %d\n", l, info.Size(), info.ModTime().UnixNano())
	}
	return b.String(), nil
}

// assemble downloads (into the shared debs dir) and unpacks pkgs into dir.
func assemble(ctx context.Context, debs, dir string, pkgs []string, spec Spec) error {
	files, err := download(ctx, debs, pkgs)
	if err != nil {
		return err
	}
	// Debian bookworm is merged-/usr, but packages still ship /bin, /lib
	// and /sbin paths: make those symlinks first and keep them while
	// unpacking.
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib", "usr/lib64", "etc", "tmp", "run", "var/tmp", "var/log", "proc", "sys", "dev"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(dir, l)); err != nil {
			return err
		}
	}
	for _, d := range []string{"tmp", "var/tmp"} {
		if err := os.Chmod(filepath.Join(dir, d), 0o777|os.ModeSticky); err != nil {
			return err
		}
	}
	// Unpacking in parallel is safe: packages do not share files, and a
	// directory both create is made by whichever comes first.
	var g errgroup.Group
	g.SetLimit(4)
	for _, f := range files {
		g.Go(func() error { return unpack(ctx, f, dir) })
	}
	if err := g.Wait(); err != nil {
		return err
	}
	if err := writeAccounts(dir, spec); err != nil {
		return err
	}
	if err := strip(dir, spec); err != nil {
		return err
	}
	if err := writeCABundle(dir); err != nil {
		return err
	}
	if out, err := exec.CommandContext(ctx, "ldconfig", "-r", dir).CombinedOutput(); err != nil {
		return fmt.Errorf("ldconfig -r %s: %w: %s", dir, err, lastLines(out))
	}
	return nil
}

// download fetches every name=version into debs (kept between builds:
// a .deb's file name states its version) and returns their paths.
func download(ctx context.Context, debs string, pkgs []string) ([]string, error) {
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return nil, err
	}
	have, err := downloaded(debs)
	if err != nil {
		return nil, err
	}
	var missing []string
	for _, p := range pkgs {
		if _, ok := have[p]; !ok {
			missing = append(missing, p)
		}
	}
	if len(missing) > 0 {
		cmd := exec.CommandContext(ctx, "apt-get", append([]string{"download", "-q"}, missing...)...)
		cmd.Dir = debs
		if out, err := cmd.CombinedOutput(); err != nil {
			return nil, fmt.Errorf("apt-get download of %d packages into %s: %w: %s (run 'apt-get update')", len(missing), debs, err, lastLines(out))
		}
		if have, err = downloaded(debs); err != nil {
			return nil, err
		}
	}
	files := make([]string, 0, len(pkgs))
	for _, p := range pkgs {
		f, ok := have[p]
		if !ok {
			return nil, fmt.Errorf("apt-get download left no .deb for %s in %s", p, debs)
		}
		files = append(files, f)
	}
	return files, nil
}

// downloaded maps name=version to the .deb files in debs.
func downloaded(debs string) (map[string]string, error) {
	entries, err := os.ReadDir(debs)
	if err != nil {
		return nil, err
	}
	have := map[string]string{}
	for _, e := range entries {
		if name, ok := strings.CutSuffix(e.Name(), ".deb"); ok {
			// name_version_arch, with ':' in the version escaped as %3a
			if f := strings.Split(name, "_"); len(f) == 3 {
				have[f[0]+"="+strings.ReplaceAll(f[1], "%3a", ":")] = filepath.Join(debs, e.Name())
			}
		}
	}
	return have, nil
}

func unpack(ctx context.Context, deb, dir string) error {
	cmd := exec.CommandContext(ctx, "sh", "-c", `dpkg-deb --fsys-tarfile "$1" | tar -x --keep-directory-symlink --no-same-owner -C "$2"`, "sh", deb, dir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("unpack %s: %w: %s", filepath.Base(deb), err, lastLines(out))
	}
	return nil
}

// writeAccounts writes /etc/passwd, /etc/group and /etc/shadow with root,
// nobody and spec's users and groups.
func writeAccounts(dir string, spec Spec) error {
	passwd := "root:x:0:0:root:/root:/bin/sh\n" //nolint:gosec // account lines, not credentials
	shadow := "root:*:19000:0:99999:7:::\n"
	group := "root:x:0:\n"
	for _, g := range spec.Groups {
		var members []string
		for _, u := range spec.Users {
			if u.GID == g.GID || slices.Contains(u.Groups, g.Name) {
				members = append(members, u.Name)
			}
		}
		group += fmt.Sprintf("%s:x:%d:%s\n", g.Name, g.GID, strings.Join(members, ","))
	}
	group += "nogroup:x:65534:\n"
	for _, u := range spec.Users {
		home := u.Home
		if home == "" {
			home = "/nonexistent"
		}
		passwd += fmt.Sprintf("%s:x:%d:%d::%s:/usr/sbin/nologin\n", u.Name, u.UID, u.GID, home)
		shadow += u.Name + ":*:19000:0:99999:7:::\n"
	}
	passwd += "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n" //nolint:gosec // account lines, not credentials
	for name, data := range map[string]string{"passwd": passwd, "group": group, "shadow": shadow} {
		mode := fs.FileMode(0o644)
		if name == "shadow" {
			mode = 0o640
		}
		if err := os.WriteFile(filepath.Join(dir, "etc", name), []byte(data), mode); err != nil {
			return err
		}
	}
	return os.MkdirAll(filepath.Join(dir, "root"), 0o700)
}

// alwaysRemoved is what no image needs: documentation, manuals, translations,
// and the package manager's own state (there is none: no dpkg database).
var alwaysRemoved = []string{
	"usr/share/doc", "usr/share/man", "usr/share/info", "usr/share/locale", "usr/share/lintian",
	"usr/share/bug", "usr/share/bash-completion", "usr/share/zsh", "usr/share/fish",
	"var/cache/*", "var/lib/apt", "var/lib/dpkg",
}

func strip(dir string, spec Spec) error {
	var errs []error
	for _, pattern := range append(slices.Clone(alwaysRemoved), spec.Remove...) {
		matches, err := filepath.Glob(filepath.Join(dir, pattern))
		if err != nil {
			return fmt.Errorf("remove pattern %q: %w", pattern, err)
		}
		for _, m := range matches {
			if !kept(dir, m, spec.Keep) {
				errs = append(errs, os.RemoveAll(m))
			}
		}
	}
	return errors.Join(errs...)
}

func kept(dir, path string, keep []string) bool {
	rel, err := filepath.Rel(dir, path)
	if err != nil {
		return false
	}
	for _, k := range keep {
		if ok, _ := filepath.Match(k, rel); ok {
			return true
		}
	}
	return false
}

// writeCABundle does what ca-certificates' maintainer script does for
// programs that read one bundle (Go's crypto/x509 among them): concatenate
// every certificate the package ships into /etc/ssl/certs/ca-certificates.crt.
func writeCABundle(dir string) error {
	certs, err := filepath.Glob(filepath.Join(dir, "usr/share/ca-certificates/*/*.crt"))
	if err != nil || len(certs) == 0 {
		return err
	}
	slices.Sort(certs)
	var bundle bytes.Buffer
	for _, c := range certs {
		b, err := os.ReadFile(c)
		if err != nil {
			return err
		}
		bundle.Write(bytes.TrimSpace(b))
		bundle.WriteByte('\n')
	}
	if err := os.MkdirAll(filepath.Join(dir, "etc/ssl/certs"), 0o755); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "etc/ssl/certs/ca-certificates.crt"), bundle.Bytes(), 0o644)
}

// lock takes an exclusive flock on path, waiting for it.
func lock(path string) (unlock func(), err error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, err
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		f.Close()
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	return func() { f.Close() }, nil
}

func lastLines(b []byte) string {
	const n = 5
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
