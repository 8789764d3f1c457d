package image

import (
	"archive/tar"
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// The fuzz targets feed hostile bytes to everything that parses an image before qemu-img
// runs: the format sniffing and qcow2 header checks, qemu-img's JSON, and the tar walk.
// Seeds: testdata/fuzz/<target>/ (real qemu-img headers and hostile tars) plus f.Add here.

func FuzzCheckHeader(f *testing.F) {
	h := make([]byte, 104)
	copy(h, qcow2Magic)
	binary.BigEndian.PutUint32(h[4:], 3)
	binary.BigEndian.PutUint32(h[20:], 16)
	binary.BigEndian.PutUint64(h[24:], 1<<30)
	f.Add(h, int64(1<<20))
	f.Add([]byte("# Disk DescriptorFile\n"), int64(512))
	f.Fuzz(func(t *testing.T, header []byte, size int64) {
		format, err := DetectFormat("f", header, size)
		checkRefusal(t, err)
		if err != nil || format != diskmeta.FormatQCOW2 {
			return
		}
		qh, err := CheckQCOW2Header("f", header, 1<<40)
		checkRefusal(t, err)
		if err == nil {
			if qh.BackingFileOffset != 0 || qh.BackingFileSize != 0 || qh.CryptMethod != 0 || qh.IncompatibleFeature&qcow2ExternalData != 0 || qh.Size > 1<<40 {
				t.Fatalf("accepted a dangerous header: %+v", qh)
			}
		}
	})
}

func FuzzParseInfo(f *testing.F) {
	f.Add([]byte(`{"virtual-size": 1048576, "format": "qcow2"}`), "qcow2")
	f.Fuzz(func(t *testing.T, js []byte, format string) {
		info, err := ParseInfo("f", format, js, Limits{MaxVirtualSize: 1 << 40})
		checkRefusal(t, err)
		if err == nil && (info.VirtualSize <= 0 || info.VirtualSize > 1<<40 || info.Format != format) {
			t.Fatalf("accepted %+v from %q", info, js)
		}
		var qi qemuImgInfo
		if err == nil && json.Unmarshal(js, &qi) == nil &&
			(qi.BackingFilename != "" || qi.FullBacking != "" || qi.Encrypted || qi.FormatSpecific.Data.DataFile != "") {
			t.Fatalf("accepted a backing file, data file or encryption: %q", js)
		}
	})
}

func FuzzDiskSelector(f *testing.F) {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	_ = tw.WriteHeader(&tar.Header{Name: "disk/disk.qcow2", Typeflag: tar.TypeReg, Size: 4})
	_, _ = tw.Write([]byte("QFI\xfb"))
	_ = tw.Close()
	f.Add(buf.Bytes())
	f.Fuzz(func(t *testing.T, layer []byte) {
		s := &DiskSelector{Image: "fuzz"}
		tr := tar.NewReader(bytes.NewReader(layer))
		for range 1000 {
			h, err := tr.Next()
			if err != nil {
				return
			}
			v, err := s.Next(h)
			checkRefusal(t, err)
			if err != nil {
				return
			}
			if v.Disk {
				if !strings.HasPrefix(s.Disk, "/disk/") || strings.Count(s.Disk, "/") != 2 || escapes(h.Name) {
					t.Fatalf("selected %q from entry %q", s.Disk, h.Name)
				}
				if _, err := io.Copy(io.Discard, tr); err != nil {
					return
				}
			}
		}
	})
}

// checkRefusal: every error the parsers return is a refusal with a reason and a message.
func checkRefusal(t *testing.T, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var ie *Error
	if !errors.As(err, &ie) || ie.Reason == "" || ie.Detail == "" {
		t.Fatalf("not a proper refusal: %#v", err)
	}
}
