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
	"libvirt.org/go/libvirtxml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestOnlineSnapshot sees the guest agent connect and say which OS the
// guest runs, then switches the running guest's disk to new overlays
// twice: with its agent freezing the filesystems, then with the agent
// hung (stopped in the guest), when the guest is paused instead and runs
// on after. The volume's metadata and the chain follow each switch, and a
// live migration's merge leaves the top on the base alone.
func TestOnlineSnapshot(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "snapshot")
	dir := filepath.Dir(vm.console)
	if err := writeMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2}); err != nil {
		t.Fatal(err)
	}
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
	run := func(cmd string) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.guestExec(ctx, []string{"/bin/sh", "-c", cmd}); err != nil {
			t.Fatalf("guest-exec %q: %v", cmd, err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	run("echo one > /marker && sync")
	res, err := l.snapshotDisks(ctx, map[string]string{"root": "layer-s1.img"}, 10*time.Second, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with the agent: %+v", res)
	if !res.GuestAgent || !res.Quiesced || res.Paused || res.Frozen <= 0 || res.Frozen > 10*time.Second {
		t.Errorf("with a working agent: %+v; want quiesced, not paused", res)
	}
	checkSwitched(t, l, dir, "top-s1.img", "layer-s1.img")
	// Again for the same layer: nothing to do.
	if again, err := l.snapshotDisks(ctx, map[string]string{"root": "layer-s1.img"}, time.Second, ""); err != nil || again != res {
		t.Errorf("a repeated switch: %+v, %v; want nothing done and the first answer %+v", again, err, res)
	}
	run("echo two > /marker && sync")

	// The agent hangs: the guest is paused for the switch and resumed.
	run("(sleep 1; kill -STOP $(pidof qemu-ga)) >/dev/null 2>&1 &")
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
	res, err = l.snapshotDisks(ctx, map[string]string{"root": "layer-s2.img"}, 2*time.Second, "")
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
	out, err := exec.Command("qemu-img", "info", "-U", "--output=json", "-f", "qcow2", filepath.Join(dir, "top-s2.img")).Output()
	if err != nil {
		t.Fatal(err)
	}
	var info struct {
		Backing string `json:"backing-filename"`
	}
	if err := json.Unmarshal(out, &info); err != nil || info.Backing != baseImage {
		t.Errorf("top-s2.img names %q as its backing file (%v), want %s, relatively", info.Backing, err, baseImage)
	}
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
	x, err := d.GetXMLDesc(0)
	if err != nil {
		t.Fatal(err)
	}
	var dom libvirtxml.Domain
	if err := dom.Unmarshal(x); err != nil {
		t.Fatal(err)
	}
	disk := volumeDisk(&dom, "root")
	if disk == nil {
		t.Fatal("no root disk")
	}
	chain := []string{disk.Source.File.File}
	for bs := disk.BackingStore; bs != nil && bs.Source != nil && bs.Source.File != nil; bs = bs.BackingStore {
		chain = append(chain, bs.Source.File.File)
	}
	return chain
}

// TestMemorySnapshot saves a running guest's memory with its disk, then
// starts the VM afresh (a new VMI) from a new overlay on the frozen layer
// and that memory: a counter the guest ran in RAM (/tmp) goes on from where it
// was instead of being gone, as after a boot.
func TestMemorySnapshot(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "memsnap")
	dir := filepath.Dir(vm.console)
	if err := writeMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2}); err != nil {
		t.Fatal(err)
	}
	l := startVM(t, d, vm)
	waitConsole(t, vm.console, 0, guest.CloudInitMarker, bootLimit)
	waitAgent(t, l)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	if err := l.guestExec(ctx, []string{"/bin/sh", "-c", "(i=0; while :; do i=$((i+1)); echo $i > /tmp/count; sleep 1; done) >/dev/null 2>&1 &"}); err != nil {
		t.Fatal(err)
	}
	res, err := l.snapshotDisks(ctx, map[string]string{"root": "layer-m.img"}, 5*time.Second, "root")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("with memory: %+v", res)
	if !res.MemorySaved {
		t.Fatalf("memory not saved: %+v", res)
	}
	memory := filepath.Join(dir, diskmeta.MemoryFor("layer-m.img"))
	if fi, err := os.Stat(memory); err != nil || fi.Size() < 16<<20 {
		t.Fatalf("memory state %s: %v", memory, err)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}

	// A restored volume, as csi/volume.Restore makes it: an empty overlay
	// on the layer, the memory linked as memory.img and marked to resume.
	restored := filepath.Join(dir, "restored.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", "layer-m.img", "-F", "qcow2", restored)
	if err := os.Link(memory, filepath.Join(dir, diskmeta.MemoryName)); err != nil {
		t.Fatal(err)
	}
	if err := writeMeta(dir, diskmeta.Meta{Format: diskmeta.FormatQCOW2, BaseFormat: diskmeta.FormatQCOW2, Layers: []string{"layer-m.img"}, Resume: diskmeta.MemoryName}); err != nil {
		t.Fatal(err)
	}
	// A new VMI of the same VM: another UID, the same MACs.
	next := vm.vmi.DeepCopy()
	next.UID = types.UID(newUID(t))
	again := renderTestVM(t, next, dir, restored, converter.Options{})
	mem, memDir := resumeState(converter.Options{Disks: map[string]converter.DiskSource{"root": {Path: restored, Format: diskmeta.FormatQCOW2}}})
	if mem != filepath.Join(dir, diskmeta.MemoryName) || memDir != dir {
		t.Fatalf("resumeState = %q, %q", mem, memDir)
	}
	l2, err := New(d.URI, converter.DomainName(again.vmi))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = l2.Close() })
	resumed, err := l2.StartResumed(again.xml, mem)
	if err != nil || !resumed {
		t.Fatalf("StartResumed = %v, %v; health %+v", resumed, err, l2.Health())
	}
	if err := clearResume(memDir); err != nil {
		t.Fatal(err)
	}
	// No boot: the agent answers at once and the counter is there.
	waitAgent(t, l2)
	out, err := l2.agentCommand(ctx, map[string]any{"execute": "guest-file-open", "arguments": map[string]any{"path": "/tmp/count"}})
	if err != nil {
		t.Fatalf("the counter is gone after the resume (a boot, not a resume?): %v", err)
	}
	t.Logf("counter file handle after the resume: %s", out)
}

// TestOnlineSnapshotAcrossDisks: the guest writes a sequence number to two
// disks in turn, without pause; one switch of both disks keeps numbers
// that agree or differ by the one write in flight.
func TestOnlineSnapshotAcrossDisks(t *testing.T) {
	d := startDaemon(t)
	vm := newTestVM(t, "lockstep")
	dir := filepath.Dir(vm.console)
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
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	loop := `for b in /sys/block/vd*; do s=$(cat $b/serial 2>/dev/null); [ "$s" = one ] && A=/dev/${b##*/}; [ "$s" = two ] && B=/dev/${b##*/}; done
(i=0; while :; do i=$((i+1)); printf '%08d' $i | dd of=$A conv=fsync,notrunc 2>/dev/null; printf '%08d' $i | dd of=$B conv=fsync,notrunc 2>/dev/null; done) >/dev/null 2>&1 &`
	if err := l.guestExec(ctx, []string{"/bin/sh", "-c", loop}); err != nil {
		t.Fatal(err)
	}
	read := func(image string) int {
		t.Helper()
		out, err := exec.Command("qemu-io", "-r", "-U", "-f", "qcow2", "-c", "read -v 0 8", image).CombinedOutput()
		if err != nil {
			t.Fatalf("qemu-io %s: %v: %s", image, err, out)
		}
		// "00000000:  30 30 30 30 30 31 32 33  00000123"
		fields := strings.Fields(strings.SplitN(string(out), "\n", 2)[0])
		n, err := strconv.Atoi(fields[len(fields)-1])
		if err != nil {
			return -1 // nothing written yet
		}
		return n
	}
	// Wait until the loop has written a few rounds.
	deadline := time.Now().Add(time.Minute)
	for read(disks["two"]) < 3 {
		if time.Now().After(deadline) {
			t.Fatal("the guest's loop writes nothing")
		}
		time.Sleep(200 * time.Millisecond)
	}
	for i, layer := range []string{"layer-x1.img", "layer-x2.img", "layer-x3.img"} {
		if _, err := l.snapshotDisks(ctx, map[string]string{"one": layer, "two": layer}, 5*time.Second, ""); err != nil {
			t.Fatal(err)
		}
		a, b := read(filepath.Join(filepath.Dir(disks["one"]), layer)), read(filepath.Join(filepath.Dir(disks["two"]), layer))
		t.Logf("snapshot %d: disk one %d, disk two %d", i+1, a, b)
		if b < 0 || a < b || a-b > 1 {
			t.Errorf("snapshot %d: disk one holds %d and disk two %d; want them equal or one apart", i+1, a, b)
		}
	}
}
