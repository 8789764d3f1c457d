package chart

import (
	"bufio"
	"context"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podvirt/podvirt/test/deps"
)

// kubeconfigFor writes a kubeconfig for cfg, for helm's lookup.
func kubeconfigFor(t *testing.T, cfg *rest.Config) string {
	t.Helper()
	kc := clientcmdapi.NewConfig()
	kc.Clusters["test"] = &clientcmdapi.Cluster{Server: cfg.Host, CertificateAuthorityData: cfg.CAData, CertificateAuthority: cfg.CAFile}
	kc.AuthInfos["test"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData, ClientKeyData: cfg.KeyData, ClientCertificate: cfg.CertFile, ClientKey: cfg.KeyFile, Token: cfg.BearerToken,
	}
	kc.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	kc.CurrentContext = "test"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// dryRunInstall runs `helm install --dry-run=server`, which renders with
// lookup answered by the API server and renders NOTES (helm template does
// neither), and returns the rendered objects and the NOTES.
func dryRunInstall(ctx context.Context, t *testing.T, h *Helm, ns string, set []string) ([]*unstructured.Unstructured, string) {
	t.Helper()
	out, err := h.Run(ctx, append([]string{"install", "pv", Dir(), "--namespace", ns, "--dry-run=server"}, setArgs(set)...)...)
	if err != nil {
		t.Fatal(err)
	}
	manifest, notes, ok := strings.Cut(out, "\nNOTES:\n")
	if !ok {
		t.Fatalf("helm install --dry-run printed no NOTES:\n%s", out)
	}
	_, manifest, _ = strings.Cut(manifest, "\nMANIFEST:\n")
	return decodeObjects(t, manifest), notes
}

func hasSnapshotController(objs []*unstructured.Unstructured) bool {
	for _, o := range objs {
		if o.GetKind() == "Deployment" && o.GetName() == "pv-snapshot-controller" {
			return true
		}
	}
	return false
}

// testSnapshotControllerAuto: install=auto installs the snapshot
// controller until the cluster runs one, in any namespace; true and false
// do what they say whatever runs.
func testSnapshotControllerAuto(ctx context.Context, t *testing.T, h *Helm, dyn dynamic.Interface, ns string) {
	objs, notes := dryRunInstall(ctx, t, h, ns, nil)
	if !hasSnapshotController(objs) {
		t.Errorf("install=auto on a cluster without a snapshot controller rendered none")
	}
	if !strings.Contains(notes, "rollout status deployment/pv-snapshot-controller") {
		t.Errorf("NOTES do not tell to wait for the installed snapshot controller:\n%s", notes)
	}

	// As external-snapshotter's deploy/kubernetes/snapshot-controller has it.
	labels := map[string]string{"app.kubernetes.io/name": "snapshot-controller"}
	existing := &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "snapshot-ctrl", Labels: labels},
		Spec: appsv1.DeploymentSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: standIn(labels),
		},
	}
	u, err := runtime.DefaultUnstructuredConverter.ToUnstructured(existing)
	if err != nil {
		t.Fatal(err)
	}
	deployments := dyn.Resource(appsv1.SchemeGroupVersion.WithResource("deployments")).Namespace("kube-system")
	if _, err := deployments.Create(ctx, &unstructured.Unstructured{Object: u}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := deployments.Delete(context.Background(), existing.Name, metav1.DeleteOptions{}); err != nil {
			t.Errorf("delete the stand-in snapshot controller: %v", err)
		}
	}()

	objs, notes = dryRunInstall(ctx, t, h, ns, nil)
	if hasSnapshotController(objs) {
		t.Errorf("install=auto rendered a second snapshot controller beside kube-system/snapshot-ctrl")
	}
	if !strings.Contains(notes, "the cluster's kube-system/snapshot-ctrl") {
		t.Errorf("NOTES do not name the cluster's snapshot controller:\n%s", notes)
	}
	if objs, _ := dryRunInstall(ctx, t, h, ns, []string{"snapshotController.install=true"}); !hasSnapshotController(objs) {
		t.Errorf("install=true rendered no snapshot controller")
	}
	if objs, _ := dryRunInstall(ctx, t, h, ns, []string{"snapshotController.install=false"}); hasSnapshotController(objs) {
		t.Errorf("install=false rendered a snapshot controller")
	}
}

// testNotesCommands renders the NOTES of every value set and checks that
// each command line in them (one starting with podvirtctl or kubectl, each
// side of a pipe) parses: the real podvirtctl and kubectl accept its
// subcommand and flags (run with --help appended), and a podvirtctl line
// has the positional arguments and required flags its Usage line asks for.
func testNotesCommands(ctx context.Context, t *testing.T, h *Helm, ns string) {
	podvirtctl := filepath.Join(t.TempDir(), "podvirtctl")
	build := exec.CommandContext(ctx, "go", "build", "-o", podvirtctl, "./cmd/podvirtctl")
	build.Dir = filepath.Join(Dir(), "..", "..")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go build ./cmd/podvirtctl: %v\n%s", err, out)
	}
	kubectl, err := deps.Binary("kubernetes", "kubectl")
	if err != nil {
		t.Fatal(err)
	}
	checked := map[string]bool{}
	podvirtctlLines := 0
	for _, vs := range valueSets {
		_, notes := dryRunInstall(ctx, t, h, ns, vs.set)
		sc := bufio.NewScanner(strings.NewReader(notes))
		for sc.Scan() {
			line := strings.TrimSpace(sc.Text())
			if !strings.HasPrefix(line, "podvirtctl ") && !strings.HasPrefix(line, "kubectl ") {
				continue
			}
			for seg := range strings.SplitSeq(line, " | ") {
				seg = strings.TrimSpace(seg)
				if checked[seg] {
					continue
				}
				checked[seg] = true
				args := strings.Fields(seg)
				switch args[0] {
				case "podvirtctl":
					podvirtctlLines++
					checkCommand(ctx, t, vs.name, podvirtctl, args[1:], true)
				case "kubectl":
					checkCommand(ctx, t, vs.name, kubectl, args[1:], false)
				default:
					t.Errorf("NOTES (%s): %q pipes into %s, which the test does not know", vs.name, line, args[0])
				}
			}
		}
	}
	if podvirtctlLines < 5 {
		t.Errorf("found %d podvirtctl command lines in the NOTES, want the VM's lifecycle (create, console, stop, start, pause, ...)", podvirtctlLines)
	}
	t.Logf("%d command lines checked", len(checked))
}

// valueFlag is a flag that takes a value in a help's flag list:
// "  -n, --namespace string   ...".
var valueFlag = regexp.MustCompile(`^\s+(?:-(\w), )?--([\w-]+) (\w+)\s`)

// checkCommand runs bin with args and --help; with checkUsage it also holds
// args to the Usage line of that help.
func checkCommand(ctx context.Context, t *testing.T, set, bin string, args []string, checkUsage bool) {
	t.Helper()
	name := filepath.Base(bin) + " " + strings.Join(args, " ")
	out, err := exec.CommandContext(ctx, bin, append(append([]string{}, args...), "--help")...).CombinedOutput()
	if err != nil {
		t.Errorf("NOTES (%s): %q does not parse: %v\n%s", set, name, err, out)
		return
	}
	if !checkUsage {
		return
	}
	help := string(out)
	takesValue := map[string]bool{}
	usage := ""
	lines := strings.Split(help, "\n")
	for i, l := range lines {
		if l == "Usage:" && i+1 < len(lines) {
			usage = strings.TrimSpace(lines[i+1])
		}
		if m := valueFlag.FindStringSubmatch(l); m != nil {
			takesValue["--"+m[2]] = true
			if m[1] != "" {
				takesValue["-"+m[1]] = true
			}
		}
	}
	// What the line gives: positional arguments and flags.
	var positional []string
	given := map[string]bool{}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if !strings.HasPrefix(a, "-") {
			positional = append(positional, a)
			continue
		}
		flag, _, hasValue := strings.Cut(a, "=")
		given[flag] = true
		if !hasValue && takesValue[flag] {
			i++
		}
	}
	// What Usage asks for: "podvirtctl pause (vm|vmi) NAME [flags]",
	// "podvirtctl create vm NAME --image SOURCE [flags]".
	want := strings.Fields(usage)
	if len(want) == 0 || want[0] != "podvirtctl" {
		t.Errorf("NOTES (%s): %q: no podvirtctl Usage line in its help:\n%s", set, name, help)
		return
	}
	n := 0
	for i := 1; i < len(want); i++ {
		tok := want[i]
		switch {
		case tok == "[flags]" || tok == "[command]":
		case strings.HasPrefix(tok, "--"):
			if !given[tok] {
				t.Errorf("NOTES (%s): %q lacks %s, which %q requires", set, name, tok, usage)
			}
			i++ // its value's placeholder
		default:
			if n >= len(positional) {
				t.Errorf("NOTES (%s): %q lacks %s of %q", set, name, tok, usage)
				return
			}
			got := positional[n]
			n++
			if alts, ok := strings.CutPrefix(tok, "("); ok {
				if !slices.Contains(strings.Split(strings.TrimSuffix(alts, ")"), "|"), got) {
					t.Errorf("NOTES (%s): %q: %q is not one of %s in %q", set, name, got, tok, usage)
				}
			} else if strings.ToLower(tok) == tok && got != tok {
				t.Errorf("NOTES (%s): %q: %q where %q has %s", set, name, got, usage, tok)
			}
		}
	}
	if n != len(positional) {
		t.Errorf("NOTES (%s): %q has %d arguments, %q takes %d", set, name, len(positional), usage, n)
	}
}

// standIn is the pod template of a Deployment that only has to exist.
func standIn(labels map[string]string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{Labels: labels},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "registry.k8s.io/pause:3.10"}}},
	}
}
