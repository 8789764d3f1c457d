package v1alpha1_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/deps"
)

// generateArgs is the controller-gen command line that makes
// zz_generated.deepcopy.go and the CRDs, run from the module root (it is
// what `make generate` runs, with output to charts/podvirt/crds).
func generateArgs(crdDir string) []string {
	return []string{
		"object",
		"crd:generateEmbeddedObjectMeta=true",
		"paths=./api/...",
		"output:crd:artifacts:config=" + crdDir,
	}
}

// TestGeneratedFilesAreCurrent re-runs controller-gen on a copy of this
// package and fails if its output differs from the committed deepcopy code
// or CRDs, so the Go types stay the one source of truth.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	controllerGen, err := deps.Binary("controller-gen", "controller-gen")
	if err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}

	// A copy of the module holding only this package's hand-written files.
	tmp := t.TempDir()
	for _, f := range []string{"go.mod", "go.sum"} {
		copyFile(t, filepath.Join(root, f), filepath.Join(tmp, f))
	}
	pkg := filepath.Join(tmp, "api", "v1alpha1")
	if err := os.MkdirAll(pkg, 0o755); err != nil {
		t.Fatal(err)
	}
	sources, err := filepath.Glob(filepath.Join(root, "api", "v1alpha1", "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	for _, src := range sources {
		name := filepath.Base(src)
		if name == "zz_generated.deepcopy.go" || strings.HasSuffix(name, "_test.go") {
			continue
		}
		copyFile(t, src, filepath.Join(pkg, name))
	}

	cmd := exec.Command(controllerGen, generateArgs(filepath.Join(tmp, "crds"))...)
	cmd.Dir = tmp
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%s %v: %v\n%s", controllerGen, cmd.Args[1:], err, out)
	}

	stale := func(generated, committed string) {
		t.Helper()
		want, err := os.ReadFile(generated)
		if err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(committed)
		if err != nil {
			t.Errorf("%s: %v (run 'make generate')", committed, err)
			return
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is out of date with the Go types in api/v1alpha1: run 'make generate'", committed)
		}
	}
	stale(filepath.Join(pkg, "zz_generated.deepcopy.go"), filepath.Join(root, "api", "v1alpha1", "zz_generated.deepcopy.go"))

	generated, err := filepath.Glob(filepath.Join(tmp, "crds", "*.yaml"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("controller-gen wrote no CRDs (%v)", err)
	}
	committed, err := filepath.Glob(filepath.Join(root, "charts", "podvirt", "crds", v1alpha1.GroupName+"_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{}
	for _, g := range generated {
		want[filepath.Base(g)] = true
		stale(g, filepath.Join(root, "charts", "podvirt", "crds", filepath.Base(g)))
	}
	for _, c := range committed {
		if !want[filepath.Base(c)] {
			t.Errorf("%s is not generated from api/v1alpha1: delete it or run 'make generate'", c)
		}
	}
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	data, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, data, 0o644); err != nil {
		t.Fatal(err)
	}
}
