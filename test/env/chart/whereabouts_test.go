package chart

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/podvirt/podvirt/test/deps"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// TestWhereaboutsPodsTwin runs the pinned whereabouts as the chart's
// "-pods" twin configures it, against a real API server, with a
// kubeconfig whose ServiceAccount has only cluster.WhereaboutsRules: pods added at
// once (as on two nodes) get distinct addresses of the pods' range, a
// deleted pod's address is handed out again, and without the flat config
// file nothing works.
func TestWhereaboutsPodsTwin(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	bin, err := deps.Binary("whereabouts", "whereabouts")
	if err != nil {
		t.Fatal(err)
	}
	crds, err := deps.CRDs("whereabouts")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := apiserver.Start(apiserver.Options{CRDDirs: []string{filepath.Dir(crds[0])}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	cs, err := kubernetes.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}

	// The ServiceAccount whereabouts acts as, in its own namespace.
	const ns, sa = "whereabouts", "whereabouts"
	if _, err := cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().Roles(ns).Create(ctx, &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Name: sa}, Rules: cluster.WhereaboutsRules}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := cs.RbacV1().RoleBindings(ns).Create(ctx, &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: sa},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: sa},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: sa}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tok, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, &authenticationv1.TokenRequest{}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	kubeconfig, flatFile := filepath.Join(dir, "whereabouts.kubeconfig"), filepath.Join(dir, "whereabouts.conf")
	if err := clientcmd.WriteToFile(clientcmdapi.Config{
		Clusters:       map[string]*clientcmdapi.Cluster{"local": {Server: srv.Config.Host, CertificateAuthorityData: srv.Config.CAData}},
		AuthInfos:      map[string]*clientcmdapi.AuthInfo{sa: {Token: tok.Status.Token}},
		Contexts:       map[string]*clientcmdapi.Context{sa: {Cluster: "local", AuthInfo: sa, Namespace: ns}},
		CurrentContext: sa,
	}, kubeconfig); err != nil {
		t.Fatal(err)
	}

	var config string
	for _, obj := range render(ctx, t, newHelm(t, ""), "default", []string{
		"networks.bridge.create=true", "networks.bridge.pods.create=true", "networks.bridge.pods.ipam=whereabouts",
		"networks.whereabouts.kubeconfig=" + kubeconfig, "networks.whereabouts.configurationPath=" + flatFile,
	}) {
		if obj.GetKind() == "NetworkAttachmentDefinition" && obj.GetName() == "l2-bridge-pods" {
			config, _, _ = unstructured.NestedString(obj.Object, "spec", "config")
		}
	}
	if config == "" {
		t.Fatal("the chart rendered no l2-bridge-pods NetworkAttachmentDefinition")
	}
	wa := func(command, pod string) (string, error) {
		cmd := exec.CommandContext(ctx, bin)
		cmd.Env = []string{
			"CNI_COMMAND=" + command, "CNI_CONTAINERID=sandbox-" + pod, "CNI_NETNS=/var/run/netns/" + pod,
			"CNI_IFNAME=net1", "CNI_PATH=" + filepath.Dir(bin),
			"CNI_ARGS=IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=" + pod,
		}
		cmd.Stdin = strings.NewReader(config)
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			return "", fmt.Errorf("whereabouts %s %s: %w: %s%s", command, pod, err, stdout.String(), lastLines(stderr.String(), 5))
		}
		if command != "ADD" {
			return "", nil
		}
		var res struct {
			IPs []struct{ Address, Gateway string } `json:"ips"`
		}
		if err := json.Unmarshal(stdout.Bytes(), &res); err != nil || len(res.IPs) != 1 || res.IPs[0].Gateway != "192.168.200.1" {
			return "", fmt.Errorf("whereabouts ADD %s: result %s, want one address with gateway 192.168.200.1", pod, stdout.String())
		}
		return res.IPs[0].Address, nil
	}

	// whereabouts looks for the flat file at configuration_path, then at
	// these; one of them must exist.
	onHost := false
	for _, p := range []string{"/etc/kubernetes/cni/net.d", "/etc/cni/net.d", "/host/etc/cni/net.d"} {
		if _, err := os.Stat(p + "/whereabouts.d/whereabouts.conf"); err == nil {
			onHost = true
		}
	}
	if onHost {
		t.Log("a flat file is on one of this host's default paths: not checking that a missing one fails")
	} else if _, err := wa("ADD", "early"); err == nil || !strings.Contains(err.Error(), "config file not found") {
		t.Errorf("ADD without the flat config file: err = %v, want \"config file not found\"", err)
	}
	if err := os.WriteFile(flatFile, []byte("{}"), 0o600); err != nil {
		t.Fatal(err)
	}

	// Two pods at once, as on two nodes: host-local would give both .200.
	addrs := map[string]string{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for _, pod := range []string{"a", "b"} {
		wg.Go(func() {
			addr, err := wa("ADD", pod)
			if err != nil {
				t.Error(err)
			}
			mu.Lock()
			addrs[pod] = addr
			mu.Unlock()
		})
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	for pod, addr := range addrs {
		if addr != "192.168.200.200/24" && addr != "192.168.200.201/24" {
			t.Errorf("pod %s got %s, want .200 or .201 of the pods' range", pod, addr)
		}
	}
	if addrs["a"] == addrs["b"] {
		t.Fatalf("pods a and b both got %s", addrs["a"])
	}
	if again, err := wa("ADD", "b"); err != nil || again != addrs["b"] {
		t.Errorf("ADD b again = %s, %v; want its address %s", again, err, addrs["b"])
	}
	if _, err := wa("DEL", "a"); err != nil {
		t.Fatal(err)
	}
	if c, err := wa("ADD", "c"); err != nil || c != addrs["a"] {
		t.Errorf("ADD c after DEL a = %s, %v; want a's address %s", c, err, addrs["a"])
	}

	dyn, err := dynamic.NewForConfig(srv.Config)
	if err != nil {
		t.Fatal(err)
	}
	pool, err := dyn.Resource(schema.GroupVersionResource{Group: "whereabouts.cni.cncf.io", Version: "v1alpha1", Resource: "ippools"}).
		Namespace(ns).Get(ctx, "192.168.200.0-24", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if allocs, _, _ := unstructured.NestedMap(pool.Object, "spec", "allocations"); len(allocs) != 2 {
		t.Errorf("IPPool allocations = %v, want b's and c's", allocs)
	}
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-n):], "\n")
}
