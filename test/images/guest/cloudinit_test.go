package guest

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/converter"
)

// TestCloudInit boots the guest with a NoCloud seed in each form the guest
// reads (the launcher's ISO 9660 image, and a FAT image as users make with
// mkfs.fat -n CIDATA) and checks it applied the hostname and ran the
// user-data: a script, or a #cloud-config's runcmd.
func TestCloudInit(t *testing.T) {
	for _, tc := range []struct {
		name     string
		fat      bool
		userData string
		keys     []string // from access credentials
		// want are lines the guest prints on its console.
		want []string
	}{
		{
			name:     "iso-script",
			userData: "#!/bin/sh\necho \"script-token-$((6*7))\"\n",
			want:     []string{"script-token-42", CloudInitMarker + " hostname=iso-script"},
		},
		{
			name: "iso-cloud-config",
			userData: "#cloud-config\nhostname: from-cloud-config\nruncmd:\n" +
				"  - echo \"runcmd-token-$((6*7))\"\n" +
				"  - [sh, -c, 'echo list-token-$((7*7))']\n" +
				"packages: [ignored]\n",
			want: []string{"runcmd-token-42", "list-token-49", CloudInitMarker + " hostname=from-cloud-config"},
		},
		{
			name:     "iso-ssh-keys",
			userData: "#cloud-config\nssh_authorized_keys: [ssh-rsa AAAAB3NzaC1yc2E own@key]\nruncmd:\n  - sed 's/^/key: /' /root/.ssh/authorized_keys\n",
			keys:     []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@host"},
			want:     []string{"key: ssh-rsa AAAAB3NzaC1yc2E own@key", "key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@host"},
		},
		{
			name:     "iso-ssh-keys-block",
			userData: "#cloud-config\nruncmd:\n  - sed 's/^/key: /' /root/.ssh/authorized_keys\n",
			keys:     []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@host", "ssh-rsa AAAAB3NzaC1yc2EB carol"},
			want:     []string{"key: ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB bob@host", "key: ssh-rsa AAAAB3NzaC1yc2EB carol"},
		},
		{
			name:     "fat-script",
			fat:      true,
			userData: "#!/bin/sh\necho \"fat-token-$((6*7))\"\n",
			want:     []string{"fat-token-42", CloudInitMarker + " hostname=fat-script"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: tc.name, UID: "0b0c2c4e-1111-4222-8333-944455556666"}}
			files, err := converter.NoCloudFiles(vmi, &v1.CloudInitNoCloudSource{UserData: tc.userData}, converter.NoCloudSecrets{AuthorizedKeys: tc.keys})
			if err != nil {
				t.Fatal(err)
			}
			seed := filepath.Join(t.TempDir(), "seed.img")
			if tc.fat {
				writeFATSeed(t, seed, files)
			} else if err := converter.WriteNoCloudISO(seed, files); err != nil {
				t.Fatal(err)
			}
			console, _, _ := bootQEMU(t, "-drive", "file="+seed+",format=raw,if=virtio,readonly=on")
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
			defer cancel()
			for _, w := range tc.want {
				if _, err := WaitForOutput(ctx, console, 0, w); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestNoCloudSeedAbsent: without a seed the guest boots and says nothing
// about cloud-init.
func TestNoCloudSeedAbsent(t *testing.T) {
	console, _, _ := bootQEMU(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	// The shell prompt comes after rcS, so cloud-init has had its turn.
	if _, err := WaitForOutput(ctx, console, 0, "podvirt# "); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile(console)
	if strings.Contains(string(b), CloudInitMarker) {
		t.Fatalf("the guest reports cloud-init data without a seed disk; console:\n%s", Tail(b, 1500))
	}
}

// writeFATSeed writes files into a FAT image labelled CIDATA.
func writeFATSeed(t *testing.T, path string, files map[string][]byte) {
	t.Helper()
	dir := t.TempDir()
	if err := run(context.Background(), dir, "mkfs.fat", "-C", "-n", "CIDATA", path, "1024"); err != nil {
		t.Fatal(err)
	}
	for name, data := range files {
		src := filepath.Join(dir, name)
		if err := os.WriteFile(src, data, 0o644); err != nil {
			t.Fatal(err)
		}
		if err := run(context.Background(), dir, "mcopy", "-i", path, src, fmt.Sprintf("::/%s", name)); err != nil {
			t.Fatal(err)
		}
	}
}
