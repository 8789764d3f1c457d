package e2e

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/pem"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestAccessCredentials starts a VM made by `podvirtctl create vm
// --ssh-key-secret` whose cloud-init user-data and SSH key come from
// Secrets (cloudInitNoCloud.secretRef, accessCredentials):
// the guest takes the hostname from that user-data and root's
// authorized_keys holds the key, with which `podvirtctl ssh` logs in
// through the API server, using OpenSSH's client.
func TestAccessCredentials(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const name = "keyed"
	keyFile, key := sshKeyPair(t)
	secrets := []*corev1.Secret{
		{ObjectMeta: metav1.ObjectMeta{Name: name + "-keys", Namespace: stack.Namespace}, StringData: map[string]string{"alice": "# alice's laptop\n" + key + "\n"}},
		{ObjectMeta: metav1.ObjectMeta{Name: name + "-userdata", Namespace: stack.Namespace}, StringData: map[string]string{
			v1.CloudInitUserData: "#cloud-config\nhostname: from-secret\n",
		}},
	}
	for _, s := range secrets {
		if err := st.Client.Create(ctx, s); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = st.Client.Delete(context.Background(), s) })
	}

	// The VM as `podvirtctl create vm --ssh-key-secret` writes it, with
	// its user-data moved into a Secret.
	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := exec.CommandContext(ctx, bin, "create", "vm", name, "-n", stack.Namespace, "--image", stack.GuestSource,
		"--disk-size", "256Mi", "--memory", "256Mi", "--ssh-key-secret", name+"-keys").Output()
	if err != nil {
		t.Fatalf("podvirtctl create vm: %v", err)
	}
	vm := &v1.VirtualMachine{}
	if err := yaml.UnmarshalStrict(manifest, vm); err != nil {
		t.Fatalf("podvirtctl create vm printed no VM: %v\n%s", err, manifest)
	}
	spec := &vm.Spec.Template.Spec
	if len(spec.AccessCredentials) != 1 || len(spec.Volumes) != 2 || spec.Volumes[1].CloudInitNoCloud == nil {
		t.Fatalf("podvirtctl create vm --ssh-key-secret printed:\n%s", manifest)
	}
	spec.Volumes[1].CloudInitNoCloud = &v1.CloudInitNoCloudSource{UserDataSecretRef: &corev1.LocalObjectReference{Name: name + "-userdata"}}
	// The pod network (create vm's default), forwarding the ssh port.
	if pod := spec.PodInterface(); pod != nil {
		pod.Ports = []v1.Port{{Name: "ssh", Port: 22}}
	} else {
		t.Fatalf("podvirtctl create vm without --network printed no pod network interface:\n%s", manifest)
	}
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	waitVMIRunning(ctx, t, name)
	out, err := st.RunInConsole(ctx, name, "hostname; cat /root/.ssh/authorized_keys", 3*time.Minute)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, out)
	}
	if !strings.Contains(out, "\nfrom-secret") || !strings.Contains(out, "\n"+key) {
		t.Errorf("the guest's hostname and authorized_keys do not show the Secrets' user-data and key; console:\n%s", out)
	}

	// ssh with that key, no prompt, no known_hosts of the test machine's.
	login := exec.CommandContext(ctx, bin, "ssh", "root@"+name, "-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig(), "-i", keyFile,
		"--local-ssh-opts", "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
		"--", "echo", "ssh-as-$(id -un)-on-$(hostname)")
	got, err := login.CombinedOutput()
	if want := "ssh-as-root-on-from-secret"; err != nil || !strings.Contains(string(got), want) {
		t.Errorf("podvirtctl ssh: %v, output %q, want %q", err, got, want)
	}
	// A key the guest does not know is refused, with ssh's exit status.
	otherKey, _ := sshKeyPair(t)
	login = exec.CommandContext(ctx, bin, "ssh", "root@"+name, "-n", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig(), "-i", otherKey,
		"--local-ssh-opts", "-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null -o IdentitiesOnly=yes", "--", "true")
	got, err = login.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != 255 || !strings.Contains(string(got), "Permission denied") {
		t.Errorf("podvirtctl ssh with an unknown key: %v, output %q; want ssh's exit status 255 and its Permission denied", err, got)
	}
}

// sshKeyPair writes a new ed25519 private key (OpenSSH's format) for this
// test and returns its file and the public key's authorized_keys line.
func sshKeyPair(t *testing.T) (file, public string) {
	t.Helper()
	pub, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	block, err := ssh.MarshalPrivateKey(priv, "e2e@podvirt")
	if err != nil {
		t.Fatal(err)
	}
	file = filepath.Join(t.TempDir(), "id_ed25519")
	if err := os.WriteFile(file, pem.EncodeToMemory(block), 0o600); err != nil {
		t.Fatal(err)
	}
	sshPub, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return file, strings.TrimSpace(string(ssh.MarshalAuthorizedKey(sshPub))) + " e2e@podvirt"

}
