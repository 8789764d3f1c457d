package chart

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"

	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// valueSets is the matrix every test renders: the defaults and sets that
// switch each optional part on or off.
var valueSets = []struct {
	name string
	set  []string
	// kinds are counted in the rendered output
	kinds map[string]int
}{
	{"defaults", nil, map[string]int{
		"Deployment": 2, "DaemonSet": 2, "CSIDriver": 1, "StorageClass": 1, "VolumeSnapshotClass": 1,
		"ClusterRole": 4, "Role": 3, "ServiceAccount": 4, "NetworkAttachmentDefinition": 0, "NetworkPolicy": 1,
	}},
	{"without CSI and snapshot controller", []string{"csi.enabled=false", "snapshotController.install=false"}, map[string]int{
		"Deployment": 1, "DaemonSet": 1, "CSIDriver": 0, "StorageClass": 0, "VolumeSnapshotClass": 0, "ClusterRole": 2,
		"NetworkPolicy": 0,
	}},
	{"storage options", []string{
		"csi.capacity=true", "storageClass.registries={reg-a.example:5000,reg-b.example:5000}",
		"storageClass.insecureRegistries={reg-a.example:5000}", "storageClass.format=raw",
		"storageClass.cloneStrategy=copy", "storageClass.default=true", "storageClass.reclaimPolicy=Retain",
		"storageClass.extraParameters.registrySecretName=pull", "storageClass.extraParameters.source=docker://os/debian:12",
		"volumeSnapshotClass.deletionPolicy=Retain", "csi.cacheSize=50Gi",
		"storageClass.allowedSources={quay.io,https://images.example.com/vm/}", "storageClass.allowPrivateSources=true",
		"csi.podCIDRs={10.244.0.0/16}", "csi.serviceCIDRs={10.96.0.0/12,fd00:10::/108}",
		"csi.networkPolicy.extraEgress[0].to[0].podSelector.matchLabels.app=registry",
	}, map[string]int{"StorageClass": 1, "VolumeSnapshotClass": 1, "NetworkPolicy": 1}},
	{"no network policy", []string{"csi.networkPolicy.enabled=false"}, map[string]int{"NetworkPolicy": 0, "DaemonSet": 2}},
	{"networks, KVM, two controllers, pull secrets", []string{
		"networks.macvlan.create=true", "networks.bridge.create=true", "networks.macvlan.master=ens4",
		"controller.useEmulation=false", "controller.replicas=2", "imagePullSecrets[0].name=regcred",
		"controller.nodeSelector.role=infra", "controller.extraArgs={--vm-workers=8}",
		"kubeletRootDir=/srv/kubelet", "cniBinDir=/usr/libexec/cni",
	}, map[string]int{"NetworkAttachmentDefinition": 2}},
	{"pods twins, the bridge's on whereabouts", []string{
		"networks.macvlan.create=true", "networks.macvlan.pods.create=true",
		"networks.bridge.create=true", "networks.bridge.pods.create=true", "networks.bridge.pods.ipam=whereabouts",
		"networks.whereabouts.kubeconfig=/srv/cni/whereabouts.kubeconfig",
	}, map[string]int{"NetworkAttachmentDefinition": 4}},
	{"forced TCG and snapshot controller, one registry", []string{
		"controller.useEmulation=true", "snapshotController.install=true", "imageRegistry=registry.example.com:5000/podvirt",
	}, map[string]int{"Deployment": 2}},
	{"no classes, other registry", []string{
		"storageClass.create=false", "volumeSnapshotClass.create=false",
		"images.controller.repository=registry.example/podvirt/controller", "images.controller.tag=v0.1.0",
		"images.csiProvisioner.repository=registry.k8s.io/sig-storage/csi-provisioner",
	}, map[string]int{"StorageClass": 0, "VolumeSnapshotClass": 0}},
	{"grafana dashboard", []string{"metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.folder=VMs"}, map[string]int{"ConfigMap": 1}},
}

func setArgs(set []string) []string {
	var args []string
	for _, s := range set {
		args = append(args, "--set", s)
	}
	return args
}

func newHelm(t *testing.T, kubeconfig string) *Helm {
	t.Helper()
	h, err := NewHelm(t.TempDir(), kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	return h
}

func TestLint(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHelm(t, "")
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			out, err := h.Run(ctx, append([]string{"lint", "--strict", Dir()}, setArgs(vs.set)...)...)
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
		})
	}
}

// TestSchemaRejects: values.schema.json turns typos and bad values away
// before anything renders.
func TestSchemaRejects(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	h := newHelm(t, "")
	for _, tc := range []struct{ set, want string }{
		{"storageClass.format=vhd", "/storageClass/format"},
		{"storageClass.cloneStrategy=link", "/storageClass/cloneStrategy"},
		{"kubeletRootDir=var/lib/kubelet", "/kubeletRootDir"},
		{"controller.replicas=0", "/controller/replicas"},
		{"controller.useEmulaton=true", "useEmulaton"},
		{"controller.useEmulation=maybe", "/controller/useEmulation"},
		{"snapshotController.install=yes", "/snapshotController/install"},
		{"snapshotController.enabled=false", "enabled"},
		{"imageRegistry=https://registry.example.com", "/imageRegistry"},
		{"storageClass.registries={a b}", "/storageClass/registries"},
		{"images.launcher.tag=", "/images/launcher/tag"},
		{"csi.podCIDRs={10.244.0.0}", "/csi/podCIDRs"},
		{"storageClass.allowPrivateSources=yes", "/storageClass/allowPrivateSources"},
		{"networks.bridge.pods.ipam=static", "/networks/bridge/pods/ipam"},
		{"networks.whereabouts.kubeconfig=whereabouts.kubeconfig", "/networks/whereabouts/kubeconfig"},
		{"metrics.serviceMonitor.enabled=yes", "/metrics/serviceMonitor/enabled"},
		{"metrics.serviceMonitor.interval=30", "/metrics/serviceMonitor/interval"},
		{"metrics.grafanaDashboard.namespace=Monitoring", "/metrics/grafanaDashboard/namespace"},
	} {
		t.Run(tc.set, func(t *testing.T) {
			_, err := h.Run(ctx, "template", "t", Dir(), "--set", tc.set)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("helm template --set %s: err = %v; want a schema error naming %s", tc.set, err, tc.want)
			}
		})
	}
}

// render runs helm template and decodes every object.
func render(ctx context.Context, t *testing.T, h *Helm, namespace string, set []string) []*unstructured.Unstructured {
	t.Helper()
	out, err := h.Run(ctx, append([]string{"template", "pv", Dir(), "--namespace", namespace}, setArgs(set)...)...)
	if err != nil {
		t.Fatal(err)
	}
	return decodeObjects(t, out)
}

// decodeObjects decodes every object of a multi-document YAML stream.
func decodeObjects(t *testing.T, out string) []*unstructured.Unstructured {
	t.Helper()
	var objs []*unstructured.Unstructured
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		obj := &unstructured.Unstructured{}
		err := dec.Decode(&obj.Object)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("decode YAML objects: %v", err)
		}
		if len(obj.Object) > 0 {
			objs = append(objs, obj)
		}
	}
	return objs
}

// TestTemplateDryRun renders every value set and has a real API server
// accept each object in a server-side dry-run apply (schema, defaulting,
// validation, admission), with the podvirt, VolumeSnapshot and
// NetworkAttachmentDefinition CRDs installed. It also holds the RBAC to
// least privilege: no wildcard anywhere.
func TestTemplateDryRun(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	snapshotCRDs, err := SnapshotCRDDir()
	if err != nil {
		t.Fatal(err)
	}
	const ns = "podvirt-dryrun"
	srv, dyn, mapper := chartAPIServer(ctx, t, ns, Dir()+"/crds", snapshotCRDs)
	h := newHelm(t, "")
	for _, vs := range valueSets {
		t.Run(vs.name, func(t *testing.T) {
			objs := render(ctx, t, h, ns, vs.set)
			kinds := map[string]int{}
			for _, obj := range objs {
				kinds[obj.GetKind()]++
				checkNoWildcards(t, obj)
				m, err := mapper.RESTMapping(obj.GroupVersionKind().GroupKind(), obj.GroupVersionKind().Version)
				if err != nil {
					t.Errorf("%s %s: the API server does not serve it: %v", obj.GetKind(), obj.GetName(), err)
					continue
				}
				var r dynamic.ResourceInterface = dyn.Resource(m.Resource)
				if m.Scope.Name() == meta.RESTScopeNameNamespace {
					if obj.GetNamespace() != ns {
						t.Errorf("%s %s is in namespace %q, want the release's %q", obj.GetKind(), obj.GetName(), obj.GetNamespace(), ns)
					}
					r = dyn.Resource(m.Resource).Namespace(ns)
				}
				_, err = r.Apply(ctx, obj.GetName(), obj, metav1.ApplyOptions{FieldManager: "chart-test", DryRun: []string{metav1.DryRunAll}, Force: true})
				if err != nil {
					t.Errorf("server-side dry-run of %s %s: %v", obj.GetKind(), obj.GetName(), err)
				}
			}
			for kind, want := range vs.kinds {
				if kinds[kind] != want {
					t.Errorf("rendered %d %s objects, want %d (all kinds: %v)", kinds[kind], kind, want, kinds)
				}
			}
			t.Logf("%d objects accepted: %v", len(objs), kinds)
		})
	}

	// helm install --dry-run=server: lookup and NOTES, on the same server.
	hs := newHelm(t, kubeconfigFor(t, srv.Config))
	t.Run("snapshot controller auto", func(t *testing.T) { testSnapshotControllerAuto(ctx, t, hs, dyn, ns) })
	t.Run("NOTES commands", func(t *testing.T) { testNotesCommands(ctx, t, hs, ns) })
}

// chartAPIServer starts a real API server with the CRDs under crdDirs and
// the NetworkAttachmentDefinition CRD, stopped when the test ends, and
// creates namespace ns in it.
func chartAPIServer(ctx context.Context, t *testing.T, ns string, crdDirs ...string) (*apiserver.Server, *dynamic.DynamicClient, meta.RESTMapper) {
	t.Helper()
	srv, err := apiserver.Start(apiserver.Options{
		CRDDirs: crdDirs,
		CRDs:    []*apiextensionsv1.CustomResourceDefinition{apiserver.NetworkAttachmentDefinitionCRD()},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	dyn, mapper := clients(t, srv.Config)
	nsObj := &unstructured.Unstructured{Object: map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": ns}}}
	if _, err := dyn.Resource(corev1.SchemeGroupVersion.WithResource("namespaces")).Create(ctx, nsObj, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	return srv, dyn, mapper
}

func clients(t *testing.T, cfg *rest.Config) (*dynamic.DynamicClient, meta.RESTMapper) {
	t.Helper()
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dyn, restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(dc))
}

func checkNoWildcards(t *testing.T, obj *unstructured.Unstructured) {
	t.Helper()
	if obj.GetKind() != "ClusterRole" && obj.GetKind() != "Role" {
		return
	}
	rules, _, _ := unstructured.NestedSlice(obj.Object, "rules")
	if len(rules) == 0 {
		t.Errorf("%s %s has no rules", obj.GetKind(), obj.GetName())
	}
	for _, r := range rules {
		rule, _ := r.(map[string]any)
		for _, field := range []string{"apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"} {
			vals, _, _ := unstructured.NestedStringSlice(rule, field)
			if slices.Contains(vals, "*") {
				t.Errorf("%s %s: wildcard in %s: %v", obj.GetKind(), obj.GetName(), field, rule)
			}
		}
	}
}

// TestInstallOnLocalCluster installs the chart with `helm install --wait`
// on a real single-node cluster with the images built by code, checks that
// every podvirt pod is Ready, that a disk provisioned by the CSI driver on
// a Retain StorageClass outlives `helm uninstall`, and that nothing else of
// the release is left.
func TestInstallOnLocalCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "pvchart-")
	if err != nil {
		t.Fatal(err)
	}
	var progress bytes.Buffer
	c, err := cluster.New(cluster.Config{
		Name: "pvchart", Dir: dir, NodeIP: []byte{10, 250, 4, 1},
		PodSubnet: "10.244.4.0/24", ServiceSubnet: "10.0.4.0/24", BasePort: 8643, KubeProxy: false,
		Progress: &progress,
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Down(context.Background()); err != nil {
			t.Errorf("cluster down: %v", err)
		}
		if left := c.Leftovers(); len(left) > 0 {
			t.Errorf("left over after Down: %v", left)
		}
		if t.Failed() {
			t.Logf("cluster progress:\n%s", progress.String())
		}
		_ = os.RemoveAll(dir)
	})
	if err := c.Up(ctx); err != nil {
		t.Fatal(err)
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		t.Fatal(err)
	}
	cs := typedClient(t, cfg)
	h := newHelm(t, c.Kubeconfig())
	const release, ns = "podvirt", "podvirt-system"
	start := time.Now()
	err = Install(ctx, c, h, InstallOptions{
		Release: release, Namespace: ns, Timeout: "8m", Progress: &progress,
		Set: []string{"storageClass.reclaimPolicy=Retain", "networks.bridge.create=true"},
	})
	if err != nil {
		t.Fatalf("%v\npods of the release:\n%s", err, podReport(ctx, cs, ns))
	}
	t.Logf("helm install --wait: %.0fs (images, CRDs, install)", time.Since(start).Seconds())
	if notes := progress.String(); !strings.Contains(notes, "is installed in namespace "+ns) || !strings.Contains(notes, "rollout status daemonset/"+release+"-csi-node") {
		t.Errorf("helm install printed no NOTES telling what to do next:\n%s", notes)
	}
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release})
	if err != nil {
		t.Fatal(err)
	}
	if len(pods.Items) < 4 {
		t.Errorf("release runs %d pods, want controller, handler, csi-node, snapshot-controller:\n%s", len(pods.Items), podReport(ctx, cs, ns))
	}
	for _, p := range pods.Items {
		if !podReady(&p) {
			t.Errorf("pod %s is not Ready after helm install --wait:\n%s", p.Name, podReport(ctx, cs, ns))
		}
	}

	var ready []string
	for _, p := range pods.Items {
		if podReady(&p) {
			ready = append(ready, p.Name)
		}
	}
	t.Logf("Ready: %v", ready)
	checkNodeIntegration(ctx, t, c, cs)

	pv := provisionRetainedDisk(ctx, t, cs, ns)
	t.Logf("disk %s provisioned by the chart's StorageClass, Released after its claim went", pv)

	if out, err := h.Run(ctx, "uninstall", release, "--namespace", ns, "--wait", "--timeout", "5m"); err != nil {
		t.Fatalf("%v\n%s", err, out)
	}
	checkNothingLeft(ctx, t, cfg, release, ns)
	if pv != "" {
		if _, err := cs.CoreV1().PersistentVolumes().Get(ctx, pv, metav1.GetOptions{}); err != nil {
			t.Errorf("retained disk %s did not survive helm uninstall: %v", pv, err)
		}
	}
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podReport says, per pod of the namespace, its phase and each container's
// state and readiness, with the end of the log of those that are not ready.
func podReport(ctx context.Context, cs clientset, ns string) string {
	pods, err := cs.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return "listing pods: " + err.Error()
	}
	var b strings.Builder
	for _, p := range pods.Items {
		fmt.Fprintf(&b, "- %s: %s ready=%v\n", p.Name, p.Status.Phase, podReady(&p))
		for _, st := range p.Status.ContainerStatuses {
			state := "running"
			switch {
			case st.State.Waiting != nil:
				state = "waiting: " + st.State.Waiting.Reason + " " + st.State.Waiting.Message
			case st.State.Terminated != nil:
				state = fmt.Sprintf("terminated: %s exit %d", st.State.Terminated.Reason, st.State.Terminated.ExitCode)
			}
			fmt.Fprintf(&b, "    %s: %s, ready=%v, restarts=%d\n", st.Name, state, st.Ready, st.RestartCount)
			if !st.Ready {
				tail := int64(8)
				logs, err := cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: st.Name, TailLines: &tail}).DoRaw(ctx)
				if err != nil && st.RestartCount > 0 {
					logs, _ = cs.CoreV1().Pods(ns).GetLogs(p.Name, &corev1.PodLogOptions{Container: st.Name, TailLines: &tail, Previous: true}).DoRaw(ctx)
				}
				for line := range strings.Lines(string(logs)) {
					fmt.Fprintf(&b, "      | %s", line)
				}
			}
		}
	}
	return b.String()
}
