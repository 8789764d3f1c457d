package launcher

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestOnlineSnapshot runs one guest (one boot, for the suite's time) with
// a root disk and two data disks it writes a sequence number to in turn,
// and a counter in RAM. It sees the guest agent connect and say which OS
// the guest runs; switches all three disks to new overlays with the agent
// freezing the filesystems, then with the agent hung (stopped in the
// guest), when the guest is paused instead and runs on; checks that each
// switch cut the two data disks at most one write apart and that the
// volume's metadata and the chain follow; merges the layers as a live
// migration does; and last saves the memory with the disks and starts the
// VM afresh (a new VMI) from new overlays and that memory: the counter
// goes on instead of being gone, as after a boot.
func TestOnlineSnapshot(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "snapshot")
	dir := filepath.Dir(vm.console)
	if err := writeMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2}); err != nil {
		t.Fatal(err)
	}
	disks := map[string]string{"root": filepath.Join(dir, "root.qcow2")}
	for _, name := range []string{"one", "two"} {
		vm.vmi.Spec.Domain.Devices.Disks = append(vm.vmi.Spec.Domain.Devices.Disks, v1.Disk{Name: name, Serial: name})
		vm.vmi.Spec.Volumes = append(vm.vmi.Spec.Volumes, v1.Volume{Name: name,
			VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: name}}})
		ddir := t.TempDir()
		disks[name] = filepath.Join(ddir, "disk.img")
		qemuImg(t, "create", "-q", "-f", "qcow2", disks[name], "16M")
		if err := writeMeta(ddir, diskmeta.Meta{Format: diskmeta.FormatQCOW2}); err != nil {
			t.Fatal(err)
		}
	}
	vm.xml = renderDisks(t, vm.vmi, dir, disks)
	l := startVM(t, d, vm)
	waitConsole(t, vm.console, 0, guest.CloudInitMarker, bootLimit)
	waitAgent(t, l)
	// The agent's connection came as an event; it said which OS it runs.
	deadline := time.Now().Add(time.Minute)
	for h := l.Health(); !h.GuestAgent || h.OSInfo == nil || h.OSInfo.GetKernelRelease() == ""; h = l.Health() {
		if time.Now().After(deadline) {
			t.Fatalf("health %+v: want the agent connected with the guest's kernel release", h)
		}
		time.Sleep(100 * time.Millisecond)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	run := func(cmd string) {
		t.Helper()
		rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
		defer rcancel()
		if err := l.guestExec(rctx, []string{"/bin/sh", "-c", cmd}); err != nil {
			t.Fatalf("guest-exec %q: %v", cmd, err)
		}
	}
	run(`for b in /sys/block/vd*; do s=$(cat $b/serial 2>/dev/null); [ "$s" = one ] && A=/dev/${b##*/}; [ "$s" = two ] && B=/dev/${b##*/}; done
(i=0; while :; do i=$((i+1)); printf '%08d' $i | dd of=$A conv=fsync,notrunc 2>/dev/null; printf '%08d' $i | dd of=$B conv=fsync,notrunc 2>/dev/null; done) >/dev/null 2>&1 &
(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done) >/dev/null 2>&1 &`)
	deadline = time.Now().Add(time.Minute)
	for sequence(t, disks["two"]) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the guest's loop writes nothing")
		}
		time.Sleep(200 * time.Millisecond)
	}
	all := func(layer string) map[string]string {
		return map[string]string{"root": layer, "one": layer, "two": layer}
	}
	inStep := func(layer string) {
		t.Helper()
		a, b := sequence(t, filepath.Join(filepath.Dir(disks["one"]), layer)), sequence(t, filepath.Join(filepath.Dir(disks["two"]), layer))
		t.Logf("%s: disk one %d, disk two %d", layer, a, b)
		if b < 0 || a < b || a-b > 1 {
			t.Errorf("%s: disk one holds %d and disk two %d; want them equal or one apart", layer, a, b)
		}
	}

	res, err := l.snapshotDisks(ctx, all("layer-s1.img"), 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with the agent: %+v", res)
	if !res.GuestAgent || !res.Quiesced || res.Paused || res.Frozen <= 0 || res.Frozen > 10*time.Second {
		t.Errorf("with a working agent: %+v; want quiesced, not paused", res)
	}
	checkSwitched(t, l, dir, "top-s1.img", "layer-s1.img")
	inStep("layer-s1.img")
	// Again for the same layers: nothing done, the same answer.
	if again, err := l.snapshotDisks(ctx, all("layer-s1.img"), time.Second, ""); err != nil || again != res {
		t.Errorf("a repeated switch: %+v, %v; want nothing done and the first answer %+v", again, err, res)
	}

	// The agent hangs: the guest is paused for the switch and resumed.
	// (The guest lets the agent go on again 12 s later.)
	run("(sleep 1; kill -STOP $(pidof qemu-ga); sleep 12; kill -CONT $(pidof qemu-ga)) >/dev/null 2>&1 &")
	deadline = time.Now().Add(30 * time.Second)
	for {
		pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := l.agentCommand(pctx, map[string]any{"execute": "guest-ping"})
		pcancel()
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the guest agent still answers after it was stopped")
		}
	}
	start := time.Now()
	res, err = l.snapshotDisks(ctx, all("layer-s2.img"), 2*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with a hung agent: %+v in %s", res, time.Since(start))
	if res.Quiesced || !res.Paused || res.AgentError == "" {
		t.Errorf("with a hung agent: %+v; want paused, saying why", res)
	}
	if st, _ := l.State(); st != v1.DomainRunning {
		t.Errorf("after the paused snapshot the domain is %s, want Running", st)
	}
	checkSwitched(t, l, dir, "top-s2.img", "layer-s2.img", "layer-s1.img")
	inStep("layer-s2.img")

	// A live migration first merges the layers into the top, keeping the
	// base.
	dom, err := l.domain()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.pullLayers(ctx, dom, []string{"vda"}); err != nil {
		t.Fatal(err)
	}
	chain := liveChain(t, l)
	if len(chain) != 2 || filepath.Base(chain[0]) != "top-s2.img" || filepath.Base(chain[1]) != baseImage {
		t.Errorf("chain after merging the layers %v; want top-s2.img on %s", chain, baseImage)
	}
	if b := backingFile(t, filepath.Join(dir, "top-s2.img")); b != baseImage {
		t.Errorf("top-s2.img names %q as its backing file, want %s, relatively", b, baseImage)
	}

	// The agent wakes and runs the freeze it missed; the launcher's late
	// thaw follows, so the guest is not left frozen.
	waitAgent(t, l)
	deadline = time.Now().Add(time.Minute)
	for {
		out, err := l.agentCommand(ctx, map[string]any{"execute": "guest-fsfreeze-status"})
		if err == nil && string(out) == `"thawed"` {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest's filesystems are %s (%v) a minute after its agent woke: the late freeze was not thawed", out, err)
		}
		time.Sleep(500 * time.Millisecond)
	}

	// With the memory, once the agent is back (to read the counter).
	res, err = l.snapshotDisks(ctx, all("layer-m.img"), 5*time.Second, "root")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with memory: %+v", res)
	memory := filepath.Join(dir, diskmeta.MemoryFor("layer-m.img"))
	if fi, err := os.Stat(memory); !res.MemorySaved || err != nil || fi.Size() < 16<<20 {
		t.Fatalf("memory state %s: %+v, %v", memory, res, err)
	}
	inStep("layer-m.img")
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Restored volumes, as csi/volume.Restore makes them: an empty
	// overlay on each layer, the memory linked as memory.img and marked
	// to resume; a new VMI of the same VM (another UID, the same MACs).
	restored := map[string]string{}
	for vol, path := range disks {
		restored[vol] = filepath.Join(filepath.Dir(path), "restored.qcow2")
		qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "layer-m.img", "-F", "qcow2", restored[vol])
	}
	if err := os.Link(memory, filepath.Join(dir, diskmeta.MemoryName)); err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2, Layers: []string{"layer-m.img"}, Resume: diskmeta.MemoryName}); err != nil {
		t.Fatal(err)
	}
	next := vm.vmi.DeepCopy()
	next.UID = types.UID(newUID(t))
	xml := renderDisks(t, next, dir, restored)
	sources := map[string]converter.DiskSource{}
	for vol, path := range restored {
		sources[vol] = converter.DiskSource{Path: path, Format: diskmeta.FormatQCOW2}
	}
	mem, memDir := resumeState(converter.Options{Disks: sources})
	if mem != filepath.Join(dir, diskmeta.MemoryName) || memDir != dir {
		t.Fatalf("resumeState = %q, %q", mem, memDir)
	}
	l2, err := New(d.URI, converter.DomainName(next))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l2.Close() })
	resumed, err := l2.StartResumed(xml, mem)
	if err != nil || !resumed {
		t.Fatalf("StartResumed = %v, %v; health %+v", resumed, err, l2.Health())
	}
	if err := clearResume(memDir); err != nil {
		t.Fatal(err)
	}
	// No boot: the counter in /tmp is there.
	waitAgent(t, l2)
	if _, err := l2.agentCommand(ctx, map[string]any{"execute": "guest-file-open", "arguments": map[string]any{"path": "/tmp/count"}}); err != nil {
		t.Errorf("the counter is gone after the resume (a boot, not a resume?): %v", err)
	}
	if m, err := diskmeta.Read(dir); err != nil || m.Resume != "" {
		t.Errorf("meta after the resume %+v, %v: want the resume mark cleared", m, err)
	}
	if st, _ := l2.State(); st != v1.DomainRunning {
		t.Errorf("the resumed domain is %s, want Running", st)
	}
}

// sequence is the 8-digit number at the start of a disk image (through
// its chain), -1 when none was written there.
func sequence(t *testing.T, image string) int {
	t.Helper()
	out, err := exec.Command("qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -v 0 8", image).CombinedOutput()
	if err != nil {
		t.Fatalf("qemu-io %s: %v: %s", image, err, out)
	}
	// "00000000:  30 30 30 30 30 31 32 33  00000123"
	fields := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
	n, err := strconv.Atoi(fields[len(fields)-1])
	if err != nil {
		return -1
	}
	return n
}

func backingFile(t *testing.T, image string) string {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", "-f", "qcow2", image).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatal(err)
	}
	return info.Backing
}

// checkSwitched checks the volume's metadata and the domain's chain after
// a switch to top over layers (newest first).
func checkSwitched(t *testing.T, l *Launcher, dir, top string, layers ...string) {
	t.Helper()
	m, err := diskmeta.Read(dir)
	if err != nil {
		t.Fatal(err)
	}
	if m.Top != top || !slices.Equal(m.Layers, layers) {
		t.Errorf("volume metadata %+v; want top %s over %v", m, top, layers)
	}
	if chain := liveChain(t, l); len(chain) != len(layers)+2 || filepath.Base(chain[0]) != top {
		t.Errorf("the domain's chain %v; want %s over %d layers and the base", chain, top, len(layers))
	}
}

// liveChain is the root disk's backing chain as libvirt has it, top first.
func liveChain(t *testing.T, l *Launcher) []string {
	t.Helper()
	d, err := l.domain()
	if err != nil {
		t.Fatal(err)
	}
	dom, err := liveDefinition(d)
	if err != nil {
		t.Fatal(err)
	}
	disk := volumeDisk(dom, "root")
	if disk == nil {
		t.Fatal("no root disk")
	}
	chain := []string{disk.Source.File.File}
	for bs := disk.BackingStore; bs != nil && bs.Source != nil && bs.Source.File != nil; bs = bs.BackingStore {
		chain = append(chain, bs.Source.File.File)
	}
	return chain
}
