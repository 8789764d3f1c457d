// Package chart drives the podvirt Helm chart (charts/podvirt) with the
// pinned helm binary: values for a local cluster (test/env/cluster), the
// VolumeSnapshot CRDs the chart expects the cluster to have, install and
// uninstall. `make demo` and the e2e suite install podvirt through it; its
// tests lint, render, dry-run and install the chart on real API servers,
// and create its examples on one.
package chart

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextensions "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/yaml"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/images/components"
)

// Dir is the chart's directory in this checkout.
func Dir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "..", "charts", "podvirt")
}

// Helm runs the pinned helm with its state (cache, config, data) in a
// private directory, so nothing of the user's helm setup leaks in or out.
type Helm struct {
	bin, home, kubeconfig string
}

// NewHelm returns a helm that keeps its state under home and talks to the
// cluster of kubeconfig ("" for commands that need no cluster).
func NewHelm(home, kubeconfig string) (*Helm, error) {
	bin, err := deps.Binary("helm", "helm")
	if err != nil {
		return nil, err
	}
	return &Helm{bin: bin, home: home, kubeconfig: kubeconfig}, nil
}

// Run runs helm with args and returns its standard output; an error
// carries its standard error.
func (h *Helm) Run(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, h.bin, args...)
	cmd.Env = append(os.Environ(),
		"HELM_CACHE_HOME="+filepath.Join(h.home, "cache"),
		"HELM_CONFIG_HOME="+filepath.Join(h.home, "config"),
		"HELM_DATA_HOME="+filepath.Join(h.home, "data"),
		"KUBECONFIG="+h.kubeconfig,
	)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return stdout.String(), fmt.Errorf("helm %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return stdout.String(), nil
}

// LocalValues are the --set values that fit the chart to a local cluster:
// its kubelet root and CNI bin dir; the CSI driver's state under the
// kubelet root (Bidirectional mount propagation needs a shared mount, and
// the cluster makes its kubelet root one; the chart's default
// /var/lib/podvirt/csi would also be shared by every cluster on the
// machine); and the API server reached at the kubeconfig's address, since
// a local cluster may run without kube-proxy (only one per machine can).
func LocalValues(c *cluster.Cluster) ([]string, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(cfg.Host)
	if err != nil || u.Hostname() == "" || u.Port() == "" {
		return nil, fmt.Errorf("kubeconfig %s: server %q has no host:port (%w)", c.Kubeconfig(), cfg.Host, err)
	}
	return []string{
		"kubeletRootDir=" + c.KubeletRootDir(),
		"cniBinDir=" + c.CNIBinDir(),
		"handler.netnsDir=" + c.PodNetNSDir(),
		"csi.stateDir=" + filepath.Join(c.KubeletRootDir(), "podvirt-csi"),
		"kubernetesAPI.host=" + u.Hostname(),
		"kubernetesAPI.port=" + u.Port(),
		// imported, never pulled: fail fast if an image is missing
		"imagePullPolicy=Never",
	}, nil
}

// SnapshotCRDDir holds the VolumeSnapshot CRDs (snapshot.storage.k8s.io)
// `make deps` copies out of external-snapshotter's client module, the
// version the sidecars are built from.
func SnapshotCRDDir() (string, error) {
	bin, err := deps.Binary("csi-sidecars", "snapshot-controller")
	if err != nil {
		return "", err
	}
	dir := filepath.Join(filepath.Dir(bin), "crd")
	if _, err := os.Stat(filepath.Join(dir, "snapshot.storage.k8s.io_volumesnapshots.yaml")); err != nil {
		return "", fmt.Errorf("the VolumeSnapshot CRDs are missing from %s: run 'make deps'", dir)
	}
	return dir, nil
}

// ApplySnapshotCRDs creates the VolumeSnapshot CRDs on the cluster of cfg
// (those it has already are left as they are) and waits until they are
// served.
func ApplySnapshotCRDs(ctx context.Context, cfg *rest.Config) error {
	dir, err := SnapshotCRDDir()
	if err != nil {
		return err
	}
	return applyCRDs(ctx, cfg, dir, false)
}

// ApplyChartCRDs creates or updates the chart's own CRDs, as `kubectl
// apply -f charts/podvirt/crds` before `helm upgrade` does (helm installs
// a chart's crds/ once and never upgrades them), and waits until they are
// served.
func ApplyChartCRDs(ctx context.Context, cfg *rest.Config) error {
	return applyCRDs(ctx, cfg, filepath.Join(Dir(), "crds"), true)
}

// applyCRDs creates the CRDs of dir's files, replacing the specs of those
// that exist when update is set.
func applyCRDs(ctx context.Context, cfg *rest.Config, dir string, update bool) error {
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		return err
	}
	cs, err := apiextensions.NewForConfig(cfg)
	if err != nil {
		return err
	}
	crds := cs.ApiextensionsV1().CustomResourceDefinitions()
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.UnmarshalStrict(b, crd); err != nil {
			return fmt.Errorf("CRD %s: %w", f, err)
		}
		_, err = crds.Create(ctx, crd, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) && update {
			cur, gerr := crds.Get(ctx, crd.Name, metav1.GetOptions{})
			if gerr != nil {
				return fmt.Errorf("get CRD %s: %w", crd.Name, gerr)
			}
			cur.Spec = crd.Spec
			_, err = crds.Update(ctx, cur, metav1.UpdateOptions{})
		}
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("apply CRD %s: %w", crd.Name, err)
		}
		if err := waitEstablished(ctx, cs, crd.Name); err != nil {
			return err
		}
	}
	return nil
}

func waitEstablished(ctx context.Context, cs *apiextensions.Clientset, name string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for {
		crd, err := cs.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, name, metav1.GetOptions{})
		if err == nil {
			for _, c := range crd.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return nil
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("CRD %s not established within a minute (last error: %w)", name, err)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// InstallOptions describe an install on a local cluster.
type InstallOptions struct {
	Release, Namespace string
	// Set are more --set values, e.g. "storageClass.registries={a,b}".
	Set []string
	// Timeout bounds `helm install --wait`, e.g. "10m".
	Timeout string
	// Progress receives one line per step; nil discards them.
	Progress io.Writer
}

// Install imports every podvirt image into c's containerd, applies the
// VolumeSnapshot CRDs and runs `helm install --wait` with LocalValues.
func Install(ctx context.Context, c *cluster.Cluster, h *Helm, opts InstallOptions) error {
	if opts.Progress == nil {
		opts.Progress = io.Discard
	}
	if opts.Release == "" || opts.Namespace == "" {
		return errors.New("chart install: Release and Namespace are required")
	}
	values, err := LocalValues(c)
	if err != nil {
		return err
	}
	changed, err := components.BuildAndImport(ctx, c.ContainerdSockets(), components.Options{Progress: opts.Progress})
	if err != nil {
		return err
	}
	cfg, err := c.RESTConfig()
	if err != nil {
		return err
	}
	if err := ApplySnapshotCRDs(ctx, cfg); err != nil {
		return err
	}
	if err := ApplyChartCRDs(ctx, cfg); err != nil {
		return err
	}
	timeout := opts.Timeout
	if timeout == "" {
		timeout = "10m"
	}
	verb, err := h.prepareUpgrade(ctx, opts.Release, opts.Namespace, opts.Progress)
	if err != nil {
		return err
	}
	args := []string{"upgrade", "--install", opts.Release, Dir(), "--namespace", opts.Namespace, "--create-namespace", "--wait", "--timeout", timeout}
	for _, s := range append(values, opts.Set...) {
		args = append(args, "--set", s)
	}
	fmt.Fprintf(opts.Progress, "[chart] helm upgrade --install: %s release %s in namespace %s (--wait, up to %s)\n", verb, opts.Release, opts.Namespace, timeout)
	out, err := h.Run(ctx, args...)
	fmt.Fprint(opts.Progress, out) // the release's NOTES: what to do next
	if err != nil {
		return err
	}
	wait, err := time.ParseDuration(timeout)
	if err != nil {
		return fmt.Errorf("chart install: timeout %q: %w", timeout, err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	if verb == "upgrade" && len(changed) > 0 {
		// The chart names images by tag, which a rebuild keeps: helm sees
		// no change, so restart what runs an image that did change, as
		// `kubectl rollout restart` does.
		restarted, err := restartWorkloads(ctx, cs, opts.Release, opts.Namespace, changed)
		if err != nil {
			return err
		}
		if len(restarted) > 0 {
			fmt.Fprintf(opts.Progress, "[chart] restarted %s: their images changed\n", strings.Join(restarted, ", "))
		}
	}
	return waitRolledOut(ctx, cs, opts.Release, opts.Namespace, wait)
}

// restartWorkloads restarts the release's Deployments and DaemonSets whose
// pods run one of images, by stamping their pod template, and returns their
// names.
func restartWorkloads(ctx context.Context, cs kubernetes.Interface, release, ns string, images []string) ([]string, error) {
	selector := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	type workload struct {
		name  string // kind/name
		spec  corev1.PodSpec
		patch func(ctx context.Context, data []byte) error
	}
	var all []workload
	deployments, err := cs.AppsV1().Deployments(ns).List(ctx, selector)
	if err != nil {
		return nil, fmt.Errorf("list Deployments of release %s: %w", release, err)
	}
	for _, d := range deployments.Items {
		all = append(all, workload{"deployment/" + d.Name, d.Spec.Template.Spec, func(ctx context.Context, data []byte) error {
			_, err := cs.AppsV1().Deployments(ns).Patch(ctx, d.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
			return err
		}})
	}
	daemonSets, err := cs.AppsV1().DaemonSets(ns).List(ctx, selector)
	if err != nil {
		return nil, fmt.Errorf("list DaemonSets of release %s: %w", release, err)
	}
	for _, d := range daemonSets.Items {
		all = append(all, workload{"daemonset/" + d.Name, d.Spec.Template.Spec, func(ctx context.Context, data []byte) error {
			_, err := cs.AppsV1().DaemonSets(ns).Patch(ctx, d.Name, types.StrategicMergePatchType, data, metav1.PatchOptions{})
			return err
		}})
	}
	patch := []byte(fmt.Sprintf(`{"spec":{"template":{"metadata":{"annotations":{"podvirt.io/restartedAt":%q}}}}}`, time.Now().UTC().Format(time.RFC3339)))
	var restarted []string
	for _, w := range all {
		if !slices.ContainsFunc(append(w.spec.InitContainers, w.spec.Containers...), func(c corev1.Container) bool { return slices.Contains(images, c.Image) }) {
			continue
		}
		if err := w.patch(ctx, patch); err != nil {
			return restarted, fmt.Errorf("restart %s in %s: %w", w.name, ns, err)
		}
		restarted = append(restarted, w.name)
	}
	return restarted, nil
}

// prepareUpgrade readies release for `helm upgrade --install` and says
// which it will do: install it, or upgrade it in place. A release left
// half-done by an interrupted run (pending-install, pending-upgrade, or a
// first install that failed) would refuse both: it is rolled back to its
// last deployed revision, or uninstalled when it never had one.
func (h *Helm) prepareUpgrade(ctx context.Context, release, ns string, progress io.Writer) (string, error) {
	out, err := h.Run(ctx, "history", release, "--namespace", ns, "--output", "json", "--max", "256")
	if err != nil {
		if strings.Contains(err.Error(), "release: not found") {
			return "install", nil
		}
		return "", err
	}
	var history []struct {
		Revision int    `json:"revision"`
		Status   string `json:"status"`
	}
	if err := json.Unmarshal([]byte(out), &history); err != nil || len(history) == 0 {
		return "", fmt.Errorf("helm history %s: unreadable answer %q: %w", release, out, err)
	}
	latest := history[len(history)-1]
	if latest.Status == "deployed" {
		return "upgrade", nil
	}
	for i := len(history) - 1; i >= 0; i-- {
		if history[i].Status == "deployed" || history[i].Status == "superseded" {
			fmt.Fprintf(progress, "[chart] release %s is %s at revision %d (an interrupted run): rolling back to revision %d\n", release, latest.Status, latest.Revision, history[i].Revision)
			if _, err := h.Run(ctx, "rollback", release, fmt.Sprint(history[i].Revision), "--namespace", ns, "--wait"); err != nil {
				return "", err
			}
			return "upgrade", nil
		}
	}
	fmt.Fprintf(progress, "[chart] release %s is %s and was never deployed (an interrupted run): uninstalling it first\n", release, latest.Status)
	if _, err := h.Run(ctx, "uninstall", release, "--namespace", ns, "--wait"); err != nil {
		return "", err
	}
	return "install", nil
}

// waitRolledOut waits until every DaemonSet of the release has an updated,
// Ready pod on each node it is scheduled to and every Deployment has its
// replicas updated and available, as `kubectl rollout status` does. helm's
// --wait does not: it subtracts maxUnavailable (1), so on a one-node
// cluster it accepts a DaemonSet whose only pod is not Ready yet.
func waitRolledOut(ctx context.Context, cs kubernetes.Interface, release, ns string, timeout time.Duration) error {
	selector := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	var pending []string
	var listErr error
	err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, timeout, true, func(ctx context.Context) (bool, error) {
		pending = pending[:0]
		daemonSets, err := cs.AppsV1().DaemonSets(ns).List(ctx, selector)
		if listErr = err; err != nil {
			return false, nil // the API server may be busy: ask again
		}
		for _, ds := range daemonSets.Items {
			st := ds.Status
			if st.ObservedGeneration < ds.Generation || st.DesiredNumberScheduled == 0 ||
				st.NumberReady < st.DesiredNumberScheduled || st.UpdatedNumberScheduled < st.DesiredNumberScheduled {
				pending = append(pending, fmt.Sprintf("daemonset/%s (%d/%d ready)", ds.Name, st.NumberReady, st.DesiredNumberScheduled))
			}
		}
		deployments, err := cs.AppsV1().Deployments(ns).List(ctx, selector)
		if listErr = err; err != nil {
			return false, nil
		}
		for _, d := range deployments.Items {
			st, want := d.Status, ptr.Deref(d.Spec.Replicas, 1)
			if st.ObservedGeneration < d.Generation || st.UpdatedReplicas < want || st.AvailableReplicas < want || st.Replicas > want {
				pending = append(pending, fmt.Sprintf("deployment/%s (%d/%d updated and available)", d.Name, min(st.UpdatedReplicas, st.AvailableReplicas), want))
			}
		}
		return len(pending) == 0, nil
	})
	switch {
	case err == nil:
		return nil
	case listErr != nil:
		return fmt.Errorf("chart install: list the workloads of release %s in %s: %w", release, ns, listErr)
	}
	return fmt.Errorf("chart install: not rolled out %s after helm: %v; see `kubectl -n %s describe daemonset,deployment`", timeout, pending, ns)
}

// releaseKinds are every kind the chart creates; after helm uninstall none
// may carry the release's label.
var releaseKinds = []struct {
	gvr        schema.GroupVersionResource
	namespaced bool
}{
	{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "deployments"}, true},
	{schema.GroupVersionResource{Group: "apps", Version: "v1", Resource: "daemonsets"}, true},
	{schema.GroupVersionResource{Version: "v1", Resource: "pods"}, true},
	{schema.GroupVersionResource{Version: "v1", Resource: "serviceaccounts"}, true},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "roles"}, true},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "rolebindings"}, true},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterroles"}, false},
	{schema.GroupVersionResource{Group: "rbac.authorization.k8s.io", Version: "v1", Resource: "clusterrolebindings"}, false},
	{schema.GroupVersionResource{Group: "storage.k8s.io", Version: "v1", Resource: "storageclasses"}, false},
	{schema.GroupVersionResource{Group: "storage.k8s.io", Version: "v1", Resource: "csidrivers"}, false},
	{schema.GroupVersionResource{Group: "snapshot.storage.k8s.io", Version: "v1", Resource: "volumesnapshotclasses"}, false},
	{schema.GroupVersionResource{Group: "k8s.cni.cncf.io", Version: "v1", Resource: "network-attachment-definitions"}, true},
}

// Leftovers lists the objects of the release still in the cluster (kind
// and name): after helm uninstall, none.
func Leftovers(ctx context.Context, cfg *rest.Config, release, ns string) ([]string, error) {
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, err
	}
	selector := metav1.ListOptions{LabelSelector: "app.kubernetes.io/instance=" + release}
	var left []string
	for _, k := range releaseKinds {
		var r dynamic.ResourceInterface = dyn.Resource(k.gvr)
		if k.namespaced {
			r = dyn.Resource(k.gvr).Namespace(ns)
		}
		list, err := r.List(ctx, selector)
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", k.gvr.Resource, err)
		}
		for _, o := range list.Items {
			left = append(left, k.gvr.Resource+"/"+o.GetName())
		}
	}
	return left, nil
}

// DashboardFile is the chart's Grafana dashboard.
func DashboardFile() string { return filepath.Join(Dir(), "dashboards", "podvirt.json") }

// DashboardQueries reads a Grafana dashboard's PromQL queries, keyed by
// panel title and target ref ("CPU/A"); an error names a panel without any.
func DashboardQueries(dashboard []byte) (map[string]string, error) {
	var d struct {
		Panels []struct {
			Title   string `json:"title"`
			Type    string `json:"type"`
			Targets []struct {
				Expr  string `json:"expr"`
				RefID string `json:"refId"`
			} `json:"targets"`
		} `json:"panels"`
	}
	if err := json.Unmarshal(dashboard, &d); err != nil {
		return nil, fmt.Errorf("dashboard: %w", err)
	}
	exprs := map[string]string{}
	for _, p := range d.Panels {
		if p.Type == "row" {
			continue
		}
		if len(p.Targets) == 0 {
			return nil, fmt.Errorf("dashboard: panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			if tg.Expr == "" || tg.RefID == "" {
				return nil, fmt.Errorf("dashboard: panel %q has a target without expr or refId", p.Title)
			}
			exprs[p.Title+"/"+tg.RefID] = tg.Expr
		}
	}
	return exprs, nil
}

// DashboardMetrics is the set of podvirt series names the queries read.
func DashboardMetrics(exprs map[string]string) map[string]bool {
	names := map[string]bool{}
	for _, e := range exprs {
		for _, n := range metricName.FindAllString(e, -1) {
			names[n] = true
		}
	}
	return names
}

var metricName = regexp.MustCompile(`podvirt_[a-z0-9_]+`)
