package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestPersistsAcrossOpen(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	s, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutVolume(Volume{ID: "b", Name: "pvc-b", Size: 2, Format: "raw", Block: true}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutVolume(Volume{ID: "a", Name: "pvc-a", Size: 1, Format: "qcow2"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.UpdateVolume("a", func(v *Volume) { v.TargetPaths = append(v.TargetPaths, "/t") }); err != nil {
		t.Fatal(err)
	}
	if err := s.PutSnapshot(Snapshot{ID: "s", Name: "snap", SourceVolume: "a", Size: 1}); err != nil {
		t.Fatal(err)
	}
	if err := s.PutFailure(Failure{Name: "pvc-c", Key: "k", Code: 9, Message: "gone", At: time.Now()}); err != nil {
		t.Fatal(err)
	}

	r, err := Open(path)
	if err != nil {
		t.Fatal(err)
	}
	vols := r.Volumes()
	if len(vols) != 2 || vols[0].ID != "a" || vols[1].ID != "b" || !vols[1].Block || len(vols[0].TargetPaths) != 1 {
		t.Errorf("volumes after reopen: %+v", vols)
	}
	if v, err := r.VolumeByName("pvc-b"); err != nil || v.ID != "b" {
		t.Errorf("VolumeByName: %+v, %v", v, err)
	}
	if snap, err := r.SnapshotByName("snap"); err != nil || snap.SourceVolume != "a" {
		t.Errorf("SnapshotByName: %+v, %v", snap, err)
	}
	if f, ok := r.Failure("pvc-c"); !ok || f.Code != 9 {
		t.Errorf("Failure: %+v, %v", f, ok)
	}
	// Callers get copies: changing one does not change the store.
	vols[0].TargetPaths[0] = "/changed"
	if v, _ := r.Volume("a"); v.TargetPaths[0] != "/t" {
		t.Error("Volumes returned the store's own slice")
	}
	if err := r.DeleteVolume("a"); err != nil {
		t.Fatal(err)
	}
	if err := r.DeleteVolume("a"); err != nil { // idempotent
		t.Fatal(err)
	}
	if _, err := r.Volume("a"); !errors.Is(err, ErrNotFound) {
		t.Errorf("deleted volume: %v", err)
	}
	// Only the state file is left: the temporary files were renamed.
	entries, _ := os.ReadDir(filepath.Dir(path))
	if len(entries) != 1 {
		t.Errorf("files next to the state: %v", entries)
	}
}

func TestOldFailuresAreForgotten(t *testing.T) {
	s, err := Open(filepath.Join(t.TempDir(), FileName))
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutFailure(Failure{Name: "old", At: time.Now().Add(-FailureTTL - time.Minute)}); err != nil {
		t.Fatal(err)
	}
	if _, ok := s.Failure("old"); ok {
		t.Error("a failure older than FailureTTL is still answered")
	}
	if err := s.PutFailure(Failure{Name: "new", At: time.Now()}); err != nil {
		t.Fatal(err)
	}
	if len(s.data.Failures) != 1 {
		t.Errorf("old failures are not pruned: %+v", s.data.Failures)
	}
}

func TestCorruptStateNamesTheFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), FileName)
	if err := os.WriteFile(path, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("Open of a corrupt state: %v, want an error naming %s", err, path)
	}
}
