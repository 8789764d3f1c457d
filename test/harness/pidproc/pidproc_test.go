package pidproc

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

func TestRecordedAndStop(t *testing.T) {
	sleep, err := exec.LookPath("sleep")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(sleep, "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-done })

	pidFile := filepath.Join(t.TempDir(), "sleep.pid")
	if _, ok := Recorded(pidFile, sleep); ok {
		t.Fatal("Recorded found a process without a pid file")
	}
	if err := Write(pidFile, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	exe, _ := os.Readlink("/proc/self/exe")
	if _, ok := Recorded(pidFile, exe); ok {
		t.Error("Recorded accepted a process that runs another program")
	}
	real, _ := filepath.EvalSymlinks(sleep)
	pid, ok := Recorded(pidFile, real)
	if !ok || pid != cmd.Process.Pid {
		t.Fatalf("Recorded = %d, %v; want %d, true", pid, ok, cmd.Process.Pid)
	}
	if err := Stop(pid, syscall.SIGTERM, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	<-done // reaped: no longer even a zombie
	if Alive(pid) {
		t.Errorf("pid %d alive after Stop", pid)
	}
	if _, ok := Recorded(pidFile, real); ok {
		t.Error("Recorded still finds the stopped process")
	}
}
