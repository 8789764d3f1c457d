package install

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// buildPlugin builds cmd/podvirt-l2 with version v into dir.
func buildPlugin(t *testing.T, dir, v string) string {
	t.Helper()
	out := filepath.Join(dir, "podvirt-l2-"+v)
	cmd := exec.Command("go", "build", "-trimpath", "-o", out,
		"-ldflags", "-X github.com/podvirt/podvirt/cmd/internal/version.Version="+v,
		"github.com/podvirt/podvirt/cmd/podvirt-l2")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build podvirt-l2: %v\n%s", err, b)
	}
	return out
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return fi.Sys().(*syscall.Stat_t).Ino
}

func TestPlugin(t *testing.T) {
	src := t.TempDir()
	v1, v2 := buildPlugin(t, src, "v1"), buildPlugin(t, src, "v2")
	binDir := filepath.Join(t.TempDir(), "opt", "cni", "bin") // missing: made
	dst := filepath.Join(binDir, PluginName)

	changed, err := Plugin(v1, binDir)
	if err != nil || !changed {
		t.Fatalf("first install: changed=%v err=%v", changed, err)
	}
	assertInstalled(t, dst, v1)
	ino := inode(t, dst)

	changed, err = Plugin(v1, binDir)
	if err != nil || changed {
		t.Fatalf("same binary again: changed=%v err=%v, want no change", changed, err)
	}
	if inode(t, dst) != ino {
		t.Error("installing an identical binary replaced the file")
	}

	changed, err = Plugin(v2, binDir)
	if err != nil || !changed {
		t.Fatalf("new binary: changed=%v err=%v", changed, err)
	}
	assertInstalled(t, dst, v2)

	// Same bytes but the wrong mode is fixed.
	if err := os.Chmod(dst, 0o644); err != nil {
		t.Fatal(err)
	}
	if changed, err := Plugin(v2, binDir); err != nil || !changed {
		t.Fatalf("wrong mode: changed=%v err=%v", changed, err)
	}
	assertInstalled(t, dst, v2)
	assertNoTemporaries(t, binDir)
}

func TestPluginErrors(t *testing.T) {
	binDir := t.TempDir()
	missing := filepath.Join(t.TempDir(), "nope")
	if _, err := Plugin(missing, binDir); err == nil || !strings.Contains(err.Error(), missing) {
		t.Errorf("missing source: %v, want an error naming it", err)
	}
	if _, err := Plugin(t.TempDir(), binDir); err == nil || !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("directory as source: %v", err)
	}
	// A bin dir path that is a file.
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Plugin(file, filepath.Join(file, "bin")); err == nil {
		t.Error("bin dir under a file: no error")
	}
	assertNoTemporaries(t, binDir)
}

// TestPluginWhileRunning runs the installed plugin (CNI VERSION) over and
// over from another process, as a container runtime would, while the
// binary is replaced back and forth: every run must find a whole
// executable. (Runs from this process could fail with ETXTBSY for a reason
// of the test's own: a child forked while the temporary file is open for
// writing holds it until it execs.)
func TestPluginWhileRunning(t *testing.T) {
	src := t.TempDir()
	v1, v2 := buildPlugin(t, src, "v1"), buildPlugin(t, src, "v2")
	binDir, work := t.TempDir(), t.TempDir()
	dst := filepath.Join(binDir, PluginName)
	if _, err := Plugin(v1, binDir); err != nil {
		t.Fatal(err)
	}

	// One line per run: "ok", or what went wrong.
	stopFile, results := filepath.Join(work, "stop"), filepath.Join(work, "results")
	script := `while [ ! -e "$STOP" ]; do
	if out=$(CNI_COMMAND=VERSION "$PLUGIN" </dev/null 2>&1); then
		case "$out" in *supportedVersions*) echo ok ;; *) echo "bad answer: $out" ;; esac
	else
		echo "failed: $out"
	fi
done >"$RESULTS"`
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	runner := exec.CommandContext(ctx, "sh", "-c", script)
	runner.Env = append(os.Environ(), "STOP="+stopFile, "PLUGIN="+dst, "RESULTS="+results)
	if err := runner.Start(); err != nil {
		t.Fatal(err)
	}
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			_ = os.WriteFile(stopFile, nil, 0o644)
			_ = runner.Wait()
		}
	}
	t.Cleanup(stop)

	installs, runs := 0, 0
	for runs < 200 {
		if ctx.Err() != nil {
			t.Fatalf("only %d runs in 2m", runs)
		}
		src := v1
		if installs%2 == 0 {
			src = v2
		}
		if _, err := Plugin(src, binDir); err != nil {
			t.Fatalf("install #%d: %v", installs, err)
		}
		installs++
		b, _ := os.ReadFile(results)
		runs = strings.Count(string(b), "\n")
	}
	stop()
	b, err := os.ReadFile(results)
	if err != nil {
		t.Fatal(err)
	}
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	var failures []string
	for _, l := range lines {
		if l != "ok" {
			failures = append(failures, l)
		}
	}
	if len(failures) > 0 {
		t.Fatalf("%d of %d runs failed during %d installs; first: %s", len(failures), len(lines), installs, failures[0])
	}
	t.Logf("%d runs of the plugin, all whole, during %d installs", len(lines), installs)
	assertNoTemporaries(t, binDir)
}

// runVersion runs the plugin at path with CNI_COMMAND=VERSION and checks
// its answer.
func runVersion(ctx context.Context, path string) error {
	cmd := exec.CommandContext(ctx, path)
	cmd.Env = []string{"CNI_COMMAND=VERSION"}
	cmd.Stdin = strings.NewReader(`{"cniVersion":"1.1.0"}`)
	out, err := cmd.Output()
	if err != nil {
		return fmt.Errorf("running %s: %w", path, err)
	}
	var v struct {
		Supported []string `json:"supportedVersions"`
	}
	if err := json.Unmarshal(out, &v); err != nil {
		return fmt.Errorf("VERSION answer %q: %w", out, err)
	}
	if len(v.Supported) == 0 {
		return fmt.Errorf("VERSION answer %q lists no versions", out)
	}
	return nil
}

func assertInstalled(t *testing.T, dst, src string) {
	t.Helper()
	want, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(dst)
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != string(want) {
		t.Errorf("%s does not have the bytes of %s", dst, src)
	}
	fi, err := os.Stat(dst)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode() != 0o755 {
		t.Errorf("%s has mode %s, want -rwxr-xr-x", dst, fi.Mode())
	}
	if err := runVersion(context.Background(), dst); err != nil {
		t.Error(err)
	}
}

func assertNoTemporaries(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		if e.Name() != PluginName {
			t.Errorf("left in the bin dir: %s", e.Name())
		}
	}
}
