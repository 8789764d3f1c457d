// Package results is podvirt-l2's side of the CNI results record
// (contracts/cniresults): it saves an ADD result for the node daemon and
// removes it on DEL and GC.
package results

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"syscall"

	"github.com/podvirt/podvirt/contracts/cniresults"
	"github.com/podvirt/podvirt/internal/atomicfile"
)

// Save writes rec under dir, replacing an earlier one for the same pod
// interface.
func Save(dir string, rec cniresults.Record) error {
	path, err := cniresults.Path(dir, rec.PodUID, rec.IfName)
	if err != nil {
		return err
	}
	if !json.Valid(rec.Result) {
		return fmt.Errorf("saving CNI result of pod %s interface %s: the result is not JSON", rec.PodUID, rec.IfName)
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("saving CNI result: %w", err)
	}
	if err := atomicfile.Write(path, b, 0o600); err != nil {
		return fmt.Errorf("saving CNI result: %w", err)
	}
	return nil
}

// Remove deletes the record of pod podUID's interface ifname, and the
// pod's directory once it is empty. A missing record is not an error.
func Remove(dir, podUID, ifname string) error {
	path, err := cniresults.Path(dir, podUID, ifname)
	if err != nil {
		return err
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
		return fmt.Errorf("removing CNI result %s: %w", path, err)
	}
	// Fails while the pod has other records: that is fine.
	_ = os.Remove(filepath.Dir(path))
	return nil
}
