package e2e

import (
	"fmt"
	"os/exec"
	"strings"
	"testing"
	"time"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestImagePushThenVM publishes the test guest's disk file with `podvirtctl
// image push` to both registries the StorageClass names, checks they serve
// one digest, stops the first, and starts a VM from that image: its disk
// is imported through the mirror that is still up. `image inspect` then
// says which registry holds it.
func TestImagePushThenVM(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	art, err := guest.Build(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	down, up := st.Mirrors.Down, st.Mirrors.Up
	// The first mirror is down for every other test: up only for the push.
	if err := down.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(down.Stop)
	tag := fmt.Sprintf("pushed-%d", time.Now().UnixNano())
	ref := down.Addr + "/" + stack.GuestRepo + ":" + tag
	out, err := exec.CommandContext(ctx, bin, "image", "push", art.Disk, ref, "--mirror", up.Addr, "--insecure").CombinedOutput()
	if err != nil {
		t.Fatalf("podvirtctl image push: %v\n%s", err, out)
	}
	var digests []string
	for line := range strings.Lines(string(out)) {
		if f := strings.Fields(line); len(f) == 2 && strings.HasSuffix(f[0], ":"+tag) && strings.HasPrefix(f[1], "sha256:") {
			digests = append(digests, f[1])
		}
	}
	if len(digests) != 2 || digests[0] != digests[1] {
		t.Fatalf("image push should print both registries with one digest; printed:\n%s", out)
	}
	down.Stop()
	if stack.Reachable(down.Addr) {
		t.Fatalf("the first mirror %s still answers after Stop", down.Addr)
	}

	const name = "pushed"
	vm := stack.VM(name, v1.RunStrategyAlways)
	vm.Spec.DiskTemplates[0].ObjectMeta.Annotations[v1.DiskSourceAnnotation] = "docker://registry.podvirt.local/" + stack.GuestRepo + ":" + tag
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	// Running with an L2 address: the guest booted from the pushed disk.
	if _, err := st.WaitRunning(ctx, name, 10*time.Minute); err != nil {
		t.Fatal(err)
	}

	out, err = exec.CommandContext(ctx, bin, "image", "inspect", ref, "--mirror", up.Addr, "--insecure").CombinedOutput()
	// Its table's lines, by their first words (tabwriter pads them).
	said := map[string]bool{}
	for line := range strings.Lines(string(out)) {
		f := strings.Fields(line)
		for i := 1; i <= min(len(f), 3); i++ {
			said[strings.Join(f[:i], " ")] = true
		}
	}
	if err == nil || !said["digest: "+digests[0]] || !said["format: qcow2"] || !said[up.Addr+" holds it"] || !said[down.Addr+" missing:"] {
		t.Errorf("image inspect with the first registry down: %v; want a failure listing %s holding %s (qcow2) and %s missing:\n%s",
			err, up.Addr, digests[0], down.Addr, out)
	}
}
