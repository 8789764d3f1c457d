package cli

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestEscapeReader: Ctrl+] ends the input, and what was typed before it
// still goes through.
func TestEscapeReader(t *testing.T) {
	escaped := false
	r := &escapeReader{r: strings.NewReader("ls\n\x1dnot sent"), escape: func() { escaped = true }}
	b, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != "ls\n" || !escaped {
		t.Fatalf("read %q, escaped %v; want \"ls\\n\" and escaped", b, escaped)
	}
	if n, err := r.Read(make([]byte, 8)); n != 0 || !errors.Is(err, io.EOF) {
		t.Fatalf("read after the escape: %d, %v", n, err)
	}
	r = &escapeReader{r: strings.NewReader("plain"), escape: func() { t.Fatal("escaped without ^]") }}
	if b, _ := io.ReadAll(r); string(b) != "plain" {
		t.Fatalf("read %q", b)
	}
}

// TestConsolePreflight: console and vnc say why they cannot connect before
// they try, and reach the API server's pods/exec when they can.
func TestConsolePreflight(t *testing.T) {
	ns := namespace(t)
	create(t, testVM(ns, "off", v1.RunStrategyHalted))
	if _, err := podvirtctl(t, ns, "console", "off"); err == nil || !strings.Contains(err.Error(), "vm off is Stopped: start it with `podvirtctl start off`") {
		t.Errorf("console of a stopped VM: %v", err)
	}
	booting := testVM(ns, "booting", v1.RunStrategyAlways)
	create(t, booting)
	ownVMI(t, booting, v1.Scheduling)
	if _, err := podvirtctl(t, ns, "console", "booting"); err == nil || !strings.Contains(err.Error(), "not running yet (Scheduling)") {
		t.Errorf("console of a scheduling VMI: %v", err)
	}

	on := testVM(ns, "on", v1.RunStrategyAlways)
	create(t, on)
	uid := ownVMI(t, on, v1.Running)
	if _, err := podvirtctl(t, ns, "console", "on"); err == nil || !strings.Contains(err.Error(), "has no launcher pod (label "+v1.CreatedByLabel+"=") {
		t.Errorf("console without a launcher pod: %v", err)
	}
	if _, err := podvirtctl(t, ns, "vnc", "on"); err == nil || !strings.Contains(err.Error(), "VNC isn't enabled on vmi on") || !strings.Contains(err.Error(), "devices.vnc: true") {
		t.Errorf("vnc without VNC: %v", err)
	}
	// A launcher pod that the API says is running but that no kubelet
	// runs: the exec goes to the API server, which cannot reach a node.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "launcher-on", Namespace: ns, Labels: map[string]string{v1.CreatedByLabel: string(uid)}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: v1.LauncherContainerName, Image: "podvirt.local/launcher:test"}}},
	}
	create(t, pod)
	if _, err := podvirtctl(t, ns, "console", "on"); err == nil || !strings.Contains(err.Error(), "launcher pod launcher-on of vmi on is Pending, not Running") {
		t.Errorf("console with a pending launcher pod: %v", err)
	}
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
	_, err := podvirtctl(t, ns, "console", "on")
	if err == nil || !strings.Contains(err.Error(), "launcher-on") {
		t.Errorf("console through a pod no kubelet runs: %v", err)
	}
	t.Logf("console through a pod no kubelet runs: %v", err)
}

func TestVersion(t *testing.T) {
	ns := namespace(t)
	out, err := podvirtctl(t, ns, "version", "--client")
	if err != nil || !strings.HasPrefix(out, "Client Version: podvirtctl ") || strings.Contains(out, "Server") {
		t.Fatalf("version --client: %q, %v", out, err)
	}
	// The controller pod holding the leader lease, as controller-runtime's
	// leader election writes it.
	holder := "podvirt-controller-7d9f_0b9e7c2a-1111-4222-8333-944455556666"
	create(t, &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "podvirt-controller-7d9f", Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "controller", Image: "registry.example/podvirt-controller:v0.9.1"}}},
	})
	out, err = podvirtctl(t, ns, "version")
	if err != nil || !strings.Contains(out, "Server Version: Kubernetes v1.") || !strings.Contains(out, "Controller: not found") {
		t.Fatalf("version without a controller: %q, %v", out, err)
	}
	// An API server that does not answer: the client version still, and
	// why there is no server version.
	out, err = podvirtctl(t, ns, "version", "--server", "https://127.0.0.1:1", "--request-timeout", "5s")
	if err != nil || !strings.Contains(out, "Client Version: podvirtctl") || !strings.Contains(out, "Server Version: unreachable") {
		t.Fatalf("version with no server: %q, %v", out, err)
	}
	create(t, leaseObject(ns, holder))
	out, err = podvirtctl(t, ns, "version")
	if err != nil || !strings.Contains(out, "Controller: registry.example/podvirt-controller:v0.9.1 (pod "+ns+"/podvirt-controller-7d9f)") {
		t.Fatalf("version: %q, %v", out, err)
	}
}

func leaseObject(ns, holder string) *coordinationv1.Lease {
	return &coordinationv1.Lease{
		ObjectMeta: metav1.ObjectMeta{Name: ControllerLease, Namespace: ns},
		Spec:       coordinationv1.LeaseSpec{HolderIdentity: &holder},
	}
}
