package converter

import (
	"bytes"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestNoCloudISO(t *testing.T) {
	vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: "vm1", UID: "u1"}}
	files, err := NoCloudFiles(vmi, &v1.CloudInitNoCloudSource{UserData: "#!/bin/sh\necho hi\n"}, NoCloudSecrets{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(files["meta-data"]), "local-hostname: vm1") {
		t.Fatalf("meta-data: %s", files["meta-data"])
	}
	img := buildISO(NoCloudLabel, files)
	if len(img)%isoSector != 0 {
		t.Fatalf("image is %d bytes, not whole sectors", len(img))
	}
	pvd := img[16*isoSector:]
	if pvd[0] != 1 || string(pvd[1:6]) != "CD001" || !strings.HasPrefix(string(pvd[40:72]), "cidata") {
		t.Fatalf("bad primary volume descriptor")
	}
	for _, want := range [][]byte{[]byte("USER-DATA;1"), []byte("META-DATA;1"), []byte("echo hi")} {
		if !bytes.Contains(img, want) {
			t.Errorf("image lacks %q", want)
		}
	}
}

// TestNoCloudSecrets: user-data and network-config from Secrets replace
// the spec's; access credentials' keys join the #cloud-config's own
// ssh_authorized_keys once each, keeping the rest as written; user-data
// that cannot take them is refused, saying why.
func TestNoCloudSecrets(t *testing.T) {
	vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: "vm", UID: "uid-1"}}
	ref := &corev1.LocalObjectReference{Name: "s"}
	const keyA, keyB = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA alice@host", "ssh-rsa AAAAB3NzaC1yc2E bob"
	for _, c := range []struct {
		name     string
		src      v1.CloudInitNoCloudSource
		sec      NoCloudSecrets
		userData string
		network  string
		err      string
	}{
		{name: "keys only", src: v1.CloudInitNoCloudSource{NetworkData: "version: 2\n"}, sec: NoCloudSecrets{AuthorizedKeys: []string{keyA}},
			userData: "#cloud-config\nssh_authorized_keys:\n    - " + keyA + "\n", network: "version: 2\n"},
		{name: "merged", src: v1.CloudInitNoCloudSource{UserData: "#cloud-config\n# mine\nwrite_files:\n  - path: /x\n    permissions: '0644'\nssh_authorized_keys: [" + keyB + "]\n"},
			sec:      NoCloudSecrets{AuthorizedKeys: []string{keyA, keyB, keyA}},
			userData: "#cloud-config\n# mine\nwrite_files:\n    - path: /x\n      permissions: '0644'\nssh_authorized_keys: [" + keyB + ", " + keyA + "]\n"},
		{name: "from secrets", src: v1.CloudInitNoCloudSource{UserDataSecretRef: ref, NetworkDataSecretRef: ref},
			sec: NoCloudSecrets{UserData: "#cloud-config\nhostname: x\n", NetworkData: "version: 1\n"}, userData: "#cloud-config\nhostname: x\n", network: "version: 1\n"},
		{name: "script", src: v1.CloudInitNoCloudSource{UserData: "#!/bin/sh\necho hi\n"}, sec: NoCloudSecrets{AuthorizedKeys: []string{keyA}},
			err: `this user-data starts with "#!/bin/sh"`},
		{name: "not a mapping", src: v1.CloudInitNoCloudSource{UserData: "#cloud-config\n- a\n"}, sec: NoCloudSecrets{AuthorizedKeys: []string{keyA}},
			err: "must be a YAML mapping"},
	} {
		t.Run(c.name, func(t *testing.T) {
			files, err := NoCloudFiles(vmi, &c.src, c.sec)
			if c.err != "" {
				if err == nil || !strings.Contains(err.Error(), c.err) {
					t.Fatalf("err %v, want one containing %q", err, c.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got := string(files["user-data"]); got != c.userData {
				t.Errorf("user-data:\n%s\nwant:\n%s", got, c.userData)
			}
			if got := string(files["network-config"]); got != c.network {
				t.Errorf("network-config %q, want %q", got, c.network)
			}
		})
	}
}
