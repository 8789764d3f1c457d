package results

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/podvirt/podvirt/contracts/cniresults"
)

func TestSaveLoadRemove(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "cni-results") // made on first Save
	const uid = "6f1c2a1e-0000-4000-8000-000000000001"
	r1 := json.RawMessage(`{"cniVersion":"1.1.0","ips":[{"address":"10.1.2.3/24"}]}`)
	r2 := json.RawMessage(`{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.9.0.5/16"}]}`)

	got, err := cniresults.Load(dir, uid)
	if err != nil || len(got) != 0 {
		t.Fatalf("Load before any Save: %v, %v; want empty", got, err)
	}
	for _, rec := range []cniresults.Record{
		{PodUID: uid, IfName: "net1", ContainerID: "c1", Network: "l2", Result: r1},
		{PodUID: uid, IfName: "net2", ContainerID: "c1", Network: "l2b", Result: r2},
	} {
		if err := Save(dir, rec); err != nil {
			t.Fatal(err)
		}
	}
	got, err = cniresults.Load(dir, uid)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || string(got["net1"]) != string(r1) || string(got["net2"]) != string(r2) {
		t.Fatalf("Load = %s", got)
	}

	// A second Save replaces; nothing temporary is left behind.
	if err := Save(dir, cniresults.Record{PodUID: uid, IfName: "net1", Result: r2}); err != nil {
		t.Fatal(err)
	}
	if got, _ := cniresults.Load(dir, uid); string(got["net1"]) != string(r2) {
		t.Errorf("after a second Save, net1 = %s", got["net1"])
	}
	entries, _ := os.ReadDir(filepath.Join(dir, uid))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"net1.json", "net2.json"}) {
		t.Errorf("pod dir holds %v", names)
	}

	recs, err := cniresults.List(dir)
	if err != nil || len(recs) != 2 {
		t.Fatalf("List = %v, %v", recs, err)
	}

	if err := Remove(dir, uid, "net1"); err != nil {
		t.Fatal(err)
	}
	if err := Remove(dir, uid, "net1"); err != nil {
		t.Errorf("second Remove: %v", err)
	}
	if got, _ := cniresults.Load(dir, uid); len(got) != 1 || got["net2"] == nil {
		t.Errorf("after Remove net1: %s", got)
	}
	if err := Remove(dir, uid, "net2"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, uid)); !os.IsNotExist(err) {
		t.Errorf("pod dir left after its last record went: %v", err)
	}
}

func TestInvalidKeys(t *testing.T) {
	dir := t.TempDir()
	ok := json.RawMessage(`{}`)
	for _, rec := range []cniresults.Record{
		{PodUID: "", IfName: "net1", Result: ok},
		{PodUID: "..", IfName: "net1", Result: ok},
		{PodUID: "a/b", IfName: "net1", Result: ok},
		{PodUID: "uid", IfName: "../x", Result: ok},
		{PodUID: "uid", IfName: ".hidden", Result: ok},
		{PodUID: "uid", IfName: "net1", Result: json.RawMessage(`{not json`)},
	} {
		if err := Save(dir, rec); err == nil {
			t.Errorf("Save(%+v) succeeded", rec)
		}
	}
	if err := Save("relative/dir", cniresults.Record{PodUID: "uid", IfName: "net1", Result: ok}); err == nil || !strings.Contains(err.Error(), "absolute") {
		t.Errorf("relative dir: %v", err)
	}
	if _, err := cniresults.Load(dir, "../etc"); err == nil {
		t.Error("Load with a path in the UID succeeded")
	}
	if entries, _ := os.ReadDir(dir); len(entries) != 0 {
		t.Errorf("invalid saves left %d entries", len(entries))
	}
}
