package cli

import (
	"os/exec"
	"slices"
	"testing"

	"k8s.io/cli-runtime/pkg/genericiooptions"
)

func TestSSHArgs(t *testing.T) {
	got := sshArgs("/opt/my tools/podvirtctl", []string{"--kubeconfig=/home/a/it's.yaml", "--context=dev"}, "ns1", "vm", "web", 2222,
		"fedora", "/k/id", "", []string{"-o StrictHostKeyChecking=accept-new", "-t"}, []string{"uptime", "-p"})
	want := []string{
		"-o", `ProxyCommand='/opt/my tools/podvirtctl' '--kubeconfig=/home/a/it'\''s.yaml' --context=dev --namespace ns1 port-forward --stdio vm/web 2222`,
		"-o", "HostKeyAlias=vmi/web.ns1",
		"-l", "fedora", "-i", "/k/id", "-o", "StrictHostKeyChecking=accept-new", "-t",
		"vmi/web.ns1", "uptime", "-p",
	}
	if !slices.Equal(got, want) {
		t.Errorf("sshArgs:\n got %q\nwant %q", got, want)
	}
}

// TestSSHKubeFlags: the connection flags given to ssh reach its
// ProxyCommand; the namespace goes apart, resolved.
func TestSSHKubeFlags(t *testing.T) {
	root := NewRootCommand("podvirtctl", genericiooptions.NewTestIOStreamsDiscard())
	cmd, _, err := root.Find([]string{"ssh"})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.ParseFlags([]string{"root@web", "--kubeconfig", "/k/config", "-n", "ns1", "--context=dev", "-i", "/k/id"}); err != nil {
		t.Fatal(err)
	}
	if got, want := kubeFlags(cmd), []string{"--context=dev", "--kubeconfig=/k/config"}; !slices.Equal(got, want) {
		t.Errorf("kubeFlags %q, want %q", got, want)
	}
}

// TestShellJoinRoundTrip: what ssh hands to sh -c comes back as the same
// words.
func TestShellJoinRoundTrip(t *testing.T) {
	words := []string{"plain", "with space", "it's", `back\slash`, "$HOME", "", "a;b", "--x=y"}
	out, err := exec.Command("sh", "-c", "for w in "+shellJoin(words)+`; do printf '[%s]\n' "$w"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want string
	for _, w := range words {
		want += "[" + w + "]\n"
	}
	if string(out) != want {
		t.Errorf("sh parsed %q back as:\n%s\nwant:\n%s", shellJoin(words), out, want)
	}
}
