package deps

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

func TestVersion(t *testing.T) {
	for tool, want := range map[string]string{
		"kubernetes":  "v1.36.",
		"cni-plugins": "v1.10.0",
		"multus":      "v4.2.2",
		"whereabouts": "v0.9.2",
		"coredns":     "v1.15.0",
		"nonexistent": "",
	} {
		if got := Version(tool); !strings.HasPrefix(got, want) || (want == "" && got != "") {
			t.Errorf("Version(%q) = %q, want prefix %q", tool, got, want)
		}
	}
}

// The shell installer and this package read one file; a version the shell
// reads must be the one Go reports.
func TestShellAgrees(t *testing.T) {
	out, err := exec.Command("bash", "-c", ". ./versions.env && echo $KUBERNETES_VERSION").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := strings.TrimSpace(string(out)), Version("kubernetes"); got != want {
		t.Errorf("versions.env sourced by bash gives %q, Version gives %q", got, want)
	}
}

func TestBinaryMissing(t *testing.T) {
	t.Setenv("PODVIRT_CACHE", t.TempDir())
	_, err := Binary("kubernetes", "kube-apiserver")
	if err == nil || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("Binary on an empty cache: err = %v, want one naming 'make deps'", err)
	}
}

// whereabouts' CRDs sit next to its binary, so both Binary and CRDs find them.
func TestCRDs(t *testing.T) {
	t.Setenv("PODVIRT_CACHE", t.TempDir())
	if _, err := CRDs("whereabouts"); err == nil || !strings.Contains(err.Error(), "make deps") {
		t.Fatalf("CRDs on an empty cache: err = %v, want one naming 'make deps'", err)
	}
	dir := filepath.Join(Cache(), "bin", "whereabouts-"+Version("whereabouts"))
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"whereabouts", "whereabouts.cni.cncf.io_ippools.yaml", "whereabouts.cni.cncf.io_overlappingrangeipreservations.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, f), nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := Binary("whereabouts", "whereabouts"); err != nil {
		t.Error(err)
	}
	got, err := CRDs("whereabouts")
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || filepath.Base(got[0]) != "whereabouts.cni.cncf.io_ippools.yaml" {
		t.Errorf("CRDs = %v, want the two YAML files, ippools first", got)
	}
}
