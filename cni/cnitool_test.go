package cni

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/plugins/pkg/ns"

	"github.com/podvirt/podvirt/contracts/podlink"
)

// TestCnitool drives the built podvirt-l2 binary through the upstream
// cnitool the way a runtime does: add, check, status, gc, del.
func TestCnitool(t *testing.T) {
	requireRoot(t)
	plugins := upstreamPluginDir(t)
	tool := cnitoolPath(t)
	bin := buildPlugin(t)

	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		t.Run(mode, func(t *testing.T) {
			n := newNode(t)
			pod := newNS(t)
			dataDir := t.TempDir()
			confDir := t.TempDir()
			// A network name of its own: libcni caches attachments by
			// network under /var/lib/cni, and GC looks at that cache.
			netName := "pvl2-" + filepath.Base(pod.Path())
			plugin := modeFields(mode, 0)
			plugin["type"] = "podvirt-l2"
			plugin["guest"] = GuestTap
			resultsDir := t.TempDir()
			plugin["resultsDir"] = resultsDir
			plugin["ipam"] = map[string]any{"type": "host-local", "dataDir": dataDir, "ranges": [][]map[string]any{{{"subnet": "10.9.0.0/24"}}}}
			list, _ := json.Marshal(map[string]any{"cniVersion": "1.1.0", "name": netName, "plugins": []any{plugin}})
			if err := os.WriteFile(filepath.Join(confDir, "10-l2.conflist"), list, 0o644); err != nil {
				t.Fatal(err)
			}
			cnitool := func(verb string) (string, error) {
				var out, stderr bytes.Buffer
				err := n.Do(func(ns.NetNS) error {
					cmd := exec.Command(tool, verb, netName, pod.Path())
					cmd.Env = append(os.Environ(),
						"CNI_PATH="+joinPath(bin, plugins),
						"NETCONFPATH="+confDir,
						"CNI_IFNAME=net1",
					)
					cmd.Stdout, cmd.Stderr = &out, &stderr
					return cmd.Run()
				})
				if err != nil {
					t.Errorf("cnitool %s: %v\nstdout: %s\nstderr: %s", verb, err, out.String(), stderr.String())
				}
				return out.String(), err
			}
			t.Cleanup(func() { _, _ = cnitool("del") })

			out, err := cnitool("add")
			if err != nil {
				t.FailNow()
			}
			res := &current.Result{}
			if err := json.Unmarshal([]byte(out), res); err != nil {
				t.Fatalf("cnitool add printed %q: %v", out, err)
			}
			ip, tapIf := guestIP(t, res)
			if tapIf.Name != podlink.TapName("net1") {
				t.Errorf("IP %s on %q, want the tap", ip, tapIf.Name)
			}
			if got := networkLeases(t, dataDir, netName); !slices.Equal(got, []string{ip.String()}) {
				t.Errorf("leases %v, want [%s]", got, ip)
			}
			if got := linkNames(t, pod); !slices.Contains(got, podlink.TapName("net1")) {
				t.Errorf("pod links %v, want the tap", got)
			}
			// cnitool passes no K8S_POD_UID: nothing to save the result for.
			if entries, _ := os.ReadDir(resultsDir); len(entries) != 0 {
				t.Errorf("results saved without K8S_POD_UID: %d entries in %s", len(entries), resultsDir)
			}

			if _, err := cnitool("check"); err != nil {
				t.FailNow()
			}
			if _, err := cnitool("status"); err != nil {
				t.FailNow()
			}
			// No attachment is valid to a bare cnitool gc: it DELs ours and
			// host-local lets go of every lease.
			if _, err := cnitool("gc"); err != nil {
				t.FailNow()
			}
			if got := networkLeases(t, dataDir, netName); len(got) != 0 {
				t.Errorf("leases after gc: %v", got)
			}
			if _, err := cnitool("del"); err != nil {
				t.FailNow()
			}
			if got := linkNames(t, pod); !slices.Equal(got, []string{"lo"}) {
				t.Errorf("pod links after del: %v", got)
			}
		})
	}
}

// TestBinaryErrors runs the binary the way a runtime does and checks that
// errors come out as CNI error results naming the field, and that without
// CNI_COMMAND it prints what it is.
func TestBinaryErrors(t *testing.T) {
	requireRoot(t)
	bin := filepath.Join(buildPlugin(t), "podvirt-l2")
	pod := newNS(t)

	run := func(env []string, stdin string) (stdout, stderr string, err error) {
		var o, e bytes.Buffer
		cmd := exec.Command(bin, "--version")
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
		cmd.Stdin = strings.NewReader(stdin)
		cmd.Stdout, cmd.Stderr = &o, &e
		err = cmd.Run()
		return o.String(), e.String(), err
	}

	_, about, err := run(nil, "")
	if err != nil || !strings.Contains(about, "CNI plugin podvirt-l2") || !strings.Contains(about, "0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0") {
		t.Errorf("without CNI_COMMAND: err %v, stderr %q", err, about)
	}

	addEnv := []string{"CNI_COMMAND=ADD", "CNI_CONTAINERID=c1", "CNI_NETNS=" + pod.Path(), "CNI_IFNAME=net1", "CNI_PATH=/nonexistent"}
	for _, c := range []struct {
		name, stdin string
		code        uint
		msg         string
	}{
		{"bad vlan", `{"cniVersion":"1.1.0","name":"n","type":"podvirt-l2","mode":"bridge","vlan":5000}`, types.ErrInvalidNetworkConfig, "vlan: "},
		{"bad mode", `{"cniVersion":"1.0.0","name":"n","type":"podvirt-l2","mode":"ipvlan"}`, types.ErrInvalidNetworkConfig, "mode: "},
		{"missing master", `{"cniVersion":"0.4.0","name":"n","type":"podvirt-l2","mode":"macvlan","master":"nosuchlink0"}`, types.ErrInvalidNetworkConfig, "master: "},
		{"old spec", `{"cniVersion":"0.2.0","name":"n","type":"podvirt-l2","mode":"bridge"}`, types.ErrIncompatibleCNIVersion, "incompatible CNI versions"},
	} {
		t.Run(c.name, func(t *testing.T) {
			out, _, err := run(addEnv, c.stdin)
			if err == nil {
				t.Fatalf("ADD succeeded: %s", out)
			}
			var e types.Error
			if jerr := json.Unmarshal([]byte(out), &e); jerr != nil {
				t.Fatalf("stdout %q is not a CNI error: %v", out, jerr)
			}
			if e.Code != c.code || !strings.HasPrefix(e.Msg, c.msg) {
				t.Errorf("got code %d %q, want code %d and a message starting with %q", e.Code, e.Msg, c.code, c.msg)
			}
		})
	}
}
