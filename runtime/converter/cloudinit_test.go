package converter

import (
	"bytes"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

func TestNoCloudISO(t *testing.T) {
	vmi := &v1.VirtualMachineInstance{ObjectMeta: metav1.ObjectMeta{Name: "vm1", UID: "u1"}}
	files := NoCloudFiles(vmi, &v1.CloudInitNoCloudSource{UserData: "#!/bin/sh\necho hi\n"})
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
