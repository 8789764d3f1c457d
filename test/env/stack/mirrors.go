package stack

import (
	"context"
	"fmt"
	"net"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"github.com/podvirt/podvirt/test/env/registry"
	"github.com/podvirt/podvirt/test/images/guest"
)

// GuestRepo is the repository the test guest's containerDisk is pushed to.
const GuestRepo = "podvirt/guest"

// Mirrors is a registry pair holding the test guest as a containerDisk:
// two real registry processes, the first of which is stopped after the push,
// so a StorageClass naming both shows the CSI driver failing over.
type Mirrors struct {
	Down, Up *registry.Registry
	// Digest is the guest image's manifest digest, the same on both.
	Digest string
	guest  v1.Image
}

// StartMirrors runs the pair on host (an address the CSI driver reaches:
// the node IP), under dir, pushes the guest to both and stops the first.
// detach keeps the processes after this one exits (the demo); `make down`
// stops them when dir is under the cluster dir.
func StartMirrors(ctx context.Context, dir, host string, detach bool) (*Mirrors, error) {
	art, err := guest.Build(ctx)
	if err != nil {
		return nil, fmt.Errorf("building the test guest: %w", err)
	}
	img, err := guest.ContainerDisk(art)
	if err != nil {
		return nil, err
	}
	m := &Mirrors{guest: img}
	for i, r := range []**registry.Registry{&m.Down, &m.Up} {
		reg, err := registry.Start(ctx, registry.Options{
			Dir: filepath.Join(dir, fmt.Sprintf("mirror-%d", i+1)), Host: host, Detach: detach,
		})
		if err != nil {
			m.Stop()
			return nil, err
		}
		*r = reg
		ref, err := reg.Push(ctx, GuestRepo+":latest", img)
		if err != nil {
			m.Stop()
			return nil, err
		}
		m.Digest = ref[len(ref)-len("sha256:")-64:]
	}
	m.Down.Stop()
	return m, nil
}

// Hosts are the mirrors in the order a StorageClass lists them: the
// stopped one first.
func (m *Mirrors) Hosts() []string { return []string{m.Down.Addr, m.Up.Addr} }

// GuestSource is the PVC source annotation for the guest image. Its
// registry name is logical: the StorageClass's mirrors serve it.
const GuestSource = "docker://" + guestRegistry + "/" + GuestRepo + ":latest"

const guestRegistry = "registry.podvirt.local"

// GuestSourceTagged is the PVC source of the guest as GuestRepo:tag (what
// PushFresh returns), before or after it is pushed.
func GuestSourceTagged(tag string) string {
	return "docker://" + guestRegistry + "/" + GuestRepo + ":" + tag
}

// PushFresh pushes the guest to the mirror that is up as GuestRepo:tag,
// annotated with tag so its manifest digest is new: a disk from it is
// imported through the mirrors (the stopped one first), never served from
// a node's cache, whatever ran before. It returns the PVC source.
func (m *Mirrors) PushFresh(ctx context.Context, tag string) (string, error) {
	img, ok := mutate.Annotations(m.guest, map[string]string{"podvirt.io/test-variant": tag}).(v1.Image)
	if !ok {
		return "", fmt.Errorf("annotating the guest image for tag %s", tag)
	}
	if _, err := m.Up.Push(ctx, GuestRepo+":"+tag, img); err != nil {
		return "", err
	}
	return GuestSourceTagged(tag), nil
}

// PushNotADisk pushes, as GuestRepo:tag on the mirror that is up, an image
// with no disk under /disk/: its import is refused for good. It returns the
// PVC source.
func (m *Mirrors) PushNotADisk(ctx context.Context, tag string) (string, error) {
	if _, err := m.Up.Push(ctx, GuestRepo+":"+tag, empty.Image); err != nil {
		return "", err
	}
	return GuestSourceTagged(tag), nil
}

// Stop stops both registries.
func (m *Mirrors) Stop() {
	for _, r := range []*registry.Registry{m.Down, m.Up} {
		if r != nil {
			r.Stop()
		}
	}
}

// Reachable reports whether addr accepts TCP connections (a stopped
// mirror must not).
func Reachable(addr string) bool {
	c, err := net.Dial("tcp", addr)
	if err != nil {
		return false
	}
	c.Close()
	return true
}
