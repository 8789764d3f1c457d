package chart

import (
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/podvirt/podvirt/test/images/components"
)

// images lists the images the rendered objects run, the launcher's (an
// argument of the controller) included.
func images(objs []*unstructured.Unstructured) []string {
	var refs []string
	for _, o := range objs {
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		for _, c := range containers {
			c, _ := c.(map[string]any)
			refs = append(refs, c["image"].(string))
			args, _, _ := unstructured.NestedStringSlice(c, "args")
			for _, a := range args {
				if ref, ok := strings.CutPrefix(a, "--launcher-image="); ok {
					refs = append(refs, ref)
				}
			}
		}
	}
	slices.Sort(refs)
	return slices.Compact(refs)
}

func controllerArgs(t *testing.T, objs []*unstructured.Unstructured) []string {
	t.Helper()
	for _, o := range objs {
		if o.GetKind() == "Deployment" && o.GetName() == "pv-controller" {
			containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
			args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
			return args
		}
	}
	t.Fatal("no controller Deployment rendered")
	return nil
}

// TestValueChoices: the defaults a user can keep render as documented —
// emulation auto, the snapshot controller installed when helm cannot look
// (helm template), the images where `make images` puts them — and the
// explicit settings override them.
func TestValueChoices(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHelm(t, "")

	var built []string
	for _, name := range components.All {
		built = append(built, components.Ref(name))
	}
	slices.Sort(built)
	defaults := render(ctx, t, h, "ns", nil)
	if got := images(defaults); !slices.Equal(got, built) {
		t.Errorf("default images %v, want what `make images` builds: %v", got, built)
	}
	var moved []string
	for _, ref := range built {
		// Where `podvirt-images push --registry` puts it.
		to, err := components.PushedRef("registry.example.com:5000/podvirt/", ref)
		if err != nil {
			t.Fatal(err)
		}
		moved = append(moved, to)
	}
	if got := images(render(ctx, t, h, "ns", []string{"imageRegistry=registry.example.com:5000/podvirt/"})); !slices.Equal(got, moved) {
		t.Errorf("images with imageRegistry %v, want %v", got, moved)
	}

	for set, want := range map[string]string{"": "auto", "controller.useEmulation=true": "true", "controller.useEmulation=false": "false"} {
		var sets []string
		if set != "" {
			sets = []string{set}
		}
		if args := controllerArgs(t, render(ctx, t, h, "ns", sets)); !slices.Contains(args, "--use-emulation="+want) {
			t.Errorf("--set %q: controller args %v, want --use-emulation=%s", set, args, want)
		}
	}

	for set, want := range map[string]bool{"": true, "snapshotController.install=true": true, "snapshotController.install=false": false} {
		var sets []string
		if set != "" {
			sets = []string{set}
		}
		if got := hasSnapshotController(render(ctx, t, h, "ns", sets)); got != want {
			t.Errorf("--set %q: snapshot controller rendered %v, want %v", set, got, want)
		}
	}
}
