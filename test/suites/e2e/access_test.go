package e2e

import (
	"context"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/stack"
)

// TestAccessCredentials starts a VM whose cloud-init user-data and SSH
// key come from Secrets (cloudInitNoCloud.secretRef, accessCredentials):
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

	vm := stack.VM(name, v1.RunStrategyAlways)
	spec := &vm.Spec.Template.Spec
	spec.Volumes[1].CloudInitNoCloud = &v1.CloudInitNoCloudSource{UserDataSecretRef: &corev1.LocalObjectReference{Name: name + "-userdata"}}
	spec.AccessCredentials = []v1.AccessCredential{{SSHPublicKey: &v1.SSHPublicKeyAccessCredential{
		Source:            v1.SSHPublicKeyAccessCredentialSource{Secret: &v1.AccessCredentialSecretSource{SecretName: name + "-keys"}},
		PropagationMethod: v1.SSHPublicKeyAccessCredentialPropagationMethod{NoCloud: &v1.NoCloudPropagation{}},
	}}}
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
