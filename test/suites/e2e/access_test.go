package e2e

import (
	"context"
	"os/exec"
	"strings"
	"testing"
	"time"

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
// authorized_keys holds the key.
func TestAccessCredentials(t *testing.T) {
	useStack(t)
	ctx := testContext(t, 15*time.Minute)
	const name = "keyed"
	const key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e2e e2e@podvirt"
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
		"--disk-size", "256Mi", "--memory", "256Mi", "--network", stack.VMNetwork, "--ssh-key-secret", name+"-keys").Output()
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
	createVM(ctx, t, vm)
	t.Cleanup(func() { deleteVM(t, name) })
	if _, err := st.WaitRunning(ctx, name, 10*time.Minute); err != nil {
		t.Fatal(err)
	}
	out, err := st.RunInConsole(ctx, name, "hostname; cat /root/.ssh/authorized_keys", 3*time.Minute)
	if err != nil {
		t.Fatalf("%v; console:\n%s", err, out)
	}
	if !strings.Contains(out, "\nfrom-secret") || !strings.Contains(out, "\n"+key) {
		t.Errorf("the guest's hostname and authorized_keys do not show the Secrets' user-data and key; console:\n%s", out)
	}

}
