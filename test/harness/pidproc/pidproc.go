// Package pidproc handles the long-running processes test harnesses start
// detached and find again through a pid file: the local cluster's
// components and the demo's registries.
package pidproc

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Write records pid in the file at path.
func Write(path string, pid int) error {
	return os.WriteFile(path, []byte(strconv.Itoa(pid)), 0o600)
}

// Recorded returns the pid in the file at path when that process is alive
// and still runs the program exe (a pid can be reused).
func Recorded(path, exe string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	got, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil || strings.TrimSuffix(got, " (deleted)") != exe || !Alive(pid) {
		return 0, false
	}
	return pid, true
}

// Alive reports whether pid runs. A zombie has exited; only its parent has
// yet to reap it.
func Alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	if i := bytes.LastIndexByte(b, ')'); i > 0 && i+2 < len(b) {
		return b[i+2] != 'Z'
	}
	return true
}

// WaitGone waits up to d for pid to exit and reports whether it did.
func WaitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if !Alive(pid) {
			return true
		}
		time.Sleep(20 * time.Millisecond)
	}
	return !Alive(pid)
}

// Stop sends pid sig and, if it has not exited after grace, SIGKILL; it
// fails when the process outlives that too.
func Stop(pid int, sig syscall.Signal, grace time.Duration) error {
	_ = syscall.Kill(pid, sig)
	if WaitGone(pid, grace) {
		return nil
	}
	_ = syscall.Kill(pid, syscall.SIGKILL)
	if !WaitGone(pid, 5*time.Second) {
		return fmt.Errorf("pid %d did not exit after SIGKILL", pid)
	}
	return nil
}
