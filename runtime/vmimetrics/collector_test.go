package vmimetrics

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdclient"
	"github.com/podvirt/podvirt/runtime/cmdserver"
)

// statsDomain is a running cmdserver.Domain with fixed stats.
type statsDomain struct {
	stats *launchercmd.DomainStatsResponse
}

func (d statsDomain) State() (v1.DomainState, string)                 { return v1.DomainRunning, "test" }
func (d statsDomain) WaitState(context.Context, v1.DomainState) error { return nil }
func (d statsDomain) Changed() <-chan struct{}                        { return nil }
func (d statsDomain) Pause() error                                    { return errors.New("not in this test") }
func (d statsDomain) Resume() error                                   { return errors.New("not in this test") }
func (d statsDomain) Shutdown(context.Context, time.Duration) (bool, error) {
	return false, errors.New("not in this test")
}
func (d statsDomain) Console() (io.ReadWriteCloser, error) {
	return nil, errors.New("not in this test")
}
func (d statsDomain) Interfaces() []cmdserver.Interface                { return nil }
func (d statsDomain) Health() cmdserver.Health                         { return cmdserver.Health{} }
func (d statsDomain) Stats() (*launchercmd.DomainStatsResponse, error) { return d.stats, nil }
func (d statsDomain) Done() <-chan struct{}                            { return nil }
func (d statsDomain) Migrate(context.Context, *launchercmd.MigrateRequest, func(*launchercmd.MigrationProgress)) (*launchercmd.MigrationProgress, error) {
	return nil, errors.New("not in this test")
}

func (d statsDomain) SnapshotDisks(context.Context, *launchercmd.SnapshotDisksRequest) (*launchercmd.SnapshotDisksResponse, error) {
	return nil, errors.New("not in this test")
}

// serve runs a real command server for d on a socket and returns its client.
func serve(t *testing.T, d cmdserver.Domain) launchercmd.CommandClient {
	t.Helper()
	path := launchercmd.SocketPath(t.TempDir(), "uid-1")
	s := cmdserver.New(d, cmdserver.Config{VMI: "ns1/vm1", UID: "uid-1", DomainName: "ns1_vm1"})
	if err := s.ListenAndServe(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(time.Second) })
	c, cc, err := cmdclient.Dial(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cc.Close() })
	return c
}

// hungClient never answers until the caller gives up.
type hungClient struct{}

func (hungClient) DomainStats(ctx context.Context, _ *launchercmd.DomainStatsRequest, _ ...grpc.CallOption) (*launchercmd.DomainStatsResponse, error) {
	<-ctx.Done()
	return nil, ctx.Err()
}

type launcherList []Launcher

func (l launcherList) Launchers() []Launcher { return l }

// TestCollect scrapes a real command server over its socket next to a
// hung launcher: the answering VMI's series carry its labels and values
// in seconds and bytes, unreported values make no series, and the hung
// one costs the scrape no more than the timeout.
func TestCollect(t *testing.T) {
	c := serve(t, statsDomain{stats: &launchercmd.DomainStatsResponse{
		CpuTimeNs: proto.Uint64(2_500_000_000),
		Vcpus:     []*launchercmd.VCPUStats{{Id: 0, TimeNs: proto.Uint64(1_000_000_000)}, {Id: 1, TimeNs: proto.Uint64(500_000_000)}},
		Memory:    &launchercmd.MemoryStats{ActualBalloonBytes: proto.Uint64(256 << 20), RssBytes: proto.Uint64(100 << 20)},
		Disks: []*launchercmd.DiskStats{{Name: "root", Device: "vda",
			ReadBytes: proto.Uint64(4096), WriteBytes: proto.Uint64(512), ReadOps: proto.Uint64(3), WriteOps: proto.Uint64(1),
			ReadTimeNs: proto.Uint64(2_000_000), WriteTimeNs: proto.Uint64(1_000_000)}},
		Interfaces: []*launchercmd.InterfaceStats{{Name: "l2", Device: "tap0",
			RxBytes: proto.Uint64(754), TxBytes: proto.Uint64(1207), RxPackets: proto.Uint64(3), TxPackets: proto.Uint64(8),
			RxErrors: proto.Uint64(0), TxErrors: proto.Uint64(0), RxDropped: proto.Uint64(1), TxDropped: proto.Uint64(0)}},
	}})
	col := New(launcherList{
		{Namespace: "ns1", Name: "vm1", Client: c},
		{Namespace: "ns1", Name: "hung", Client: hungClient{}},
	}, Options{Node: "node-a", Timeout: 300 * time.Millisecond})

	want := `
# HELP podvirt_vmi_cpu_usage_seconds_total CPU time of the VMI's QEMU process: vCPUs and emulator threads.
# TYPE podvirt_vmi_cpu_usage_seconds_total counter
podvirt_vmi_cpu_usage_seconds_total{name="vm1",namespace="ns1",node="node-a"} 2.5
# HELP podvirt_vmi_vcpu_seconds_total Time each vCPU ran.
# TYPE podvirt_vmi_vcpu_seconds_total counter
podvirt_vmi_vcpu_seconds_total{id="0",name="vm1",namespace="ns1",node="node-a"} 1
podvirt_vmi_vcpu_seconds_total{id="1",name="vm1",namespace="ns1",node="node-a"} 0.5
# HELP podvirt_vmi_memory_actual_balloon_bytes Memory the guest has now (the balloon's current size).
# TYPE podvirt_vmi_memory_actual_balloon_bytes gauge
podvirt_vmi_memory_actual_balloon_bytes{name="vm1",namespace="ns1",node="node-a"} 2.68435456e+08
# HELP podvirt_vmi_memory_resident_bytes Resident set size of the VMI's QEMU process.
# TYPE podvirt_vmi_memory_resident_bytes gauge
podvirt_vmi_memory_resident_bytes{name="vm1",namespace="ns1",node="node-a"} 1.048576e+08
# HELP podvirt_vmi_storage_read_traffic_bytes_total Bytes read from the disk.
# TYPE podvirt_vmi_storage_read_traffic_bytes_total counter
podvirt_vmi_storage_read_traffic_bytes_total{drive="root",name="vm1",namespace="ns1",node="node-a"} 4096
# HELP podvirt_vmi_storage_iops_write_total Write requests to the disk.
# TYPE podvirt_vmi_storage_iops_write_total counter
podvirt_vmi_storage_iops_write_total{drive="root",name="vm1",namespace="ns1",node="node-a"} 1
# HELP podvirt_vmi_storage_read_times_seconds_total Time spent on reads from the disk.
# TYPE podvirt_vmi_storage_read_times_seconds_total counter
podvirt_vmi_storage_read_times_seconds_total{drive="root",name="vm1",namespace="ns1",node="node-a"} 0.002
# HELP podvirt_vmi_network_transmit_bytes_total Bytes the guest sent on the interface.
# TYPE podvirt_vmi_network_transmit_bytes_total counter
podvirt_vmi_network_transmit_bytes_total{interface="l2",name="vm1",namespace="ns1",node="node-a"} 1207
# HELP podvirt_vmi_network_receive_packets_dropped_total Packets dropped on receive on the interface.
# TYPE podvirt_vmi_network_receive_packets_dropped_total counter
podvirt_vmi_network_receive_packets_dropped_total{interface="l2",name="vm1",namespace="ns1",node="node-a"} 1
# HELP podvirt_handler_domain_stats_failures_total DomainStats calls to launchers that failed or timed out during scrapes.
# TYPE podvirt_handler_domain_stats_failures_total counter
podvirt_handler_domain_stats_failures_total 1
`
	start := time.Now()
	if err := testutil.CollectAndCompare(col, strings.NewReader(want),
		"podvirt_vmi_cpu_usage_seconds_total", "podvirt_vmi_vcpu_seconds_total",
		"podvirt_vmi_memory_actual_balloon_bytes", "podvirt_vmi_memory_resident_bytes",
		"podvirt_vmi_storage_read_traffic_bytes_total", "podvirt_vmi_storage_iops_write_total", "podvirt_vmi_storage_read_times_seconds_total",
		"podvirt_vmi_network_transmit_bytes_total", "podvirt_vmi_network_receive_packets_dropped_total",
		"podvirt_handler_domain_stats_failures_total"); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("scrape took %s with a 300ms launcher timeout", d)
	}
	// Absent values make no series: no balloon driver, no cpu user time.
	for _, name := range []string{"podvirt_vmi_memory_available_bytes", "podvirt_vmi_cpu_user_usage_seconds_total"} {
		if n := testutil.CollectAndCount(col, name); n != 0 {
			t.Errorf("%d %s series, want none", n, name)
		}
	}
	// The whole set passes the linter's naming rules.
	if problems, err := testutil.CollectAndLint(col); err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %v", problems, err)
	}
}
