package importer

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/podvirt/podvirt/internal/polltest"
)

// The crash test runs an import in a child process (this test binary, re-executed) and
// SIGKILLs it mid-download.
const childEnv = "PODVIRT_IMPORTER_CHILD"

func TestMain(m *testing.M) {
	if os.Getenv(childEnv) != "" {
		os.Exit(childImport())
	}
	os.Exit(m.Run())
}

func childImport() int {
	ckpt, _ := strconv.ParseInt(os.Getenv("CKPT_BYTES"), 10, 64)
	c, err := NewCacheWithOptions(os.Getenv("CACHE_DIR"), 0, nil, Options{CheckpointBytes: ckpt})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	if _, err := c.Acquire(context.Background(), Source{AllowPrivate: true, URL: os.Getenv("SOURCE_URL")}, "vol-child", nil); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	return 0
}

// Kill the importing process mid-download, start again on the same cache: the import
// completes with the right digest. An uncompressed layer resumes from its last checkpoint
// (Range), so the second run downloads only the rest; a gzip layer cannot resume (the
// decompressor's state is not saved) and is downloaded and verified again from the start.
func TestKillMidImportThenRestart(t *testing.T) {
	for _, tc := range []struct {
		name         string
		uncompressed bool
	}{{"uncompressed layer resumes", true}, {"gzip layer starts over", false}} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := testCtx(t, 4*time.Minute)
			work := t.TempDir()
			disk := makeRandomQCOW2(t, work, "k.qcow2", 48, "128M")
			img := containerDisk(t, tc.uncompressed, layerTar(t, fileEntry(t, "disk/disk.qcow2", disk)))
			layers, _ := img.Layers()
			blobSize, _ := layers[0].Size()
			host, counter := inProcessRegistry(t)
			push(t, img, host+"/os/k:1")
			counter.delay.Store(int64(5 * time.Millisecond)) // ~13 MB/s: the kill lands mid-download

			dir := t.TempDir()
			child := exec.Command(os.Args[0], "-test.run=^$")
			child.Env = append(os.Environ(), childEnv+"=1", "CACHE_DIR="+dir, "SOURCE_URL=docker://"+host+"/os/k:1",
				"CKPT_BYTES="+strconv.Itoa(4<<20))
			child.Stderr = os.Stderr
			if err := child.Start(); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = child.Process.Kill(); _ = child.Wait() })
			var cp *checkpoint
			deadline := time.Now().Add(2 * time.Minute)
			for {
				if tc.uncompressed {
					states, _ := filepath.Glob(filepath.Join(dir, "partial", "*", partialState))
					if len(states) == 1 {
						if c, err := loadCheckpoint(filepath.Dir(states[0])); err == nil && c.BlobOffset >= blobSize/3 {
							break
						}
					}
				} else if counter.blobBytes.Load() >= blobSize/3 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("the child never got a third into the download (%d of %d bytes served)", counter.blobBytes.Load(), blobSize)
				}
				time.Sleep(20 * time.Millisecond)
			}
			if err := child.Process.Signal(syscall.SIGKILL); err != nil {
				t.Fatal(err)
			}
			_ = child.Wait()
			if ws, ok := child.ProcessState.Sys().(syscall.WaitStatus); !ok || ws.Signal() != syscall.SIGKILL {
				t.Fatalf("child ended by %v before the kill: the test did not interrupt it", child.ProcessState)
			}
			states, _ := filepath.Glob(filepath.Join(dir, "partial", "*", partialState))
			if tc.uncompressed {
				if len(states) != 1 {
					t.Fatalf("no checkpoint after the kill")
				}
				cp, _ = loadCheckpoint(filepath.Dir(states[0]))
			} else if len(states) != 0 {
				t.Fatalf("a gzip import wrote a checkpoint it cannot resume from: %v", states)
			}
			if bases, _ := filepath.Glob(filepath.Join(dir, "bases", "*")); len(bases) != 0 {
				t.Fatalf("a half-written base is in the cache: %v", bases)
			}
			// The registry may still push bytes into the dead child's connection until it
			// notices the close; count them as served before the restart.
			polltest.Until(t, time.Minute, "the registry to stop serving the killed child's download",
				func() bool { return counter.inFlight.Load() == 0 })
			servedBefore := counter.blobBytes.Load()
			counter.delay.Store(0)

			c := newTestCache(t, dir, 0, Options{})
			base, err := c.Acquire(ctx, Source{AllowPrivate: true, URL: "docker://" + host + "/os/k:1"}, "vol-1", nil)
			if err != nil {
				t.Fatal(err)
			}
			if base.Digest != digestOf(t, img) {
				t.Fatalf("digest %s, want %s", base.Digest, digestOf(t, img))
			}
			sameContent(t, disk, base.Path)
			if fileSHA256(t, disk) != fileSHA256(t, base.Path) {
				t.Fatal("resumed base differs from the source disk")
			}
			second := counter.blobBytes.Load() - servedBefore
			t.Logf("blob %d bytes; before the kill %d served; after restart %d downloaded", blobSize, servedBefore, second)
			if tc.uncompressed {
				if want := blobSize - cp.BlobOffset; second != want {
					t.Fatalf("restart downloaded %d bytes, want exactly the %d after the checkpoint at %d", second, want, cp.BlobOffset)
				}
			} else if second != blobSize {
				t.Fatalf("restart downloaded %d bytes, want the whole blob (%d) again", second, blobSize)
			}
			if parts, _ := os.ReadDir(filepath.Join(dir, "partial")); len(parts) != 0 {
				t.Fatalf("partial imports left after completion: %v", parts)
			}
		})
	}
}
