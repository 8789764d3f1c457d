// Package cniresults is the record podvirt-l2 keeps of each ADD result on
// the node, so the node daemon can hand the launcher each tap NIC's full
// CNI result (IP with prefix, routes, DNS, guest MAC): the Multus
// network-status annotation lacks prefixes and routes. The plugin writes
// records (cni/results); the node daemon reads them (Load).
//
// Layout: <dir>/<pod UID>/<ifname>.json, one file per pod interface,
// replaced atomically; files whose name starts with "." are temporary.
// The file holds a Record; Load returns the results alone.
package cniresults

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	current "github.com/containernetworking/cni/pkg/types/100"
	"github.com/containernetworking/cni/pkg/types/create"
)

// DefaultDir is where podvirt-l2 keeps results unless the network
// configuration's "resultsDir" says otherwise.
const DefaultDir = "/var/run/podvirt/cni-results"

const suffix = ".json"

// Record is one saved ADD result and what GC needs to match it with an
// attachment.
type Record struct {
	// PodUID and IfName key the record (K8S_POD_UID, CNI_IFNAME).
	PodUID string `json:"podUID"`
	IfName string `json:"ifName"`
	// ContainerID and Network (the configuration's name) identify the
	// attachment for CNI GC.
	ContainerID string `json:"containerID"`
	Network     string `json:"network"`
	// Namespace is the pod's (K8S_POD_NAMESPACE): a handoff is only
	// between pods of one namespace.
	Namespace string `json:"namespace,omitempty"`
	// Result is the plugin's ADD result as it printed it.
	Result json.RawMessage `json:"result"`

	// A VM migrating onto the node it runs on has two launcher pods there
	// with one guest MAC and one address, which the node's IPAM lease and
	// a macvlan MAC can each belong to only once. The target's attachment
	// is made from the source's (HandoffFrom), without a lease of its own
	// and, in macvlan mode, with a stand-in MAC on its pod link; at the
	// switch the node daemon hands both over (cni/handoff).

	// HandoffFrom is the UID of the pod whose attachment of the same
	// interface this one takes over.
	HandoffFrom string `json:"handoffFrom,omitempty"`
	// LeaseID is the container ID the IPAM plugin knows this
	// attachment's lease by, when it is not ContainerID: set at the
	// handoff, from the source's.
	LeaseID string `json:"leaseID,omitempty"`
	// LeaseMoved: the lease went with a handoff to another pod, so DEL
	// must not release it.
	LeaseMoved bool `json:"leaseMoved,omitempty"`
}

// HoldsLease reports whether DEL of this attachment releases an IPAM lease.
func (r Record) HoldsLease() bool {
	return !r.LeaseMoved && (r.HandoffFrom == "" || r.LeaseID != "")
}

// Leaseholder is the container ID the attachment's lease is held by.
func (r Record) Leaseholder() string {
	if r.LeaseID != "" {
		return r.LeaseID
	}
	return r.ContainerID
}

// Read returns the record of pod podUID's interface ifname; a missing one
// is an error satisfying errors.Is(err, os.ErrNotExist).
func Read(dir, podUID, ifname string) (Record, error) {
	path, err := Path(dir, podUID, ifname)
	if err != nil {
		return Record{}, err
	}
	rec, err := readRecord(path)
	if absent(err) {
		// Under a path that is not a directory: as missing.
		return Record{}, &os.PathError{Op: "read", Path: path, Err: os.ErrNotExist}
	}
	return rec, err
}

// Records returns every record of pod podUID, by interface name.
func Records(dir, podUID string) (map[string]Record, error) {
	if err := validName("pod UID", podUID); err != nil {
		return nil, err
	}
	podDir := filepath.Join(dir, podUID)
	entries, err := os.ReadDir(podDir)
	if absent(err) {
		return map[string]Record{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading CNI results of pod %s: %w", podUID, err)
	}
	out := map[string]Record{}
	for _, e := range entries {
		if !isRecord(e.Name()) {
			continue
		}
		rec, err := readRecord(filepath.Join(podDir, e.Name()))
		if errors.Is(err, os.ErrNotExist) {
			continue // removed by a DEL meanwhile
		}
		if err != nil {
			return nil, err
		}
		out[rec.IfName] = rec
	}
	return out, nil
}

// Load returns the saved results of the pod with UID podUID by interface
// name (the result JSON as the plugin printed it). A pod with none gives
// an empty map.
func Load(dir, podUID string) (map[string][]byte, error) {
	recs, err := Records(dir, podUID)
	if err != nil {
		return nil, err
	}
	out := make(map[string][]byte, len(recs))
	for ifname, rec := range recs {
		out[ifname] = rec.Result
	}
	return out, nil
}

// List returns every record under dir, for garbage collection.
func List(dir string) ([]Record, error) {
	pods, err := os.ReadDir(dir)
	if absent(err) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing CNI results in %s: %w", dir, err)
	}
	var recs []Record
	for _, p := range pods {
		if !p.IsDir() {
			continue
		}
		entries, err := os.ReadDir(filepath.Join(dir, p.Name()))
		if err != nil {
			continue // removed meanwhile
		}
		for _, e := range entries {
			if !isRecord(e.Name()) {
				continue
			}
			rec, err := readRecord(filepath.Join(dir, p.Name(), e.Name()))
			if errors.Is(err, os.ErrNotExist) {
				continue
			}
			if err != nil {
				return nil, err
			}
			recs = append(recs, rec)
		}
	}
	return recs, nil
}

// absent reports whether err says a path cannot exist: missing, or under
// something that is not a directory.
func absent(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOTDIR)
}

func isRecord(name string) bool {
	return strings.HasSuffix(name, suffix) && !strings.HasPrefix(name, ".")
}

func readRecord(path string) (Record, error) {
	var rec Record
	b, err := os.ReadFile(path)
	if err != nil {
		return rec, err
	}
	if err := json.Unmarshal(b, &rec); err != nil {
		return rec, fmt.Errorf("decoding CNI result %s: %w", path, err)
	}
	return rec, nil
}

func Path(dir, podUID, ifname string) (string, error) {
	if dir == "" || !filepath.IsAbs(dir) {
		return "", fmt.Errorf("CNI results dir %q must be an absolute path", dir)
	}
	if err := validName("pod UID", podUID); err != nil {
		return "", err
	}
	if err := validName("interface name", ifname); err != nil {
		return "", err
	}
	return filepath.Join(dir, podUID, ifname+suffix), nil
}

// validName keeps a key one plain path element.
func validName(what, s string) error {
	if s == "" || s == "." || s == ".." || strings.ContainsAny(s, "/\x00") || strings.HasPrefix(s, ".") {
		return fmt.Errorf("CNI results: invalid %s %q", what, s)
	}
	return nil
}

// Decode reads a saved result, of whichever CNI version the plugin printed
// it in, as the current version's.
func Decode(result []byte) (*current.Result, error) {
	r, err := create.CreateFromBytes(result)
	if err != nil {
		return nil, fmt.Errorf("decoding CNI result: %w", err)
	}
	res, err := current.NewResultFromResult(r)
	if err != nil {
		return nil, fmt.Errorf("converting CNI result: %w", err)
	}
	return res, nil
}
