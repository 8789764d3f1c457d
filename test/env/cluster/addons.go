package cluster

import (
	"context"
	"fmt"
	"os"
	"time"

	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// multusRBAC lets Multus (user podvirt:multus) read pods and their network
// attachments and write the network-status annotation; nothing more.
func multusRBAC() (*rbacv1.ClusterRole, *rbacv1.ClusterRoleBinding) {
	role := &rbacv1.ClusterRole{
		ObjectMeta: metav1.ObjectMeta{Name: "podvirt:multus"},
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{"k8s.cni.cncf.io"}, Resources: []string{"network-attachment-definitions"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{""}, Resources: []string{"pods"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"pods/status"}, Verbs: []string{"get", "update", "patch"}},
			{APIGroups: []string{"", "events.k8s.io"}, Resources: []string{"events"}, Verbs: []string{"create", "patch", "update"}},
		},
	}
	binding := &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "podvirt:multus"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "podvirt:multus"}},
	}
	return role, binding
}

// WhereaboutsRules is all whereabouts (v0.9.2) needs at ADD and DEL, in the
// namespace of its kubeconfig's context: the IPPool of the range (read,
// created on first use, JSON-patched), an OverlappingRangeIPReservation
// per address, and the one Lease, "whereabouts", it elects a leader
// through so that one ADD or DEL in the cluster runs at a time.
var WhereaboutsRules = []rbacv1.PolicyRule{
	{APIGroups: []string{"whereabouts.cni.cncf.io"}, Resources: []string{"ippools"}, Verbs: []string{"get", "list", "create", "patch"}},
	{APIGroups: []string{"whereabouts.cni.cncf.io"}, Resources: []string{"overlappingrangeipreservations"}, Verbs: []string{"get", "create", "delete"}},
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, Verbs: []string{"create"}},
	{APIGroups: []string{"coordination.k8s.io"}, Resources: []string{"leases"}, ResourceNames: []string{"whereabouts"}, Verbs: []string{"get", "update"}},
}

// whereaboutsNamespace holds whereabouts' pools, reservations and lease.
const whereaboutsNamespace = "kube-system"

// Whereabouts is the cluster-wide IPAM plugin installed on every node, as
// its own installer would on a real cluster: the files a NAD's whereabouts
// IPAM names (the chart's networks.whereabouts.*), the same path on every
// node.
type Whereabouts struct {
	Kubeconfig, ConfigurationPath string
}

// Whereabouts says where the nodes' whereabouts finds its files.
func (c *Cluster) Whereabouts() Whereabouts {
	return Whereabouts{
		Kubeconfig:        c.path("kubeconfigs", "whereabouts.kubeconfig"),
		ConfigurationPath: c.path("whereabouts.conf"),
	}
}

// whereaboutsRBAC lets whereabouts (user podvirt:whereabouts) do what
// WhereaboutsRules say in its namespace, nothing more.
func whereaboutsRBAC() (*rbacv1.Role, *rbacv1.RoleBinding) {
	meta := metav1.ObjectMeta{Name: "podvirt:whereabouts", Namespace: whereaboutsNamespace}
	role := &rbacv1.Role{ObjectMeta: meta, Rules: WhereaboutsRules}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: meta,
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "podvirt:whereabouts"}},
	}
	return role, binding
}

// crdsFromFiles reads the CustomResourceDefinitions in YAML files.
func crdsFromFiles(files []string) ([]*apiextensionsv1.CustomResourceDefinition, error) {
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(b, crd); err != nil {
			return nil, fmt.Errorf("CRD file %s: %w", f, err)
		}
		crds = append(crds, crd)
	}
	return crds, nil
}

func (c *Cluster) applyAddons(ctx context.Context) error {
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	ext, err := apiextensions.NewForConfig(cfg)
	if err != nil {
		return err
	}
	whereaboutsCRDs, err := deps.CRDs("whereabouts")
	if err != nil {
		return err
	}
	crds, err := crdsFromFiles(whereaboutsCRDs)
	if err != nil {
		return err
	}
	crds = append(crds, apiserver.NetworkAttachmentDefinitionCRD())
	for _, crd := range crds {
		if _, err := ext.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create CRD %s: %w", crd.Name, err)
		}
	}
	cs, err := c.clientset()
	if err != nil {
		return err
	}
	role, binding := multusRBAC()
	if _, err := cs.RbacV1().ClusterRoles().Create(ctx, role, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRole %s: %w", role.Name, err)
	}
	if _, err := cs.RbacV1().ClusterRoleBindings().Create(ctx, binding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create ClusterRoleBinding %s: %w", binding.Name, err)
	}
	waRole, waBinding := whereaboutsRBAC()
	if _, err := cs.RbacV1().Roles(waRole.Namespace).Create(ctx, waRole, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create Role %s/%s: %w", waRole.Namespace, waRole.Name, err)
	}
	if _, err := cs.RbacV1().RoleBindings(waBinding.Namespace).Create(ctx, waBinding, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create RoleBinding %s/%s: %w", waBinding.Namespace, waBinding.Name, err)
	}
	// whereabouts fails every ADD without a flat config file; the NADs
	// carry all of its settings, so the file is empty.
	if err := writeFile(c.Whereabouts().ConfigurationPath, "{}\n"); err != nil {
		return err
	}
	for _, crd := range crds {
		err := c.waitFor(ctx, "CRD "+crd.Name+" Established", "kube-apiserver", time.Minute, func(ctx context.Context) (bool, error) {
			got, err := ext.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
			if err != nil {
				return false, err
			}
			for _, cond := range got.Status.Conditions {
				if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return err
		}
	}
	return nil
}
