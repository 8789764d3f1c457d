package importer

import (
	"archive/tar"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/csi/image/imagetest"
)

// Broken and hostile images: each is refused with its own reason, as a terminal error,
// and leaves nothing in the cache.
func TestMaliciousImagesRefused(t *testing.T) {
	ctx := testCtx(t, 5*time.Minute)
	work := t.TempDir()
	host, counter := inProcessRegistry(t)
	good := makeQCOW2(t, work, "good.qcow2", "16M")

	secret := filepath.Join(work, "host-secret")
	if err := os.WriteFile(secret, []byte("host data an image must never reach\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	backing := makeQCOW2(t, work, "backing.qcow2", "16M", "-F", "raw", "-b", secret, "-u")
	huge := makeQCOW2(t, work, "huge.qcow2", "100T")
	dataFile := filepath.Join(work, "external.qcow2")
	run(t, "qemu-img", "create", "-q", "-f", "qcow2", "-o", "data_file="+secret+".raw", dataFile, "16M")
	encrypted := filepath.Join(work, "luks.qcow2")
	if err := imagetest.EncryptedQCOW2(t.Context(), encrypted, "16M"); err != nil {
		t.Fatal(err)
	}
	truncated := filepath.Join(work, "truncated.qcow2")
	b, _ := os.ReadFile(good)
	if err := os.WriteFile(truncated, b[:len(b)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	vmdk := filepath.Join(work, "disk.vmdk")
	run(t, "qemu-img", "create", "-q", "-f", "vmdk", vmdk, "16M")

	disk := func(name, path string) tarEntry { return fileEntry(t, name, path) }
	cases := []struct {
		name   string
		layers [][]byte
		tamper bool
		want   image.Reason
		words  string // must appear in the message
	}{
		{"backing file on a host path", [][]byte{layerTar(t, disk("disk/disk.qcow2", backing))}, false, image.ReasonBackingFile, secret},
		{"huge virtual size", [][]byte{layerTar(t, disk("disk/disk.qcow2", huge))}, false, image.ReasonVirtualSize, "virtual size"},
		{"truncated qcow2", [][]byte{layerTar(t, disk("disk/disk.qcow2", truncated))}, false, image.ReasonCorrupt, "corruptions"},
		{"path-escaping tar entry", [][]byte{layerTar(t, tarEntry{name: "../../etc/cron.d/evil", data: []byte("* * * * * root sh\n")}, disk("disk/disk.qcow2", good))}, false, image.ReasonPathEscape, "escapes"},
		{"hard link escaping", [][]byte{layerTar(t, disk("disk/disk.qcow2", good), tarEntry{name: "x", typeflag: tar.TypeLink, linkname: "../../../etc/shadow"})}, false, image.ReasonPathEscape, "escapes"},
		{"encrypted qcow2", [][]byte{layerTar(t, disk("disk/disk.qcow2", encrypted))}, false, image.ReasonEncrypted, "encrypted"},
		{"external data file", [][]byte{layerTar(t, disk("disk/disk.qcow2", dataFile))}, false, image.ReasonDataFile, "data file"},
		{"not an image (script named .qcow2)", [][]byte{layerTar(t, tarEntry{name: "disk/disk.qcow2", data: []byte("#!/bin/sh\nrm -rf /\n")})}, false, image.ReasonNotAnImage, "shell script"},
		{"not an image (text named .img)", [][]byte{layerTar(t, tarEntry{name: "disk/disk.img", data: []byte("hello, this is not a disk\n")})}, false, image.ReasonNotAnImage, "512-byte sectors"},
		{"vmdk", [][]byte{layerTar(t, disk("disk/disk.img", vmdk))}, false, image.ReasonUnsupported, "vmdk"},
		{"empty layer", [][]byte{layerTar(t)}, false, image.ReasonEmpty, "empty"},
		{"empty disk file", [][]byte{layerTar(t, tarEntry{name: "disk/disk.raw"})}, false, image.ReasonEmpty, "empty"},
		{"two files under /disk/", [][]byte{layerTar(t, disk("disk/a.qcow2", good), disk("disk/b.qcow2", good))}, false, image.ReasonSeveralDisks, "several"},
		{"two files across layers", [][]byte{layerTar(t, disk("disk/a.qcow2", good)), layerTar(t, disk("disk/b.img", good))}, false, image.ReasonSeveralDisks, "several"},
		{"no disk", [][]byte{layerTar(t, tarEntry{name: "etc/motd", data: []byte("hi")})}, false, image.ReasonNoDisk, "/disk/"},
		{"disk deleted by a whiteout", [][]byte{layerTar(t, disk("disk/a.qcow2", good)), layerTar(t, tarEntry{name: "disk/.wh.a.qcow2"})}, false, image.ReasonNoDisk, "deleted files count as gone"},
		{"a new disk beside the old, deleted a layer late", [][]byte{layerTar(t, disk("disk/a.qcow2", good)), layerTar(t, disk("disk/b.qcow2", good)), layerTar(t, tarEntry{name: "disk/.wh.a.qcow2"})}, false, image.ReasonSeveralDisks, "delete the old one"},
		{"/disk is a symlink", [][]byte{layerTar(t, tarEntry{name: "disk", typeflag: tar.TypeSymlink, linkname: "/dev"}, disk("dev/sda.img", good))}, false, image.ReasonUnsupported, "does not follow links"},
		{"symlink as the disk", [][]byte{layerTar(t, tarEntry{name: "disk/disk.qcow2", typeflag: tar.TypeSymlink, linkname: "/dev/sda"})}, false, image.ReasonNotAnImage, "not a regular file"},
		{"blob altered by the mirror", [][]byte{layerTar(t, disk("disk/disk.qcow2", good))}, true, image.ReasonDigest, "digest"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			img := containerDisk(t, false, tc.layers...)
			repo := host + "/bad/img" + string(rune('a'+i)) + ":1"
			push(t, img, repo)
			counter.tamper.Store(tc.tamper)
			defer counter.tamper.Store(false)
			dir := t.TempDir()
			c := newTestCache(t, dir, 0, Options{Limits: image.Limits{MaxVirtualSize: 64 << 30, CPUSeconds: 30, AddressSpace: 1 << 30, Timeout: time.Minute}})
			_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + repo}, "vol-1", nil)
			refused(t, err, tc.want)
			if !strings.Contains(err.Error(), tc.words) {
				t.Fatalf("message %q does not mention %q", err, tc.words)
			}
			t.Logf("%v", err)
			assertEmptyCache(t, dir)
		})
	}

	t.Run("wrong checksum over HTTP", func(t *testing.T) {
		srv := httptest.NewServer(http.FileServer(http.Dir(work)))
		defer srv.Close()
		dir := t.TempDir()
		c := newTestCache(t, dir, 0, Options{})
		_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: srv.URL + "/good.qcow2", Checksum: "sha256:" + strings.Repeat("0", 64)}, "vol-1", nil)
		refused(t, err, image.ReasonChecksum)
		t.Logf("%v", err)
		assertEmptyCache(t, dir)
	})
	t.Run("404 on every mirror", func(t *testing.T) {
		dir := t.TempDir()
		c := newTestCache(t, dir, 0, Options{})
		_, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/nothing/here:1", Mirrors: []string{host, host}}, "vol-1", nil)
		if err == nil || !IsTerminal(err) || !strings.Contains(err.Error(), "not found on any") {
			t.Fatalf("missing image: %v, want terminal 'not found on any'", err)
		}
		assertEmptyCache(t, dir)
	})
}
