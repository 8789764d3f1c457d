// Package digestwriter counts and sha256-hashes bytes on their way to a
// writer: an OCI blob's digest and size (or a layer's diff ID) computed in
// the same pass that writes it.
package digestwriter

import (
	"crypto/sha256"
	"encoding/hex"
	"hash"
	"io"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Writer passes writes on to its writer, hashing and counting what it
// took.
type Writer struct {
	w io.Writer
	h hash.Hash
	n int64
}

// New is a Writer in front of w.
func New(w io.Writer) *Writer { return &Writer{w: w, h: sha256.New()} }

func (d *Writer) Write(p []byte) (int, error) {
	n, err := d.w.Write(p)
	d.h.Write(p[:n])
	d.n += int64(n)
	return n, err
}

// Digest is the sha256 of what was written.
func (d *Writer) Digest() v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(d.h.Sum(nil))}
}

// Size is how many bytes were written.
func (d *Writer) Size() int64 { return d.n }
