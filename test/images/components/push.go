package components

import (
	"context"
	"fmt"
	"io"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// PushedRef is where ref goes in registry (host[:port][/path]): the name
// the chart's imageRegistry=registry pulls, registry/<last path element of
// the repository>:<tag>.
func PushedRef(registry, ref string) (string, error) {
	r, err := name.ParseReference(ref, name.WeakValidation)
	if err != nil {
		return "", fmt.Errorf("image reference %q: %w", ref, err)
	}
	tag, ok := r.(name.Tag)
	if !ok {
		return "", fmt.Errorf("image reference %q: has no tag", ref)
	}
	return strings.TrimSuffix(registry, "/") + "/" + path.Base(tag.RepositoryStr()) + ":" + tag.TagStr(), nil
}

// Push pushes imgs to registry under their PushedRef names, with the
// credentials of the user's docker config (docker login, podman login).
// insecure allows a registry that speaks plain HTTP. It returns the pushed
// references.
func Push(ctx context.Context, registry string, insecure bool, imgs []Image, progress io.Writer) ([]string, error) {
	opts := Options{Progress: progress}.withDefaults()
	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	var pushed []string
	for _, img := range imgs {
		to, err := PushedRef(registry, img.Ref)
		if err != nil {
			return pushed, err
		}
		ref, err := name.ParseReference(to, nameOpts...)
		if err != nil {
			return pushed, fmt.Errorf("push %s: registry %q: %w", img.Ref, registry, err)
		}
		if err := remote.Write(ref, img.Image, remote.WithContext(ctx), remote.WithAuthFromKeychain(authn.DefaultKeychain)); err != nil {
			return pushed, fmt.Errorf("push %s to %s: %w (log in with `docker login %s`, or --insecure for a plain-HTTP registry)", img.Ref, to, err, ref.Context().RegistryStr())
		}
		digest, _ := img.Image.Digest()
		opts.progress("%s: pushed %s@%s", img.Ref, to, digest)
		pushed = append(pushed, to)
	}
	return pushed, nil
}
