package cli

import (
	"strings"
	"testing"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// As a kubectl plugin (kubectl-virt on the PATH) the hints name
// `kubectl virt`.
func TestKubectlPluginName(t *testing.T) {
	for argv0, want := range map[string]string{
		"/usr/local/bin/kubectl-virt": "kubectl virt",
		"kubectl-virt":                "kubectl virt",
		"./bin/podvirtctl":            "podvirtctl",
	} {
		if got := commandName(argv0); got != want {
			t.Errorf("commandName(%q) = %q, want %q", argv0, got, want)
		}
	}
}

// Shell completion: cobra's scripts, and VM names from the API server.
func TestCompletion(t *testing.T) {
	ns := namespace(t)
	for _, shell := range []string{"bash", "zsh", "fish", "powershell"} {
		out, err := podvirtctl(t, ns, "completion", shell)
		if err != nil || !strings.Contains(out, "podvirtctl") {
			t.Errorf("completion %s: %v (%d bytes)", shell, err, len(out))
		}
	}
	create(t, testVM(ns, "web-1", v1.RunStrategyHalted))
	create(t, testVM(ns, "web-2", v1.RunStrategyHalted))
	create(t, testVM(ns, "db", v1.RunStrategyHalted))
	out, err := podvirtctl(t, ns, "__complete", "start", "web")
	if err != nil {
		t.Fatal(err)
	}
	if lines := strings.Split(strings.TrimSpace(out), "\n"); len(lines) != 3 || lines[0] != "web-1" || lines[1] != "web-2" || !strings.HasPrefix(lines[2], ":") {
		t.Fatalf("completion of `start web`: %q", out)
	}
}
