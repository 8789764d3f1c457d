package cniresults

import (
	"os"
	"path/filepath"
	"testing"
)

func TestPath(t *testing.T) {
	if got, err := Path("/run/r", "uid", "net1"); err != nil || got != "/run/r/uid/net1.json" {
		t.Errorf("Path = %q, %v", got, err)
	}
	for _, k := range [][3]string{
		{"relative", "uid", "net1"},
		{"/run/r", "", "net1"},
		{"/run/r", "..", "net1"},
		{"/run/r", "a/b", "net1"},
		{"/run/r", "uid", "../x"},
		{"/run/r", "uid", ".hidden"},
	} {
		if _, err := Path(k[0], k[1], k[2]); err == nil {
			t.Errorf("Path%q succeeded", k)
		}
	}
}

func TestLoadSkipsTemporaryFiles(t *testing.T) {
	dir := t.TempDir()
	if got, err := Load(dir, "uid"); err != nil || len(got) != 0 {
		t.Fatalf("Load of a pod without records: %v, %v", got, err)
	}
	if err := os.MkdirAll(filepath.Join(dir, "uid"), 0o700); err != nil {
		t.Fatal(err)
	}
	rec := `{"podUID":"uid","ifName":"net1","result":{"cniVersion":"1.1.0"}}`
	for _, name := range []string{"net1.json", ".net1.json.tmp-1"} {
		if err := os.WriteFile(filepath.Join(dir, "uid", name), []byte(rec), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Load(dir, "uid")
	if err != nil || len(got) != 1 || string(got["net1"]) != `{"cniVersion":"1.1.0"}` {
		t.Fatalf("Load = %s, %v", got, err)
	}
	recs, err := List(dir)
	if err != nil || len(recs) != 1 || recs[0].IfName != "net1" {
		t.Fatalf("List = %+v, %v", recs, err)
	}
}
