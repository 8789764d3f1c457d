package oci

import (
	"crypto/sha256"
	"encoding/hex"
	"io"
	"os"
	"path/filepath"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// TestDirLayerCached: the layer's recorded digests are those of its bytes,
// and a second call reuses the blob instead of writing it again.
func TestDirLayerCached(t *testing.T) {
	dir := t.TempDir()
	if err := os.MkdirAll(filepath.Join(dir, "usr", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "usr", "bin", "tool"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("usr/bin", filepath.Join(dir, "bin")); err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(t.TempDir(), "layer.tar.zst")
	layer, err := DirLayer(dir, blob)
	if err != nil {
		t.Fatal(err)
	}
	if mt, _ := layer.MediaType(); mt != types.OCILayerZStd {
		t.Errorf("media type %s", mt)
	}
	digest, _ := layer.Digest()
	raw, _ := os.ReadFile(blob)
	if sum := sha256.Sum256(raw); digest.Hex != hex.EncodeToString(sum[:]) {
		t.Errorf("digest %s is not the blob's sha256", digest)
	}
	diffID, _ := layer.DiffID()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.New()
	if _, err := io.Copy(h, rc); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	if diffID.Hex != hex.EncodeToString(h.Sum(nil)) {
		t.Errorf("diffID %s is not the uncompressed tar's sha256", diffID)
	}
	before, _ := os.Stat(blob)
	again, err := DirLayer(dir, blob)
	if err != nil {
		t.Fatal(err)
	}
	after, _ := os.Stat(blob)
	if d2, _ := again.Digest(); d2 != digest || !after.ModTime().Equal(before.ModTime()) {
		t.Errorf("second DirLayer rewrote the blob or changed its digest: %s vs %s", d2, digest)
	}
	img, err := Build(Spec{Ref: "podvirt.local/x:1", Base: []v1.Layer{again}, Files: []File{{Path: "/x", Source: filepath.Join(dir, "usr", "bin", "tool")}}})
	if err != nil {
		t.Fatal(err)
	}
	if layers, _ := img.Layers(); len(layers) != 2 {
		t.Errorf("image has %d layers, want the base and the files layer", len(layers))
	}
}
