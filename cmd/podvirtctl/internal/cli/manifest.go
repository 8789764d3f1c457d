package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"sigs.k8s.io/yaml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// printVMs writes VMs as YAML documents, without what only the API server
// fills in (status, creationTimestamp: null), so that the output reads as
// a manifest someone wrote.
func printVMs(w io.Writer, vms ...*v1.VirtualMachine) error {
	for i, vm := range vms {
		b, err := json.Marshal(vm)
		if err != nil {
			return err
		}
		var m map[string]any
		if err := json.Unmarshal(b, &m); err != nil {
			return err
		}
		delete(m, "status")
		dropEmptyMeta(m)
		if spec, ok := m["spec"].(map[string]any); ok {
			if tmpl, ok := spec["template"].(map[string]any); ok {
				dropEmptyMeta(tmpl)
			}
		}
		out, err := yaml.Marshal(m)
		if err != nil {
			return err
		}
		if i > 0 {
			fmt.Fprintln(w, "---")
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
	}
	return nil
}

// dropEmptyMeta removes metadata.creationTimestamp: null, and metadata
// when nothing else is left in it.
func dropEmptyMeta(obj map[string]any) {
	meta, ok := obj["metadata"].(map[string]any)
	if !ok {
		return
	}
	if meta["creationTimestamp"] == nil {
		delete(meta, "creationTimestamp")
	}
	if len(meta) == 0 {
		delete(obj, "metadata")
	}
}
