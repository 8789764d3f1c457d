package main

import (
	"flag"
	"io"
	"testing"

	"github.com/podvirt/podvirt/controller"
)

// TestEmulationFlag: --use-emulation takes auto, true or false, and alone
// means true as the bool flag it was.
func TestEmulationFlag(t *testing.T) {
	for _, tc := range []struct {
		args       []string
		auto, emul bool
		bad        bool
	}{
		{args: nil, auto: true},
		{args: []string{"--use-emulation=auto"}, auto: true},
		{args: []string{"--use-emulation=true"}, emul: true},
		{args: []string{"--use-emulation"}, emul: true},
		{args: []string{"--use-emulation=false"}},
		{args: []string{"--use-emulation=maybe"}, bad: true},
	} {
		cfg := controller.DefaultConfig()
		f := emulationFlag{cfg: &cfg}
		if err := f.Set("auto"); err != nil {
			t.Fatal(err)
		}
		fs := flag.NewFlagSet("test", flag.ContinueOnError)
		fs.SetOutput(io.Discard)
		fs.Var(&f, "use-emulation", "")
		err := fs.Parse(tc.args)
		if (err != nil) != tc.bad {
			t.Errorf("%v: error %v, want error %v", tc.args, err, tc.bad)
			continue
		}
		if !tc.bad && (cfg.EmulationAuto != tc.auto || cfg.UseEmulation != tc.emul) {
			t.Errorf("%v: auto %v, emulation %v; want %v, %v", tc.args, cfg.EmulationAuto, cfg.UseEmulation, tc.auto, tc.emul)
		}
	}
}
