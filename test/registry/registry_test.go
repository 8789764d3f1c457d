package registry

import (
	"context"
	"errors"
	"net/http"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

func TestTLSWithAuth(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Start(ctx, Options{Dir: t.TempDir(), TLS: true, Users: map[string]string{"alice": "s3cret"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)

	img, err := random.Image(1<<20, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := r.Push(ctx, "os/guest:1", img)
	if err != nil {
		t.Fatal(err)
	}
	want, _ := img.Digest()
	parsed, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}

	got, err := remote.Image(parsed, remote.WithContext(ctx), remote.WithTransport(r.Transport()),
		remote.WithAuth(&authn.Basic{Username: "alice", Password: "s3cret"}))
	if err != nil {
		t.Fatalf("pulling %s with the right password: %v", ref, err)
	}
	if d, _ := got.Digest(); d != want {
		t.Fatalf("pulled digest %s, pushed %s", d, want)
	}

	_, err = remote.Image(parsed, remote.WithContext(ctx), remote.WithTransport(r.Transport()),
		remote.WithAuth(&authn.Basic{Username: "alice", Password: "wrong"}))
	var terr *transport.Error
	if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
		t.Fatalf("pulling with a wrong password: got %v, want 401", err)
	}

	// Without the CA the certificate is not trusted.
	if _, err := remote.Image(parsed, remote.WithContext(ctx)); err == nil {
		t.Fatal("pulling without trusting the registry's CA succeeded")
	}
}

func TestKillAndRestartKeepsContent(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	r, err := Start(ctx, Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Stop)
	img, _ := random.Image(1024, 1)
	ref, err := r.Push(ctx, "a/b:c", img)
	if err != nil {
		t.Fatal(err)
	}
	r.Kill()
	if err := r.ping(ctx); err == nil {
		t.Fatal("registry still answers after Kill")
	}
	if err := r.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	parsed, _ := name.ParseReference(ref, name.Insecure)
	if _, err := remote.Image(parsed, remote.WithContext(ctx)); err != nil {
		t.Fatalf("image gone after restart: %v", err)
	}
}
