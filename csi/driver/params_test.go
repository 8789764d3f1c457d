package driver

import (
	"strings"
	"testing"
)

func TestAllowedSources(t *testing.T) {
	p, err := parseParams(map[string]string{
		ParamAllowedSources: "quay.io,\n*.example.com, reg.internal:5000, https://images.example.org/vm/, docker://ghcr.io/podvirt",
	}, false)
	if err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		source string
		want   bool
	}{
		{"docker://quay.io/os/fedora:40", true},
		{"docker://quay.io:443/os/fedora:40", true},
		{"docker://a.example.com/os/fedora:40", true},
		{"https://cdn.example.com/disk.qcow2", true},
		{"docker://example.com/os/fedora:40", false}, // *. is below the domain only
		{"docker://reg.internal:5000/os/x:1", true},
		{"docker://reg.internal/os/x:1", false},
		{"https://images.example.org/vm/fedora.qcow2", true},
		{"https://images.example.org/vm/../secret.qcow2", false},
		{"https://images.example.org/other.qcow2", false},
		{"https://images.example.org.evil.net/vm/x.qcow2", false},
		{"docker://ghcr.io/podvirt/guest:1", true},
		{"docker://ghcr.io/podvirtevil/guest:1", false},
		{"docker://fedora:40", false}, // Docker Hub
		{"http://169.254.169.254/latest/meta-data/", false},
		{"https://quay.io.evil.net/disk.img", false},
	} {
		if got := p.sourceAllowed(tc.source); got != tc.want {
			t.Errorf("sourceAllowed(%s) = %v, want %v", tc.source, got, tc.want)
		}
	}
	open, _ := parseParams(nil, false)
	if !open.sourceAllowed("docker://anything.example/x:1") {
		t.Error("without allowedSources every source is allowed (the egress policy still applies)")
	}
}

func TestSourceParamErrors(t *testing.T) {
	for _, tc := range []struct{ key, value, want string }{
		{ParamAllowPrivateSources, "yes please", "allowPrivateSources"},
		{ParamAllowedSources, "quay.io/os", "allowedSources"},
		{ParamAllowedSources, "ftp://x.example/", "allowedSources"},
		{ParamAllowedSources, "a.*.example.com", "allowedSources"},
	} {
		if _, err := parseParams(map[string]string{tc.key: tc.value}, false); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s=%q: %v; want an error naming %s", tc.key, tc.value, err, tc.want)
		}
	}
	p, err := parseParams(map[string]string{ParamAllowPrivateSources: "true"}, false)
	if err != nil || !p.allowPrivate {
		t.Fatalf("allowPrivateSources=true: %+v, %v", p, err)
	}
}
