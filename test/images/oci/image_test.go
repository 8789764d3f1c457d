package oci

import (
	"archive/tar"
	"encoding/json"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestBuildAndWriteOCITar(t *testing.T) {
	dir := t.TempDir()
	bin := filepath.Join(dir, "hello")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\necho hi\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	img, err := Build(Spec{
		Ref:        "podvirt.local/hello:1",
		Files:      []File{{Path: "/usr/bin/hello", Source: bin}},
		Entrypoint: []string{"/usr/bin/hello"},
	})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.Config.Entrypoint; len(got) != 1 || got[0] != "/usr/bin/hello" {
		t.Errorf("entrypoint = %v", got)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers = %d, %v; want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	files := map[string]int64{}
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		files[hdr.Name] = hdr.Mode
	}
	for _, want := range []string{"usr/", "usr/bin/", "usr/bin/hello"} {
		if _, ok := files[want]; !ok {
			t.Errorf("layer lacks %s; has %v", want, files)
		}
	}
	if files["usr/bin/hello"] != 0o755 {
		t.Errorf("usr/bin/hello mode = %o, want 755", files["usr/bin/hello"])
	}

	out := filepath.Join(dir, "image.tar")
	if err := WriteOCITar(img, "podvirt.local/hello:1", out); err != nil {
		t.Fatal(err)
	}
	index := readIndex(t, out)
	if len(index.Manifests) != 1 {
		t.Fatalf("index has %d manifests, want 1", len(index.Manifests))
	}
	if got := index.Manifests[0].Annotations["io.containerd.image.name"]; got != "podvirt.local/hello:1" {
		t.Errorf("image name annotation = %q", got)
	}
}

func TestBuildMissingFile(t *testing.T) {
	_, err := Build(Spec{Ref: "podvirt.local/x:1", Files: []File{{Path: "/x", Source: "/nonexistent/x"}}})
	if err == nil {
		t.Fatal("Build with a missing source file succeeded")
	}
}

func readIndex(t *testing.T, path string) struct {
	Manifests []struct{ Annotations map[string]string }
} {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	tr := tar.NewReader(f)
	for {
		hdr, err := tr.Next()
		if err != nil {
			t.Fatalf("no index.json in %s: %v", path, err)
		}
		if hdr.Name == "index.json" {
			var idx struct {
				Manifests []struct{ Annotations map[string]string }
			}
			if err := json.NewDecoder(tr).Decode(&idx); err != nil {
				t.Fatal(err)
			}
			return idx
		}
	}
}
