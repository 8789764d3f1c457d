package stack

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// Podvirtctl builds podvirtctl into the stack's dir (once) and returns
// its path.
func (s *Stack) Podvirtctl(ctx context.Context) (string, error) {
	bin := filepath.Join(s.opts.Dir, "bin", "podvirtctl")
	cmd := exec.CommandContext(ctx, "go", "build", "-o", bin, "github.com/podvirt/podvirt/cmd/podvirtctl")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("building podvirtctl: %w\n%s", err, out)
	}
	return bin, nil
}

// RunInConsole types command on the VM's serial console through
// `podvirtctl console` (pods/exec into the launcher, through the API
// server) and returns what the guest printed until the command finished.
func (s *Stack) RunInConsole(ctx context.Context, vm, command string, timeout time.Duration) (string, error) {
	bin, err := s.Podvirtctl(ctx)
	if err != nil {
		return "", err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "console", vm, "--namespace", Namespace, "--kubeconfig", s.Cluster.Kubeconfig())
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return "", err
	}
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		return "", err
	}
	defer func() { _ = stdin.Close(); _ = cmd.Process.Kill(); _ = cmd.Wait() }()

	token := make([]byte, 4)
	_, _ = rand.Read(token)
	done := "podvirt-done-" + hex.EncodeToString(token)
	// The marker is printed by the shell with its halves joined, so the
	// echoed command line itself never matches.
	line := fmt.Sprintf("%s; echo %s''%s rc=$?\n", command, done[:7], done[7:])
	tick := time.NewTicker(2 * time.Second)
	defer tick.Stop()
	// Press Enter until the shell prompts (the console may attach while
	// the guest still boots), then type the line once.
	sent := false
	for {
		text := out.String()
		if i := strings.Index(text, done+" rc="); i >= 0 {
			end, _, _ := strings.Cut(text[i:], "\n")
			return text[:i+len(end)], nil
		}
		if !sent && strings.Contains(text, "# ") {
			if _, err := io.WriteString(stdin, line); err != nil {
				return text, fmt.Errorf("console of vm %s: %w", vm, err)
			}
			sent = true
		}
		select {
		case <-ctx.Done():
			return out.String(), fmt.Errorf("console of vm %s: %q did not finish within %s; console output:\n%s", vm, command, timeout, out.String())
		case <-tick.C:
			if !sent {
				if _, err := io.WriteString(stdin, "\n"); err != nil {
					return out.String(), fmt.Errorf("console of vm %s: %w", vm, err)
				}
			}
		}
	}
}

// syncBuffer is a bytes.Buffer safe for one writer and one reader.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
