package importer

import (
	"testing"
	"time"
)

// A containerDisk built in steps is read as a container runtime unpacks it: a later
// layer's disk replaces an earlier one, whiteouts and opaque whiteouts delete it. With
// small checkpoints, so dropping a disk already written also drops its checkpoint.
func TestImportHonoursLayerReplacesAndWhiteouts(t *testing.T) {
	ctx := testCtx(t, 2*time.Minute)
	work := t.TempDir()
	host, _ := inProcessRegistry(t)
	old := makeRandomQCOW2(t, work, "old.qcow2", 2, "8M")
	want := makeRandomQCOW2(t, work, "new.qcow2", 3, "8M")
	oldDisk := fileEntry(t, "disk/disk.qcow2", old)
	for i, tc := range []struct {
		name   string
		layers [][]byte
	}{
		{"same path in a later layer", [][]byte{layerTar(t, oldDisk), layerTar(t, fileEntry(t, "disk/disk.qcow2", want))}},
		{"whiteout and another disk", [][]byte{layerTar(t, oldDisk), layerTar(t, tarEntry{name: "disk/.wh.disk.qcow2"}, fileEntry(t, "disk/new.img", want))}},
		{"another disk and the whiteout after it", [][]byte{layerTar(t, oldDisk), layerTar(t, fileEntry(t, "disk/new.img", want), tarEntry{name: "disk/.wh.disk.qcow2"})}},
		{"opaque /disk/", [][]byte{layerTar(t, oldDisk), layerTar(t, fileEntry(t, "disk/new.qcow2", want), tarEntry{name: "disk/.wh..wh..opq"})}},
		{"/disk whited out", [][]byte{layerTar(t, oldDisk), layerTar(t, tarEntry{name: ".wh.disk"}, fileEntry(t, "disk/new.qcow2", want))}},
		{"deleted, then added back in a third layer", [][]byte{layerTar(t, oldDisk), layerTar(t, tarEntry{name: "disk/.wh.disk.qcow2"}), layerTar(t, fileEntry(t, "disk/disk.qcow2", want))}},
	} {
		for _, uncompressed := range []bool{true, false} {
			name := tc.name + " (gzip layers)"
			if uncompressed {
				name = tc.name + " (tar layers)"
			}
			t.Run(name, func(t *testing.T) {
				ref := host + "/layers/i" + string(rune('a'+i)) + ":" + map[bool]string{true: "tar", false: "gz"}[uncompressed]
				push(t, containerDisk(t, uncompressed, tc.layers...), ref)
				c := newTestCache(t, t.TempDir(), 0, Options{CheckpointBytes: 256 << 10})
				base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + ref}, "vol-1", nil)
				if err != nil {
					t.Fatal(err)
				}
				sameContent(t, base.Path, want)
			})
		}
	}
}
