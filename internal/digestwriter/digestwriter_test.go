package digestwriter

import (
	"bytes"
	"io"
	"strings"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

func TestWriter(t *testing.T) {
	var out bytes.Buffer
	w := New(&out)
	const data = "a layer's bytes"
	if _, err := io.Copy(w, strings.NewReader(data)); err != nil {
		t.Fatal(err)
	}
	want, size, err := v1.SHA256(strings.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	if w.Digest() != want || w.Size() != size || out.String() != data {
		t.Errorf("digest %s size %d passed %q; want %s %d %q", w.Digest(), w.Size(), out.String(), want, size, data)
	}
}
