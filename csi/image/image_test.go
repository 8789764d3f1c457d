package image

import (
	"archive/tar"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/image/imagetest"
)

func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Fatal("qemu-img (Debian package qemu-utils) is not installed: run `make deps`")
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v: %s", args, err, out)
	}
}

func wantReason(t *testing.T, err error, r Reason) {
	t.Helper()
	var ie *Error
	if !errors.As(err, &ie) {
		t.Fatalf("got %v, want a refusal (%s)", err, r)
	}
	if ie.Reason != r {
		t.Fatalf("refused for %s, want %s: %v", ie.Reason, r, err)
	}
}

var testLimits = Limits{MaxVirtualSize: 1 << 40, CPUSeconds: 20, AddressSpace: 1 << 30, Timeout: time.Minute}

func TestValidateAccepts(t *testing.T) {
	dir := t.TempDir()
	q := filepath.Join(dir, "ok.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", q, "1G")
	info, err := Validate(context.Background(), q, "ok.qcow2", testLimits)
	if err != nil || info.Format != diskmeta.FormatQCOW2 || info.VirtualSize != 1<<30 {
		t.Fatalf("qcow2: %+v, %v", info, err)
	}
	r := filepath.Join(dir, "ok.img")
	qemuImg(t, "create", "-q", "-f", "raw", r, "64M")
	info, err = Validate(context.Background(), r, "ok.img", testLimits)
	if err != nil || info.Format != diskmeta.FormatRaw || info.VirtualSize != 64<<20 {
		t.Fatalf("raw: %+v, %v", info, err)
	}
}

func TestValidateRefuses(t *testing.T) {
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	qemuImg(t, "create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/passwd", "-u", p("backing.qcow2"), "1M")
	qemuImg(t, "create", "-q", "-f", "qcow2", p("huge.qcow2"), "2T")
	qemuImg(t, "create", "-q", "-f", "raw", p("huge.raw"), "2T")
	if err := imagetest.EncryptedQCOW2(t.Context(), p("luks.qcow2"), "1M"); err != nil {
		t.Fatal(err)
	}
	qemuImg(t, "create", "-q", "-f", "qcow2", "-o", "data_file="+p("data.raw"), p("data.qcow2"), "1M")
	qemuImg(t, "create", "-q", "-f", "vpc", p("disk.vhd"), "16M")
	if err := os.WriteFile(p("empty.img"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("text.img"), []byte("not a disk"), 0o644); err != nil {
		t.Fatal(err)
	}
	// A qcow2 header that claims a v3 image but is cut right after the magic.
	if err := os.WriteFile(p("cut.qcow2"), []byte("QFI\xfb\x00\x00\x00\x03"), 0o644); err != nil {
		t.Fatal(err)
	}
	for file, reason := range map[string]Reason{
		"backing.qcow2": ReasonBackingFile, "huge.qcow2": ReasonVirtualSize, "huge.raw": ReasonVirtualSize,
		"luks.qcow2": ReasonEncrypted, "data.qcow2": ReasonDataFile, "disk.vhd": ReasonUnsupported,
		"empty.img": ReasonEmpty, "text.img": ReasonNotAnImage, "cut.qcow2": ReasonCorrupt,
	} {
		t.Run(file, func(t *testing.T) {
			_, err := Validate(context.Background(), p(file), file, testLimits)
			wantReason(t, err, reason)
			if !strings.Contains(err.Error(), file) {
				t.Fatalf("message does not name the file: %v", err)
			}
		})
	}
}

// qemu-img really runs under the limits: with a tiny address space it cannot even start,
// and that is reported (as a refusal: the node cannot vouch for the image).
func TestValidateUnderLimits(t *testing.T) {
	q := filepath.Join(t.TempDir(), "ok.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", q, "1G")
	lim := testLimits
	lim.AddressSpace = 8 << 20
	_, err := Validate(context.Background(), q, "ok.qcow2", lim)
	wantReason(t, err, ReasonCorrupt)
	if !strings.Contains(err.Error(), "qemu-img info") {
		t.Fatalf("unexpected message: %v", err)
	}
}

func TestParseInfo(t *testing.T) {
	ok := `{"virtual-size": 1048576, "format": "qcow2", "actual-size": 200704, "format-specific": {"type": "qcow2", "data": {"compat": "1.1"}}}`
	if info, err := ParseInfo("f", "qcow2", []byte(ok), testLimits); err != nil || info.VirtualSize != 1<<20 {
		t.Fatalf("%+v, %v", info, err)
	}
	for in, reason := range map[string]Reason{
		`{"virtual-size": 1, "format": "qcow2", "backing-filename": "/etc/shadow"}`:                                   ReasonBackingFile,
		`{"virtual-size": 1, "format": "qcow2", "format-specific": {"type":"qcow2","data":{"data-file":"/dev/sda"}}}`: ReasonDataFile,
		`{"virtual-size": 1, "format": "qcow2", "encrypted": true}`:                                                   ReasonEncrypted,
		`{"virtual-size": 1, "format": "qcow2", "format-specific": {"type":"qcow2","data":{"corrupt":true}}}`:         ReasonCorrupt,
		`{"virtual-size": 0, "format": "qcow2"}`:                                                                      ReasonEmpty,
		`{"virtual-size": 4398046511104000, "format": "qcow2"}`:                                                       ReasonVirtualSize,
		`{"virtual-size": 1, "format": "vmdk"}`:                                                                       ReasonNotAnImage,
		`not json`:                                                                                                    ReasonInspectFailed,
	} {
		_, err := ParseInfo("f", "qcow2", []byte(in), testLimits)
		wantReason(t, err, reason)
	}
}

func TestDiskSelector(t *testing.T) {
	reg := func(name string) *tar.Header { return &tar.Header{Name: name, Typeflag: tar.TypeReg} }
	one := func(hs ...*tar.Header) [][]*tar.Header { return [][]*tar.Header{hs} }
	for _, tc := range []struct {
		name     string
		layers   [][]*tar.Header
		disk     string
		comp     Compression
		restarts int // how often the disk written so far must be dropped
		reason   Reason
	}{
		{"plain", one(&tar.Header{Name: "disk/", Typeflag: tar.TypeDir}, reg("disk/disk.qcow2")), "/disk/disk.qcow2", None, 0, ""},
		{"dot slash", one(reg("./disk/vm.img")), "/disk/vm.img", None, 0, ""},
		{"absolute", one(reg("/disk/vm.raw")), "/disk/vm.raw", None, 0, ""},
		{"gz", one(reg("disk/vm.qcow2.gz")), "/disk/vm.qcow2.gz", Gzip, 0, ""},
		{"xz", one(reg("disk/vm.img.xz")), "/disk/vm.img.xz", XZ, 0, ""},
		{"other files ignored", one(reg("etc/motd"), reg("disk/README"), reg("disk/sub/x.qcow2"), reg("disk/vm.qcow2")), "/disk/vm.qcow2", None, 0, ""},
		{"dotdot inside is fine", one(reg("a/../disk/vm.qcow2")), "/disk/vm.qcow2", None, 0, ""},
		{"escape", one(reg("../x")), "", None, 0, ReasonPathEscape},
		{"escape deep", one(reg("disk/../../x")), "", None, 0, ReasonPathEscape},
		{"escape absolute", one(reg("/../etc/passwd")), "", None, 0, ReasonPathEscape},
		{"hardlink escape", one(&tar.Header{Name: "disk/x", Typeflag: tar.TypeLink, Linkname: "../../etc/shadow"}), "", None, 0, ReasonPathEscape},
		{"two", one(reg("disk/a.qcow2"), reg("disk/b.raw")), "", None, 0, ReasonSeveralDisks},
		{"symlink disk", one(&tar.Header{Name: "disk/a.qcow2", Typeflag: tar.TypeSymlink, Linkname: "/dev/sda"}), "", None, 0, ReasonNotAnImage},
		{"nul", one(reg("disk/a\x00.qcow2")), "", None, 0, ReasonPathEscape},
		{"empty", [][]*tar.Header{{}}, "", None, 0, ReasonEmpty},
		{"no disk", one(reg("etc/motd")), "", None, 0, ReasonNoDisk},
		// Layers on layers, as a runtime unpacks them.
		{"later layer replaces the same path", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/a.qcow2")}}, "/disk/a.qcow2", None, 1, ""},
		{"same path twice in a layer: the last wins", one(reg("disk/a.qcow2"), reg("disk/a.qcow2")), "/disk/a.qcow2", None, 1, ""},
		{"whiteout, then another disk", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/.wh.a.qcow2"), reg("disk/b.raw.gz")}}, "/disk/b.raw.gz", Gzip, 1, ""},
		{"another disk, then the whiteout", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/b.raw"), reg("disk/.wh.a.qcow2")}}, "/disk/b.raw", None, 1, ""},
		{"opaque /disk/, then another disk", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/.wh..wh..opq"), reg("disk/b.img")}}, "/disk/b.img", None, 1, ""},
		{"another disk, then opaque /disk/", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/b.img"), reg("disk/.wh..wh..opq")}}, "/disk/b.img", None, 1, ""},
		{"/disk whited out at the root", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg(".wh.disk"), reg("disk/b.img")}}, "/disk/b.img", None, 1, ""},
		{"opaque root", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg(".wh..wh..opq"), reg("disk/b.img")}}, "/disk/b.img", None, 1, ""},
		{"a whiteout spares its own layer", one(reg("disk/a.qcow2"), reg("disk/.wh.a.qcow2")), "/disk/a.qcow2", None, 0, ""},
		{"deleted and nothing added", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/.wh.a.qcow2")}}, "", None, 1, ReasonNoDisk},
		{"another disk without deleting the first", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/b.img")}}, "", None, 1, ReasonSeveralDisks},
		{"deleted one layer too late", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk/b.img")}, {reg("disk/.wh.a.qcow2")}}, "", None, 1, ReasonSeveralDisks},
		{"/disk is a symlink", one(&tar.Header{Name: "disk", Typeflag: tar.TypeSymlink, Linkname: "data"}, reg("data/a.qcow2")), "", None, 0, ReasonUnsupported},
		{"a file replaces /disk", [][]*tar.Header{{reg("disk/a.qcow2")}, {reg("disk")}}, "", None, 1, ReasonNoDisk},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &DiskSelector{Image: "docker://r/i:1"}
			var err error
			var comp Compression
			restarts, entries := 0, 0
		layers:
			for i, hs := range tc.layers {
				if err = s.Layer(i); err != nil {
					break
				}
				for _, h := range hs {
					entries++
					var v Verdict
					if v, err = s.Next(h); err != nil {
						break layers
					}
					if v.Restart {
						restarts++
					}
					if v.Disk {
						comp = v.Compression
					}
				}
			}
			if err == nil {
				err = s.Done(len(tc.layers), entries)
			}
			if restarts != tc.restarts {
				t.Errorf("%d restarts, want %d", restarts, tc.restarts)
			}
			if tc.reason != "" {
				wantReason(t, err, tc.reason)
				return
			}
			if err != nil || s.Disk != tc.disk || comp != tc.comp {
				t.Fatalf("disk %q comp %q err %v; want %q %q", s.Disk, comp, err, tc.disk, tc.comp)
			}
		})
	}
}
