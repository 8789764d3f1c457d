package version

import (
	"bytes"
	"testing"
)

func TestAsked(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		var b bytes.Buffer
		if !Asked(&b, "podvirt-x", args) || b.String() != "podvirt-x "+Version+"\n" {
			t.Errorf("%q: printed %q", args, b.String())
		}
	}
	for _, args := range [][]string{nil, {"--kubeconfig", "x"}, {"console", "version"}} {
		var b bytes.Buffer
		if Asked(&b, "podvirt-x", args) || b.Len() != 0 {
			t.Errorf("%q: took it for a version request", args)
		}
	}
}
