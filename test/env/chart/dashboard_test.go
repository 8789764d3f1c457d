package chart

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestGrafanaDashboard renders the dashboard's ConfigMap and reads it as
// Grafana would: the sidecar's label, and a dashboard whose every panel
// queries podvirt's series through the data source variable. e2e
// TestMetrics checks that the cluster serves every series it names.
func TestGrafanaDashboard(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	h := newHelm(t, "")
	var data string
	for _, obj := range render(ctx, t, h, "podvirt", []string{"metrics.grafanaDashboard.enabled=true", "metrics.grafanaDashboard.namespace=monitoring"}) {
		if obj.GetKind() != "ConfigMap" {
			continue
		}
		if obj.GetNamespace() != "monitoring" || obj.GetLabels()["grafana_dashboard"] != "1" {
			t.Errorf("ConfigMap %s/%s has labels %v; want namespace monitoring and grafana_dashboard=1", obj.GetNamespace(), obj.GetName(), obj.GetLabels())
		}
		d, _ := obj.Object["data"].(map[string]any)
		data, _ = d["podvirt.json"].(string)
	}
	if data == "" {
		t.Fatal("no ConfigMap with podvirt.json rendered")
	}
	exprs, err := DashboardQueries([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	if len(exprs) < 20 {
		t.Errorf("%d queries, want the cluster, cache and per-VM panels", len(exprs))
	}
	for panel, e := range exprs {
		if !strings.Contains(e, "podvirt_") {
			t.Errorf("panel %q: query %q reads no podvirt series", panel, e)
		}
	}
	names := DashboardMetrics(exprs)
	for _, want := range []string{
		"podvirt_vmi_phase_count", "podvirt_vmi_phase_transition_time_from_creation_seconds_bucket",
		"podvirt_csi_import_bytes_total", "podvirt_csi_cache_lookups_total",
		"podvirt_vmi_cpu_usage_seconds_total", "podvirt_vmi_memory_available_bytes",
		"podvirt_vmi_storage_read_traffic_bytes_total", "podvirt_vmi_network_receive_bytes_total",
	} {
		if !names[want] {
			t.Errorf("no panel reads %s", want)
		}
	}
	var dash struct {
		Templating struct {
			List []struct{ Name, Type string } `json:"list"`
		} `json:"templating"`
	}
	if err := json.Unmarshal([]byte(data), &dash); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["namespace"] != "query" || vars["vm"] != "query" {
		t.Errorf("variables %v; want datasource, namespace and vm", vars)
	}
}
