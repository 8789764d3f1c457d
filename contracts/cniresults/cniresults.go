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
	// Result is the plugin's ADD result as it printed it.
	Result json.RawMessage `json:"result"`
}

// Load returns the saved results of the pod with UID podUID by interface
// name (the result JSON as the plugin printed it). A pod with none gives
// an empty map.
func Load(dir, podUID string) (map[string][]byte, error) {
	if err := validName("pod UID", podUID); err != nil {
		return nil, err
	}
	podDir := filepath.Join(dir, podUID)
	entries, err := os.ReadDir(podDir)
	if absent(err) {
		return map[string][]byte{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("loading CNI results of pod %s: %w", podUID, err)
	}
	out := map[string][]byte{}
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
		out[rec.IfName] = rec.Result
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
