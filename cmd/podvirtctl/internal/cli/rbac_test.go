package cli

import (
	"context"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// grant gives user a Role in ns with rules.
func grant(t *testing.T, ns, user string, rules ...rbacv1.PolicyRule) {
	t.Helper()
	create(t, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns}, Rules: rules})
	create(t, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: user, Namespace: ns},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: user},
	})
}

// TestForbidden runs commands as users RBAC does not allow them to (the
// real authorizer, through impersonation with --as) and checks the error
// names the verb and resource to ask for.
func TestForbidden(t *testing.T) {
	ns := namespace(t)
	manual := testVM(ns, "manual", v1.RunStrategyManual)
	create(t, manual)
	ownVMI(t, manual, v1.Running)
	create(t, testVM(ns, "always", v1.RunStrategyAlways))
	read := rbacv1.PolicyRule{APIGroups: []string{v1.GroupVersion.Group}, Resources: []string{"virtualmachines", "virtualmachineinstances"}, Verbs: []string{"get", "list"}}
	grant(t, ns, "viewer", read, rbacv1.PolicyRule{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get", "list"}})

	// Launcher pod of the manual VM, running as far as the API says.
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "launcher-manual", Namespace: ns, Labels: map[string]string{v1.CreatedByLabel: string(getVMI(t, ns, "manual").UID)}},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: v1.LauncherContainerName, Image: "podvirt.local/launcher:test"}}},
	}
	create(t, pod)
	pod.Status.Phase = corev1.PodRunning
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}

	for _, tc := range []struct {
		user string
		args []string
		want string
	}{
		{"nobody", []string{"start", "always"}, `verb "get" on resource "virtualmachines" (API group podvirt.io) in namespace "` + ns + `"`},
		{"viewer", []string{"stop", "manual"}, `verb "patch" on resource "virtualmachines/status" (API group podvirt.io)`},
		{"viewer", []string{"stop", "always"}, `verb "patch" on resource "virtualmachines" (API group podvirt.io)`},
		{"viewer", []string{"restart", "manual"}, `verb "patch" on resource "virtualmachines/status"`},
		{"viewer", []string{"pause", "vm", "manual"}, `verb "patch" on resource "virtualmachineinstances"`},
		{"viewer", []string{"console", "manual"}, `on resource "pods/exec" (the core API group)`},
	} {
		t.Run(tc.user+"-"+strings.Join(tc.args, "-"), func(t *testing.T) {
			_, err := podvirtctl(t, ns, append([]string{"--as", tc.user}, tc.args...)...)
			if err == nil {
				t.Fatal("allowed")
			}
			if !strings.Contains(err.Error(), "not allowed to") || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "ask a cluster admin") {
				t.Errorf("error %q does not say what to ask for (%s)", err, tc.want)
			}
		})
	}
}
