//go:build ignore

// gen_seeds writes the fuzz seed corpus of csi/image from real qemu-img output and
// hand-made hostile tars. Regenerate with: go run testdata/gen_seeds.go testdata/fuzz
package main

import (
	"archive/tar"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
)

func seed(dir, name string, vals ...string) {
	os.MkdirAll(dir, 0o755)
	s := "go test fuzz v1\n"
	for _, v := range vals {
		s += v + "\n"
	}
	os.WriteFile(filepath.Join(dir, name), []byte(s), 0o644)
}

func b(x []byte) string { return "[]byte(" + strconv.Quote(string(x)) + ")" }

func must(err error) {
	if err != nil {
		panic(err)
	}
}

func main() {
	out := os.Args[1]
	tmp, _ := os.MkdirTemp("", "seed")
	defer os.RemoveAll(tmp)
	imgs := map[string][]string{
		"plain":    {"create", "-q", "-f", "qcow2", "X", "1G"},
		"v2":       {"create", "-q", "-f", "qcow2", "-o", "compat=0.10", "X", "1G"},
		"backing":  {"create", "-q", "-f", "qcow2", "-F", "raw", "-b", "/etc/shadow", "-u", "X", "1M"},
		"luks":     {"create", "-q", "-f", "qcow2", "--object", "secret,id=s,data=x", "-o", "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10", "X", "1M"},
		"datafile": {"create", "-q", "-f", "qcow2", "-o", "data_file=" + tmp + "/d.raw", "X", "1M"},
		"huge":     {"create", "-q", "-f", "qcow2", "X", "100T"},
		"vmdk":     {"create", "-q", "-f", "vmdk", "X", "1M"},
		"vhdx":     {"create", "-q", "-f", "vhdx", "X", "1M"},
	}
	for name, args := range imgs {
		p := filepath.Join(tmp, name)
		for i, a := range args {
			if a == "X" {
				args[i] = p
			}
		}
		must(exec.Command("qemu-img", args...).Run())
		data, _ := os.ReadFile(p)
		h := data[:min(len(data), 1024)]
		seed(filepath.Join(out, "FuzzCheckHeader"), name, b(h), "int64("+strconv.Itoa(len(data)-len(data)%512)+")")
		if info, err := exec.Command("qemu-img", "info", "--output=json", "-f", map[bool]string{true: "vmdk", false: map[bool]string{true: "vhdx", false: "qcow2"}[name == "vhdx"]}[name == "vmdk"], p).Output(); err == nil {
			seed(filepath.Join(out, "FuzzParseInfo"), name, b(info), "string("+strconv.Quote("qcow2")+")")
		}
	}
	seed(filepath.Join(out, "FuzzCheckHeader"), "script", b([]byte("#!/bin/sh\necho hi\n")), "int64(18)")
	seed(filepath.Join(out, "FuzzCheckHeader"), "empty", b(nil), "int64(0)")
	tars := map[string][]tar.Header{
		"plain":    {{Name: "disk/", Typeflag: tar.TypeDir}, {Name: "disk/disk.qcow2", Typeflag: tar.TypeReg, Size: 4}},
		"escape":   {{Name: "../../etc/cron.d/x", Typeflag: tar.TypeReg, Size: 4}, {Name: "disk/disk.qcow2", Typeflag: tar.TypeReg, Size: 4}},
		"hardlink": {{Name: "disk/disk.qcow2", Typeflag: tar.TypeLink, Linkname: "../../../etc/shadow"}},
		"symlink":  {{Name: "disk/disk.img", Typeflag: tar.TypeSymlink, Linkname: "/dev/sda"}},
		"two":      {{Name: "disk/a.qcow2", Typeflag: tar.TypeReg, Size: 4}, {Name: "disk/b.raw.xz", Typeflag: tar.TypeReg, Size: 4}},
		"whiteout": {{Name: "disk/.wh.old.qcow2", Typeflag: tar.TypeReg}, {Name: "./disk/new.img.gz", Typeflag: tar.TypeReg, Size: 4}},
		"absolute": {{Name: "/disk/vm.raw", Typeflag: tar.TypeReg, Size: 4}},
		"empty":    {},
	}
	for name, hs := range tars {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for _, h := range hs {
			h := h
			h.Mode = 0o644
			must(tw.WriteHeader(&h))
			if h.Size > 0 {
				tw.Write([]byte("QFI\xfb")[:h.Size])
			}
		}
		tw.Close()
		seed(filepath.Join(out, "FuzzDiskSelector"), name, b(buf.Bytes()))
	}
}
