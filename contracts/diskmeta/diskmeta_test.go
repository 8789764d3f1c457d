package diskmeta

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

func TestEncodeRead(t *testing.T) {
	dir := t.TempDir()
	want := Meta{Format: FormatQCOW2, BaseFormat: FormatRaw, Source: "docker://os/fedora:40", Digest: "sha256:ab", Layers: []string{"layer-b.img", "layer-a.img"}}
	b, err := Encode(want)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(Path(dir), b, 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Read(dir)
	if err != nil || !reflect.DeepEqual(got, want) || !got.HasBase() {
		t.Fatalf("Read = %+v, %v; want %+v", got, err, want)
	}
}

func TestReadRejects(t *testing.T) {
	for name, content := range map[string]string{
		"format":      `{"format":"vmdk"}`,
		"base format": `{"format":"qcow2","baseFormat":"vmdk"}`,
		"decode":      `{`,
		"layer":       `{"format":"qcow2","layers":["../../etc/x.img"]}`,
	} {
		dir := t.TempDir()
		if err := os.WriteFile(Path(dir), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		if _, err := Read(dir); err == nil || !strings.Contains(err.Error(), name) {
			t.Errorf("%s: Read = %v, want an error about the %s", content, err, name)
		}
	}
	if _, err := Read(t.TempDir()); err == nil || !strings.Contains(err.Error(), "disk.podvirt.io volume") {
		t.Errorf("Read of an empty dir: %v", err)
	}
}
