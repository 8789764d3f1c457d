// Package libvirtd runs a private libvirt daemon (libvirtd and virtlogd):
// its configuration, socket, state and logs all live under one directory,
// the launcher pod's run dir or a test's temporary directory. With
// Private set it also runs in its own mount namespace with private copies
// bind-mounted over /etc/libvirt, /run/libvirt, /var/lib/libvirt,
// /var/cache/libvirt and /var/log/libvirt, so several daemons share a host
// without seeing each other (needs root; what tests and a node use).
package libvirtd

import (
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Config says where and how to run the daemon.
type Config struct {
	Dir     string // everything of the daemon's lives here
	Private bool   // own mount namespace with private libvirt dirs (root)
	// Log receives libvirtd's and virtlogd's stderr; nil discards it.
	Log *os.File
	// SystemQEMUConf also writes qemu.conf to /etc/libvirt, where a root
	// libvirtd reads it whatever -f says. For a launcher in its container
	// (whose /etc is its own) without Private; never on a shared host.
	SystemQEMUConf bool
}

// Daemon is a running private libvirtd.
type Daemon struct {
	Dir     string
	URI     string // qemu:///system?socket=...
	Socket  string // the socket URI names
	private bool
	cmd     *exec.Cmd
	exited  chan struct{}
	waitErr error
}

// MissingError says which program is missing and where it comes from.
func missing(prog, pkg string) error {
	return fmt.Errorf("%s not found (Debian package %s): run `make deps`", prog, pkg)
}

// CheckInstalled reports whether libvirtd, virtlogd and QEMU are there.
func CheckInstalled() error {
	for prog, pkg := range map[string]string{
		"libvirtd":           "libvirt-daemon-system",
		"virtlogd":           "libvirt-daemon-system",
		"qemu-system-x86_64": "qemu-system-x86",
		"qemu-img":           "qemu-utils",
	} {
		if _, err := exec.LookPath(prog); err != nil {
			return missing(prog, pkg)
		}
	}
	return nil
}

// The private copies, relative to Dir, and what they stand for.
var privateDirs = [][2]string{
	{"etc", "/etc/libvirt"},
	{"run", "/run/libvirt"},
	{"lib", "/var/lib/libvirt"},
	{"cache", "/var/cache/libvirt"},
	{"log", "/var/log/libvirt"},
}

// qemuConf runs QEMU as root without ownership changes (libvirt must not
// chown shared base images), without cgroups (the pod's cgroup bounds
// QEMU already) and without a private mount namespace per QEMU, so an
// unprivileged launcher container (no CAP_SYS_ADMIN) can run it.
const qemuConf = `user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
`

// Start writes the configuration under cfg.Dir, starts virtlogd and
// libvirtd and waits until libvirtd answers on its socket.
func Start(ctx context.Context, cfg Config) (*Daemon, error) {
	if err := CheckInstalled(); err != nil {
		return nil, err
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, err
	}
	for _, d := range privateDirs {
		if err := os.MkdirAll(filepath.Join(dir, d[0]), 0o755); err != nil {
			return nil, err
		}
	}
	etc, run, logDir := filepath.Join(dir, "etc"), filepath.Join(dir, "run"), filepath.Join(dir, "log")
	uuid, err := newUUID()
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(run, "libvirt-sock")
	files := map[string]string{
		"libvirtd.conf": fmt.Sprintf(`unix_sock_dir = %q
unix_sock_group = "root"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
host_uuid = %q
log_outputs = "3:file:%s/libvirtd.log"
`, run, uuid, logDir),
		"virtlogd.conf": fmt.Sprintf("log_outputs = \"3:file:%s/virtlogd.log\"\n", logDir),
		"qemu.conf":     qemuConf,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(etc, name), []byte(data), 0o644); err != nil {
			return nil, err
		}
	}
	if cfg.SystemQEMUConf {
		if err := os.MkdirAll("/etc/libvirt", 0o755); err != nil {
			return nil, fmt.Errorf("libvirt config: %w", err)
		}
		if err := os.WriteFile("/etc/libvirt/qemu.conf", []byte(qemuConf), 0o644); err != nil {
			return nil, fmt.Errorf("libvirt config: %w (the launcher's container needs a writable /etc/libvirt)", err)
		}
	}
	script := `set -e
`
	if cfg.Private {
		for _, d := range privateDirs {
			script += fmt.Sprintf("mkdir -p %s && mount --bind %s %s\n", d[1], filepath.Join(dir, d[0]), d[1])
		}
	}
	script += fmt.Sprintf(`virtlogd -f %[1]s/virtlogd.conf -p %[2]s/virtlogd.pid &
exec libvirtd -f %[1]s/libvirtd.conf -p %[2]s/libvirtd.pid
`, etc, run)
	cmd := exec.Command("/bin/sh", "-c", script)
	cmd.Dir = dir
	cmd.Stdout, cmd.Stderr = cfg.Log, cfg.Log
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if cfg.Private {
		cmd.SysProcAttr.Unshareflags = syscall.CLONE_NEWNS // Go makes / private in the child
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting libvirtd: %w", err)
	}
	d := &Daemon{Dir: dir, URI: "qemu:///system?socket=" + sock, Socket: sock, private: cfg.Private, cmd: cmd, exited: make(chan struct{})}
	go func() {
		d.waitErr = cmd.Wait()
		close(d.exited)
	}()
	if err := d.waitReady(ctx, sock); err != nil {
		_ = d.Stop()
		return nil, err
	}
	return d, nil
}

func (d *Daemon) waitReady(ctx context.Context, sock string) error {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(sock); err == nil {
			if _, err := os.Stat(filepath.Join(d.Dir, "run", "libvirtd.pid")); err == nil {
				return nil
			}
		}
		select {
		case <-d.exited:
			return fmt.Errorf("libvirtd exited at start: %w; log: %s", d.waitErr, d.logTail())
		case <-ctx.Done():
			return fmt.Errorf("libvirtd not ready: %w; log: %s", ctx.Err(), d.logTail())
		case <-tick.C:
		}
	}
}

func (d *Daemon) logTail() string {
	b, _ := os.ReadFile(filepath.Join(d.Dir, "log", "libvirtd.log"))
	if len(b) > 2000 {
		b = b[len(b)-2000:]
	}
	return string(b)
}

// MigrationDir holds a live migration's unix sockets, as libvirtd and QEMU
// see it: the same path in every launcher, private to each (it is under
// /run/libvirt), which a migration over unix sockets needs.
const MigrationDir = "/run/libvirt/podvirt-migration"

// Visible is where this process finds path p of the daemon's view (its
// private copies of the libvirt dirs when Private).
func (d *Daemon) Visible(p string) string {
	if !d.private {
		return p
	}
	for _, pd := range privateDirs {
		if rel, ok := strings.CutPrefix(p, pd[1]); ok && (rel == "" || rel[0] == '/') {
			return filepath.Join(d.Dir, pd[0]) + rel
		}
	}
	return p
}

// Exited is closed when libvirtd has exited.
func (d *Daemon) Exited() <-chan struct{} { return d.exited }

// Stop kills every QEMU the daemon started, then libvirtd and virtlogd,
// and waits for them.
func (d *Daemon) Stop() error {
	var errs []error
	pids, _ := filepath.Glob(filepath.Join(d.Dir, "run", "qemu", "*.pid"))
	for _, p := range pids {
		killPidFile(p, syscall.SIGKILL)
	}
	_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(10 * time.Second):
		_ = syscall.Kill(-d.cmd.Process.Pid, syscall.SIGKILL)
		<-d.exited
	}
	killPidFile(filepath.Join(d.Dir, "run", "virtlogd.pid"), syscall.SIGTERM)
	var ee *exec.ExitError
	if d.waitErr != nil && !errors.As(d.waitErr, &ee) {
		errs = append(errs, d.waitErr)
	}
	return errors.Join(errs...)
}

func killPidFile(path string, sig syscall.Signal) {
	b, err := os.ReadFile(path)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 1 {
		return
	}
	_ = syscall.Kill(pid, sig)
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) && syscall.Kill(pid, 0) == nil {
		time.Sleep(10 * time.Millisecond)
	}
}

func newUUID() (string, error) {
	b := make([]byte, 16)
	if _, err := rand.Read(b); err != nil {
		return "", err
	}
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:]), nil
}
