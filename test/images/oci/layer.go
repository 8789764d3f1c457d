package oci

import (
	"archive/tar"
	"encoding/json"
	"fmt"
	"io"
	"os"

	"github.com/klauspost/compress/zstd"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/partial"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/podvirt/podvirt/internal/digestwriter"
)

// DirLayer returns the files under dir as one zstd-compressed layer, cached
// at blob (with its digests in blob+".json"). A cached blob is reused as it
// is: the caller names blob after dir's content (e.g. a rootfs key), so
// rebuilding an image on top of a big unchanged directory costs neither a
// tar nor a compression nor a hash.
func DirLayer(dir, blob string) (v1.Layer, error) {
	if l, err := readCachedLayer(blob); err == nil {
		return l, nil
	}
	if err := writeDirLayer(dir, blob); err != nil {
		_ = os.Remove(blob + ".tmp")
		return nil, fmt.Errorf("layer of %s at %s: %w", dir, blob, err)
	}
	return readCachedLayer(blob)
}

// cachedLayer is a compressed layer file whose digest, diff ID and size
// were recorded when it was written.
type cachedLayer struct {
	path string
	Meta struct {
		Digest v1.Hash `json:"digest"`
		DiffID v1.Hash `json:"diffID"`
		Size   int64   `json:"size"`
	}
}

func (l *cachedLayer) Digest() (v1.Hash, error)            { return l.Meta.Digest, nil }
func (l *cachedLayer) DiffID() (v1.Hash, error)            { return l.Meta.DiffID, nil }
func (l *cachedLayer) Size() (int64, error)                { return l.Meta.Size, nil }
func (l *cachedLayer) MediaType() (types.MediaType, error) { return types.OCILayerZStd, nil }
func (l *cachedLayer) Compressed() (io.ReadCloser, error)  { return os.Open(l.path) }

func readCachedLayer(blob string) (v1.Layer, error) {
	l := &cachedLayer{path: blob}
	b, err := os.ReadFile(blob + ".json")
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, &l.Meta); err != nil {
		return nil, err
	}
	info, err := os.Stat(blob)
	if err != nil {
		return nil, err
	}
	if info.Size() != l.Meta.Size {
		return nil, fmt.Errorf("cached layer %s is %d bytes, its record says %d", blob, info.Size(), l.Meta.Size)
	}
	return partial.CompressedToLayer(l)
}

// writeDirLayer tars dir through zstd into blob in one pass, hashing the
// tar (diff ID) and the compressed stream (digest) on the way.
func writeDirLayer(dir, blob string) error {
	f, err := os.Create(blob + ".tmp")
	if err != nil {
		return err
	}
	defer f.Close()
	compressed := digestwriter.New(f)
	zw, err := zstd.NewWriter(compressed, zstd.WithEncoderLevel(zstd.SpeedDefault))
	if err != nil {
		return err
	}
	uncompressed := digestwriter.New(zw)
	tw := tar.NewWriter(uncompressed)
	if err := addTree(tw, dir); err != nil {
		return err
	}
	if err := tw.Close(); err != nil {
		return err
	}
	if err := zw.Close(); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	var l cachedLayer
	l.Meta.Digest, l.Meta.DiffID, l.Meta.Size = compressed.Digest(), uncompressed.Digest(), compressed.Size()
	meta, err := json.Marshal(l.Meta)
	if err != nil {
		return err
	}
	if err := os.Rename(blob+".tmp", blob); err != nil {
		return err
	}
	return os.WriteFile(blob+".json", meta, 0o644)
}
