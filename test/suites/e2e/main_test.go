// Package e2e is podvirt as a user meets it: a local cluster, the chart
// installed with helm, the test guest in a registry pair whose first mirror
// is down, and real VMs driven with kubectl-style objects and podvirtctl.
// The tests share one cluster and one install (TestMain) and run in any
// order (go test -shuffle=on): each starts with useStack, which installs
// the chart again if TestUninstall removed it, and makes what it needs
// rather than counting on a test before it.
package e2e

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/internal/testlog"
	"github.com/podvirt/podvirt/test/env/cluster"
	"github.com/podvirt/podvirt/test/env/stack"
)

var (
	st           *stack.Stack
	stackOptions stack.Options // what st was installed with
	installTook  time.Duration // how long the last stack.Install took
	uninstalled  bool          // TestUninstall removed the release
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "podvirt-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	c, err := cluster.New(cluster.Config{
		Dir: dir, Name: "pve2e", Nodes: 2, NodeIP: net.IPv4(10, 250, 6, 1),
		PodSubnet: "10.244.6.0/23", ServiceSubnet: "10.0.6.0/24", BasePort: 8843,
		Progress: os.Stderr,
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err, "(run `make deps`)")
		return 1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()
	defer func() {
		downCtx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		defer cancel()
		if err := c.Down(downCtx); err != nil {
			fmt.Fprintln(os.Stderr, "e2e: cluster down:", err)
		}
	}()
	if err := c.Up(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: cluster up:", err)
		return 1
	}
	stackOptions = stack.Options{Dir: filepath.Join(dir, "stack"), Progress: os.Stderr,
		// Slow enough that the migration tests can act while one runs.
		Set: []string{fmt.Sprintf("migrations.bandwidthPerMigration=%d", migrationBandwidthMiB)}}
	start := time.Now()
	st, err = stack.Install(ctx, c, stackOptions)
	installTook = time.Since(start)
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e: installing podvirt:", err)
		return 1
	}
	defer func() { st.Mirrors.Stop() }()
	return m.Run()
}

// useStack starts every test: the product is installed, again if
// TestUninstall ran before this test (the images and the mirrors are kept,
// so that is mostly helm's work).
func useStack(t *testing.T) {
	t.Helper()
	if !uninstalled {
		return
	}
	ctx := testContext(t, 20*time.Minute)
	opts := stackOptions
	opts.Progress = testlog.Writer(t)
	start := time.Now()
	s, err := stack.Install(ctx, st.Cluster, opts)
	if err != nil {
		t.Fatalf("installing podvirt again after TestUninstall: %v", err)
	}
	// The new install took the running mirror over: the same process.
	st, installTook, uninstalled = s, time.Since(start), false
}

// twoNodes returns the cluster's nodes, failing a test that needs two
// when there are fewer.
func twoNodes(t *testing.T) []cluster.Node {
	t.Helper()
	nodes := st.Cluster.Nodes()
	if len(nodes) < 2 {
		t.Fatalf("the e2e cluster has %d node(s); this test needs 2", len(nodes))
	}
	return nodes
}

func testContext(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func createVM(ctx context.Context, t *testing.T, vm *v1.VirtualMachine) {
	t.Helper()
	if err := st.Client.Create(ctx, vm); err != nil {
		t.Fatalf("creating vm %s: %v", vm.Name, err)
	}
}

// deleteVM deletes the VM and waits until it and its VMI are gone; its
// disks are retained.
func deleteVM(t testing.TB, name string) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := st.DeleteVM(ctx, name, 5*time.Minute); err != nil {
		t.Error(err)
	}
}

func podvirtctl(ctx context.Context, t *testing.T, args ...string) string {
	t.Helper()
	bin, err := st.Podvirtctl(ctx)
	if err != nil {
		t.Fatal(err)
	}
	args = append(args, "--namespace", stack.Namespace, "--kubeconfig", st.Cluster.Kubeconfig())
	out, err := exec.CommandContext(ctx, bin, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("podvirtctl %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func getVMI(ctx context.Context, name string) (*v1.VirtualMachineInstance, error) {
	vmi := &v1.VirtualMachineInstance{}
	err := st.Client.Get(ctx, types.NamespacedName{Namespace: stack.Namespace, Name: name}, vmi)
	return vmi, err
}

// waitNewVMI waits until the VM's VMI is Running with a UID other than old.
func waitNewVMI(ctx context.Context, t *testing.T, name string, old types.UID) *v1.VirtualMachineInstance {
	t.Helper()
	var vmi *v1.VirtualMachineInstance
	err := stack.Poll(ctx, 8*time.Minute, func() (bool, error) {
		v, err := getVMI(ctx, name)
		if err != nil {
			return false, client.IgnoreNotFound(err)
		}
		vmi = v
		return v.UID != old && v.Status.Phase == v1.Running, nil
	})
	if err != nil {
		t.Fatalf("vm %s: no new Running VMI (old uid %s, now %+v): %v", name, old, vmi, err)
	}
	return vmi
}

// waitVMIRunning waits until the VM's VMI is Running (whatever its
// addresses: st.WaitRunning also waits for one on the L2).
func waitVMIRunning(ctx context.Context, t *testing.T, name string) *v1.VirtualMachineInstance {
	t.Helper()
	return waitNewVMI(ctx, t, name, "")
}

func waitNoVMI(ctx context.Context, t *testing.T, name string) {
	t.Helper()
	if err := stack.Poll(ctx, 5*time.Minute, func() (bool, error) {
		_, err := getVMI(ctx, name)
		return apierrors.IsNotFound(err), nil
	}); err != nil {
		t.Fatalf("vm %s: VMI still there: %v", name, err)
	}
}
