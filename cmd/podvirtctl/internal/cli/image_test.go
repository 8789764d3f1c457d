package cli

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	storagev1 "k8s.io/api/storage/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericiooptions"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/containerdisk"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/driver"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/csi/image/imagetest"
	testregistry "github.com/podvirt/podvirt/test/env/registry"
	"github.com/podvirt/podvirt/test/images/guest"
)

// imageCmd runs `podvirtctl image ...` with the test's kubeconfig, for as
// long as a push of the test guest may take; it returns stdout and the
// error.
func imageCmd(t testing.TB, args ...string) (string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	streams := genericiooptions.IOStreams{In: strings.NewReader(""), Out: &out, ErrOut: &errOut}
	cmd := NewRootCommand("podvirtctl", streams)
	cmd.SetArgs(append([]string{"--kubeconfig", kubeconfig, "image"}, args...))
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	err := cmd.ExecuteContext(ctx)
	return out.String(), err
}

// startRegistries runs real registry processes: plain HTTP and TLS (from a
// CA of its own, so --insecure is needed for both). The user's docker
// config is out of the way.
func startRegistries(t testing.TB, tls ...bool) []*testregistry.Registry {
	t.Helper()
	t.Setenv("DOCKER_CONFIG", t.TempDir())
	var regs []*testregistry.Registry
	for _, withTLS := range tls {
		r, err := testregistry.Start(t.Context(), testregistry.Options{Dir: t.TempDir(), TLS: withTLS})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(r.Stop)
		regs = append(regs, r)
	}
	return regs
}

// served is the manifest digest r serves for repoTag, "" when it has none.
func served(t *testing.T, r *testregistry.Registry, repoTag string) string {
	t.Helper()
	ref, err := name.ParseReference(r.Addr+"/"+repoTag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, remote.WithContext(t.Context()), remote.WithTransport(r.Transport()))
	var te *transport.Error
	if errors.As(err, &te) && te.StatusCode == http.StatusNotFound {
		return ""
	}
	if err != nil {
		t.Fatalf("HEAD %s: %v", ref, err)
	}
	return desc.Digest.String()
}

func virtualSize(t *testing.T, disk string) int64 {
	t.Helper()
	out, err := exec.Command("qemu-img", "info", "--output=json", "-f", "qcow2", disk).Output()
	if err != nil {
		t.Fatalf("qemu-img info %s: %v (run `make deps` if qemu-img is missing)", disk, err)
	}
	info, err := image.ParseInfo(disk, diskmeta.FormatQCOW2, out, image.DefaultLimits)
	if err != nil {
		t.Fatal(err)
	}
	return info.VirtualSize
}

var digestRE = regexp.MustCompile(`sha256:[0-9a-f]{64}`)

// The test guest pushed to two real registries: both serve the digest
// push printed, which is the one Build gives the same file (the image is
// reproducible); inspect reports qcow2, the guest's virtual size and both
// registries; a registry serving another digest fails inspect, naming it.
func TestImagePushToTwoRegistries(t *testing.T) {
	art, err := guest.Build(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	regs := startRegistries(t, false, true)
	a, b := regs[0], regs[1]
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the gzip layer is spooled
	out, err := imageCmd(t, "push", art.Disk, a.Addr+"/vm/guest:1", "--mirror", b.Addr, "--insecure")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	t.Logf("push:\n%s", out)
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("push left %s in $TMPDIR", left[0].Name())
	}
	img, err := containerdisk.Build(t.Context(), art.Disk, containerdisk.Options{SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer img.Close()
	digest, _ := img.Digest()
	for _, r := range regs {
		if got := served(t, r, "vm/guest:1"); got != digest.String() {
			t.Errorf("%s serves %q, want %s", r.Addr, got, digest)
		}
		if !strings.Contains(out, r.Addr+"/vm/guest:1 "+digest.String()+"\n") {
			t.Errorf("push output has no line for %s with %s:\n%s", r.Addr, digest, out)
		}
	}

	out, err = imageCmd(t, "inspect", a.Addr+"/vm/guest:1", "--mirror", b.Addr, "--insecure")
	if err != nil {
		t.Fatalf("inspect: %v\n%s", err, out)
	}
	t.Logf("inspect:\n%s", out)
	vsize := virtualSize(t, art.Disk)
	for _, want := range []string{`digest: +` + digest.String(), `disk: +/disk/disk\.qcow2 `, `format: +qcow2`,
		`virtual size: +.*\(` + strconv.FormatInt(vsize, 10) + ` bytes\)`, a.Addr + ` +holds it`, b.Addr + ` +holds it`} {
		if !regexp.MustCompile(`(?m)^\s*` + want).MatchString(out) {
			t.Errorf("inspect output lacks %q:\n%s", want, out)
		}
	}

	// Another image under the same tag on b: inspect names b and its digest.
	other := filepath.Join(t.TempDir(), "other.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", other, "1M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	otherImg, err := containerdisk.Build(t.Context(), other, containerdisk.Options{Compression: containerdisk.None})
	if err != nil {
		t.Fatal(err)
	}
	defer otherImg.Close()
	if _, err := b.Push(t.Context(), "vm/guest:1", otherImg); err != nil {
		t.Fatal(err)
	}
	out, err = imageCmd(t, "inspect", a.Addr+"/vm/guest:1", "--mirror", b.Addr, "--insecure")
	otherDigest, _ := otherImg.Digest()
	t.Logf("inspect with a differing mirror:\n%s\nerror: %v", out, err)
	if err == nil || !strings.Contains(err.Error(), b.Addr+" serves "+otherDigest.String()) || !regexp.MustCompile(b.Addr+` +differs: `+otherDigest.String()).MatchString(out) {
		t.Fatalf("inspect with a differing mirror: %v\n%s", err, out)
	}

	// b down: push still reaches a and fails naming b; inspect says b misses it.
	b.Stop()
	out, err = imageCmd(t, "push", art.Disk, a.Addr+"/vm/guest:2", "--mirror", b.Addr, "--insecure")
	t.Logf("push with a mirror down:\n%s\nerror: %v", out, err)
	if err == nil || !strings.Contains(err.Error(), "1 of 2 registries") || !strings.Contains(err.Error(), b.Addr+": push:") {
		t.Fatalf("push with a mirror down: %v", err)
	}
	if got := served(t, a, "vm/guest:2"); got != digest.String() {
		t.Fatalf("%s serves %q after a push with a mirror down, want %s", a.Addr, got, digest)
	}
	out, err = imageCmd(t, "inspect", a.Addr+"/vm/guest:2", "--mirror", b.Addr, "--insecure")
	if err == nil || !strings.Contains(err.Error(), b.Addr) || !regexp.MustCompile(b.Addr+` +missing: `).MatchString(out) {
		t.Fatalf("inspect with a mirror down: %v\n%s", err, out)
	}
}

// --storage-class pushes to the registries the podvirt StorageClass
// imports from.
func TestImagePushStorageClass(t *testing.T) {
	if startErr != nil {
		t.Fatal(startErr)
	}
	if registriesParam != driver.ParamRegistries {
		t.Fatalf("registriesParam %q is not the driver's %q", registriesParam, driver.ParamRegistries)
	}
	regs := startRegistries(t, false, false)
	disk := filepath.Join(t.TempDir(), "small.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", disk, "16M").CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create (run `make deps` if it is missing): %v: %s", err, out)
	}
	sc := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "push-mirrors"}, Provisioner: v1.CSIDriverName,
		Parameters: map[string]string{registriesParam: regs[0].Addr + ",\n" + regs[1].Addr}}
	create(t, sc)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), sc) })
	other := &storagev1.StorageClass{ObjectMeta: metav1.ObjectMeta{Name: "push-not-podvirt"}, Provisioner: "example.com/other"}
	create(t, other)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), other) })

	out, err := imageCmd(t, "push", disk, regs[0].Addr+"/vm/small:1", "--storage-class", "push-mirrors", "--insecure", "--compress", "none")
	if err != nil {
		t.Fatalf("push: %v\n%s", err, out)
	}
	if len(digestRE.FindAllString(out, -1)) != 3 { // the summary and one line per registry
		t.Errorf("push output:\n%s", out)
	}
	d0, d1 := served(t, regs[0], "vm/small:1"), served(t, regs[1], "vm/small:1")
	if d0 == "" || d0 != d1 {
		t.Fatalf("registries serve %q and %q", d0, d1)
	}
	for class, want := range map[string]string{"push-not-podvirt": "is not podvirt's", "missing": `StorageClass "missing" not found`} {
		_, err := imageCmd(t, "push", disk, regs[0].Addr+"/vm/small:2", "--storage-class", class, "--insecure")
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("--storage-class %s: %v, want %q", class, err, want)
		}
	}
	if d := served(t, regs[0], "vm/small:2"); d != "" {
		t.Errorf("a refused push left vm/small:2 (%s)", d)
	}
}

// What a node would refuse is refused before anything is pushed: the error
// names the file, what is wrong and what to do, and no registry has the
// tag afterwards.
func TestImagePushRefuses(t *testing.T) {
	regs := startRegistries(t, false, false)
	dir := t.TempDir()
	p := func(n string) string { return filepath.Join(dir, n) }
	qemu := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
			t.Fatalf("qemu-img %v (run `make deps` if it is missing): %v: %s", args, err, out)
		}
	}
	qemu("create", "-q", "-f", "qcow2", p("base.qcow2"), "1M")
	qemu("create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", p("top.qcow2"))
	if err := imagetest.EncryptedQCOW2(t.Context(), p("enc.qcow2"), "1M"); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("notes.img"), []byte("these are notes, not a disk\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p("disk.txt"), make([]byte, 4096), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		file string
		want []string
	}{
		{"top.qcow2", []string{"BackingFile", "base.qcow2", "qemu-img convert -O qcow2"}},
		{"enc.qcow2", []string{"Encrypted", "unencrypted"}},
		{"notes.img", []string{"NotAnImage", "not a raw disk either"}},
		{"disk.txt", []string{"rename the file", ".qcow2, .raw or .img"}},
		{"missing.qcow2", []string{"no such file"}},
	} {
		t.Run(tc.file, func(t *testing.T) {
			repo := "refused/" + strings.TrimSuffix(tc.file, filepath.Ext(tc.file)) + ":1"
			out, err := imageCmd(t, "push", p(tc.file), regs[0].Addr+"/"+repo, "--mirror", regs[1].Addr, "--insecure")
			if err == nil {
				t.Fatalf("push of %s succeeded:\n%s", tc.file, out)
			}
			t.Log(err)
			for _, want := range append([]string{"nothing was pushed", p(tc.file)}, tc.want...) {
				if !strings.Contains(err.Error(), want) {
					t.Errorf("error lacks %q: %v", want, err)
				}
			}
			for _, r := range regs {
				if d := served(t, r, repo); d != "" {
					t.Errorf("%s has %s after a refused push (%s)", r.Addr, repo, d)
				}
			}
		})
	}
}

// Arguments that cannot work are refused with what to write instead.
func TestImageArguments(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"push", "disk.qcow2"}, "needs a disk file and an image reference"},
		{[]string{"push", "disk.qcow2", "vm/guest:1"}, "with the registry's host"},
		{[]string{"push", "disk.qcow2", "reg.example:5000/vm/guest"}, "with the registry's host"},
		{[]string{"push", "disk.qcow2", "reg.example:5000/vm/guest:1", "--mirror", "other.example/vm"}, "is not a registry host"},
		{[]string{"push", "disk.qcow2", "reg.example:5000/vm/guest:1", "--compress", "xz"}, "use gzip or none"},
		{[]string{"inspect"}, "needs one image reference"},
	} {
		_, err := imageCmd(t, tc.args...)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%v: %v, want %q", tc.args, err, tc.want)
		}
	}
}
