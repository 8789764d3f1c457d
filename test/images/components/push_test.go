package components

import (
	"context"
	"encoding/base64"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/podvirt/podvirt/test/env/registry"
)

// TestPushToRegistry pushes images the way `podvirt-images push` does to a
// real registry that wants a login, with the credentials from a docker
// config: each lands under the name the chart's imageRegistry pulls, at its
// digest; a wrong password fails saying how to log in.
func TestPushToRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := registry.Start(ctx, registry.Options{Dir: t.TempDir(), Users: map[string]string{"alice": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	login := func(password string) {
		dir := t.TempDir()
		auth := base64.StdEncoding.EncodeToString([]byte("alice:" + password))
		cfg := fmt.Sprintf(`{"auths": {%q: {"auth": %q}}}`, r.Addr, auth)
		if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
			t.Fatal(err)
		}
		t.Setenv("DOCKER_CONFIG", dir)
	}

	var imgs []Image
	for _, n := range []string{Controller, CSIProvisioner} {
		img, err := random.Image(64<<10, 1)
		if err != nil {
			t.Fatal(err)
		}
		imgs = append(imgs, Image{Name: n, Ref: Ref(n), Image: img})
	}
	reg := r.Addr + "/mirror/podvirt"
	login("s3cret")
	pushed, err := Push(ctx, reg, true, imgs, nil)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{reg + "/podvirt-controller:" + Tag, reg + "/csi-provisioner:" + sidecarVersion(CSIProvisioner)}
	if strings.Join(pushed, " ") != strings.Join(want, " ") {
		t.Fatalf("pushed %v, want %v", pushed, want)
	}
	for i, ref := range pushed {
		parsed, err := name.ParseReference(ref, name.Insecure)
		if err != nil {
			t.Fatal(err)
		}
		got, err := remote.Image(parsed, remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
		if err != nil {
			t.Fatalf("pull %s: %v", ref, err)
		}
		if d, w := mustDigest(t, got), mustDigest(t, imgs[i].Image); d != w {
			t.Errorf("%s has digest %s, pushed %s", ref, d, w)
		}
	}

	login("wrong")
	if _, err := Push(ctx, reg, true, imgs[:1], nil); err == nil || !strings.Contains(err.Error(), "docker login "+r.Addr) {
		t.Errorf("push with a wrong password: %v; want an error that says docker login %s", err, r.Addr)
	}
}

func mustDigest(t *testing.T, img v1.Image) string {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}
