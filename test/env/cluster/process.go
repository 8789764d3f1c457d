package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/podvirt/podvirt/test/harness/pidproc"
)

// process is a long-running component the cluster starts and stops by pid.
type process struct {
	name string // pids/<name>.pid, logs/<name>.log
	path string // the component's binary: what the recorded pid runs
	// launcher, when set, is run instead of path with args; it must end
	// by exec'ing path in place (see inNodeNamespace).
	launcher string
	args     []string
	env      []string
}

// start runs p detached from the caller (its own session, output to its
// log), unless the pid recorded for it is still that program.
func (c *Cluster) start(p process) error {
	if pid, ok := c.running(p.name, p.path); ok {
		c.progress("%s already running (pid %d)", p.name, pid)
		return nil
	}
	logFile, err := os.OpenFile(c.path("logs", p.name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	defer logFile.Close()
	bin := p.path
	if p.launcher != "" {
		bin = p.launcher
	}
	cmd := exec.Command(bin, p.args...)
	cmd.Env = append(os.Environ(), p.env...)
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.Dir = c.cfg.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	pid := cmd.Process.Pid
	// Not waited on: the process outlives this one (make up returns).
	_ = cmd.Process.Release()
	return pidproc.Write(c.path("pids", p.name+".pid"), pid)
}

// running reports the recorded pid of the named process when that pid is
// alive and still runs the program at path.
func (c *Cluster) running(name, path string) (int, bool) {
	return pidproc.Recorded(c.path("pids", name+".pid"), path)
}

// recordedAlive reports whether the pid recorded for name is alive,
// whatever it runs.
func (c *Cluster) recordedAlive(name string) bool {
	b, err := os.ReadFile(c.path("pids", name+".pid"))
	if err != nil {
		return false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return err == nil && pidproc.Alive(pid)
}

// stop ends the named process: SIGTERM, then SIGKILL after grace.
func (c *Cluster) stop(name, path string, grace time.Duration) error {
	if pid, ok := c.running(name, path); ok {
		if err := pidproc.Stop(pid, syscall.SIGTERM, grace); err != nil {
			return fmt.Errorf("%s: %w", name, err)
		}
	}
	err := os.Remove(c.path("pids", name+".pid"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	return err
}

// permanentError marks a condition's error as final: waitFor stops polling.
type permanentError struct{ error }

func (e permanentError) Unwrap() error { return e.error }

// waitFor polls cond until it returns true, returns a permanentError, or the
// timeout passes. When it gives up, the error quotes the tail of the named
// component's log, which is where the reason usually is.
func (c *Cluster) waitFor(ctx context.Context, what, logName string, timeout time.Duration, cond func(context.Context) (bool, error)) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for {
		ok, err := cond(ctx)
		if ok {
			return nil
		}
		var perm permanentError
		if errors.As(err, &perm) {
			return perm.error
		}
		if err != nil {
			last = err
		}
		select {
		case <-ctx.Done():
			msg := fmt.Sprintf("%s: not ready after %s", what, timeout)
			if last != nil {
				msg += fmt.Sprintf(" (last error: %v)", last)
			}
			if logName != "" {
				msg += fmt.Sprintf("; log %s ends with:\n%s", c.path("logs", logName+".log"), tail(c.path("logs", logName+".log"), 15))
			}
			return errors.New(msg)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return "(no log: " + err.Error() + ")"
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// processesUnder lists live pids whose command line mentions dir: the
// containerd shims and anything else started with our state paths.
func processesUnder(dir string) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	self := os.Getpid()
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !bytes.Contains(cmdline, []byte(dir)) || !pidproc.Alive(pid) {
			continue
		}
		pids = append(pids, pid)
	}
	return pids
}
