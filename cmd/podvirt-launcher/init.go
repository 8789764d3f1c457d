package main

import (
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"syscall"
)

// runAsInit is what the launcher does as PID 1 of its container: QEMU is
// daemonized by libvirtd, so it and libvirt's probe processes become the
// children of PID 1 when their parents exit, and libvirtd waits for them
// to vanish. So PID 1 runs the launcher as its child, forwards SIGTERM
// and SIGINT to it, reaps every process that ends, and exits as the
// launcher did.
func runAsInit() {
	cmd := exec.Command("/proc/self/exe", os.Args[1:]...) //nolint:gosec // this very binary, with its own arguments
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-launcher (init): starting the launcher: %v\n", err)
		os.Exit(1)
	}
	child := cmd.Process.Pid
	for sig := range sigs {
		if sig != syscall.SIGCHLD {
			_ = cmd.Process.Signal(sig)
			continue
		}
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if err != nil || pid <= 0 {
				break
			}
			if pid != child {
				continue
			}
			switch {
			case ws.Exited():
				os.Exit(ws.ExitStatus())
			case ws.Signaled():
				os.Exit(128 + int(ws.Signal()))
			}
		}
	}
}
