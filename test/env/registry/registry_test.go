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

	"github.com/podvirt/podvirt/test/harness/pidproc"
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

// TestStartAgainOnTheSameDir: a detached registry left running is taken
// over by the next Start on its Dir (same address, same process, the image
// still there); once it is stopped, Start runs a new one on the same
// address, from the same storage.
func TestStartAgainOnTheSameDir(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	first, err := Start(ctx, Options{Dir: dir, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(first.Stop)
	img, err := random.Image(1<<10, 1)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := first.Push(ctx, "os/guest:1", img)
	if err != nil {
		t.Fatal(err)
	}
	pid := first.cmd.Process.Pid

	second, err := Start(ctx, Options{Dir: dir, Detach: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(second.Stop)
	if second.Addr != first.Addr || second.adopted != pid {
		t.Fatalf("second Start: %s (adopted pid %d), want the running %s (pid %d)", second.Addr, second.adopted, first.Addr, pid)
	}
	pull := func(r *Registry) error {
		parsed, err := name.ParseReference(ref, name.Insecure)
		if err == nil {
			_, err = remote.Image(parsed, remote.WithContext(ctx), remote.WithTransport(r.Transport()))
		}
		return err
	}
	if err := pull(second); err != nil {
		t.Fatalf("the adopted registry does not serve %s: %v", ref, err)
	}

	second.Stop()
	if pidproc.Alive(pid) {
		t.Fatalf("Stop of the adopted registry left pid %d running", pid)
	}
	third, err := Start(ctx, Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(third.Stop)
	if third.Addr != first.Addr || third.cmd == nil {
		t.Fatalf("third Start: %s (own process %v), want a new process at %s", third.Addr, third.cmd != nil, first.Addr)
	}
	if err := pull(third); err != nil {
		t.Fatalf("the restarted registry lost %s: %v", ref, err)
	}
}
