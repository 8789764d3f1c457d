package cni

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/containernetworking/cni/pkg/invoke"
	"github.com/containernetworking/plugins/pkg/ns"
)

// BenchmarkAddDel measures one ADD plus one DEL of an attachment, executed
// as a runtime does (plugin binary, host-local IPAM), for podvirt-l2 and for
// the upstream macvlan and bridge plugins on equivalent configs, and prints
// the podvirt/upstream ratio per mode (goal: ≤ 1.0). The guest-tap variants
// have no upstream peer and are measured for reference.
//
//	go test -run '^$' -bench . ./cni/
func BenchmarkAddDel(b *testing.B) {
	requireRoot(b)
	nsPerOp := map[string]float64{}
	for _, c := range []struct {
		impl, mode, guest string
	}{
		{"podvirt", ModeMacvlan, GuestNone},
		{"upstream", ModeMacvlan, GuestNone},
		{"podvirt", ModeBridge, GuestNone},
		{"upstream", ModeBridge, GuestNone},
		{"podvirt", ModeMacvlan, GuestTap},
		{"podvirt", ModeBridge, GuestTap},
	} {
		name := c.impl + "/" + c.mode
		if c.guest == GuestTap {
			name += "-tap"
		}
		b.Run(name, func(b *testing.B) {
			addDel := benchAttachment(b, c.impl, c.mode, c.guest)
			for b.Loop() {
				if err := addDel(); err != nil {
					b.Fatal(err)
				}
			}
			nsPerOp[name] = float64(b.Elapsed().Nanoseconds()) / float64(b.N)
		})
	}
	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		p, u := nsPerOp["podvirt/"+mode], nsPerOp["upstream/"+mode]
		if p > 0 && u > 0 {
			fmt.Printf("ADD+DEL %-7s podvirt %7.2f ms  upstream %7.2f ms  ratio podvirt/upstream %.2f\n",
				mode, p/float64(time.Millisecond), u/float64(time.Millisecond), p/u)
		}
	}
}

// BenchmarkAddDelPaired alternates podvirt-l2 and the upstream plugin in
// every iteration, so that both see the same machine load, and reports
// each one's ms/op and their ratio.
func BenchmarkAddDelPaired(b *testing.B) {
	requireRoot(b)
	for _, mode := range []string{ModeMacvlan, ModeBridge} {
		b.Run(mode, func(b *testing.B) {
			ours := benchAttachment(b, "podvirt", mode, GuestNone)
			theirs := benchAttachment(b, "upstream", mode, GuestNone)
			var tOurs, tTheirs time.Duration
			for b.Loop() {
				t0 := time.Now()
				if err := ours(); err != nil {
					b.Fatal(err)
				}
				t1 := time.Now()
				if err := theirs(); err != nil {
					b.Fatal(err)
				}
				tOurs += t1.Sub(t0)
				tTheirs += time.Since(t1)
			}
			ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) / float64(b.N) }
			b.ReportMetric(0, "ns/op")
			b.ReportMetric(ms(tOurs), "podvirt-ms/op")
			b.ReportMetric(ms(tTheirs), "upstream-ms/op")
			b.ReportMetric(float64(tOurs)/float64(tTheirs), "ratio")
		})
	}
}

// benchAttachment sets up a node and a pod for impl ("podvirt" or
// "upstream") in mode and returns a function doing one ADD and one DEL
// through the plugin binary.
func benchAttachment(b *testing.B, impl, mode, guest string) func() error {
	upstream := upstreamPluginDir(b)
	ours := buildPlugin(b)
	cniPath := joinPath(ours, upstream)
	n := newNode(b)
	pod := newNS(b)
	stdin, plugin := benchConf(b, impl, mode, guest, b.TempDir())
	pluginPath := filepath.Join(ours, "podvirt-l2")
	if impl == "upstream" {
		pluginPath = filepath.Join(upstream, plugin)
	}
	args := func(cmd string) *invoke.Args {
		return &invoke.Args{Command: cmd, ContainerID: "bench", NetNS: pod.Path(), IfName: "net1", Path: cniPath}
	}
	return func() error {
		return n.Do(func(ns.NetNS) error {
			ctx := context.Background()
			if _, err := invoke.ExecPluginWithResult(ctx, pluginPath, stdin, args("ADD"), nil); err != nil {
				return fmt.Errorf("%s ADD: %w", impl, err)
			}
			if err := invoke.ExecPluginWithoutResult(ctx, pluginPath, stdin, args("DEL"), nil); err != nil {
				return fmt.Errorf("%s DEL: %w", impl, err)
			}
			return nil
		})
	}
}

// benchConf returns equivalent configs for podvirt-l2 and the upstream
// plugin of mode (L2 on testMaster or testBridge, host-local IPAM), and the
// upstream plugin's name.
func benchConf(b *testing.B, impl, mode, guest, dataDir string) ([]byte, string) {
	m := map[string]any{
		"cniVersion": "1.1.0",
		"name":       testNet,
		"ipam":       hostLocal(dataDir, "10.10.0.0/16"),
	}
	switch impl {
	case "podvirt":
		m["type"] = "podvirt-l2"
		for k, v := range modeFields(mode, 0) {
			m[k] = v
		}
		m["guest"] = guest
	case "upstream":
		m["type"] = mode
		if mode == ModeMacvlan {
			m["master"] = testMaster
			m["mode"] = "bridge"
		} else {
			m["bridge"] = testBridge
		}
	}
	out, err := json.Marshal(m)
	if err != nil {
		b.Fatal(err)
	}
	return out, mode
}
