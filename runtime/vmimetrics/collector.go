// Package vmimetrics is the node daemon's per-VMI metrics: a Prometheus
// collector that, on every scrape, asks the launchers of this node's VMIs
// for their domain stats (launchercmd's DomainStats) and exposes them
// under the names KubeVirt users know, with a podvirt_vmi_ prefix.
//
// Each launcher gets a short timeout and only a few are asked at once, so
// one hung launcher costs a scrape at most Timeout, and a node full of
// VMIs does not open hundreds of calls together. A launcher that fails
// is left out of that scrape (and counted); its series come back with
// the next one.
package vmimetrics

import (
	"context"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// StatsClient is the part of a launcher's command client the collector
// uses (launchercmd.CommandClient has it).
type StatsClient interface {
	DomainStats(ctx context.Context, in *launchercmd.DomainStatsRequest, opts ...grpc.CallOption) (*launchercmd.DomainStatsResponse, error)
}

// Launcher is one VMI's launcher to ask.
type Launcher struct {
	Namespace, Name string
	Client          StatsClient
}

// Launchers lists the launchers of the VMIs on this node, at scrape time.
type Launchers interface {
	Launchers() []Launcher
}

// Options tune the collector; zero values take the defaults.
type Options struct {
	// Node is this node's name, the node label of every series.
	Node string
	// Timeout bounds one launcher's answer (default 2s).
	Timeout time.Duration
	// Concurrency is how many launchers are asked at once (default 8).
	Concurrency int
	// Log takes the launchers that failed, at V(1).
	Log logr.Logger
}

// Collector is the prometheus.Collector of the VMIs' domain stats.
type Collector struct {
	launchers Launchers
	opts      Options
	failures  prometheus.Counter
}

// New returns a collector of the launchers src lists.
func New(src Launchers, opts Options) *Collector {
	if opts.Timeout <= 0 {
		opts.Timeout = 2 * time.Second
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 8
	}
	return &Collector{launchers: src, opts: opts, failures: prometheus.NewCounter(prometheus.CounterOpts{
		Name: "podvirt_handler_domain_stats_failures_total",
		Help: "DomainStats calls to launchers that failed or timed out during scrapes.",
	})}
}

var (
	vmiLabels  = []string{"namespace", "name", "node"}
	vcpuLabels = append(vmiLabels[:3:3], "id")
	diskLabels = append(vmiLabels[:3:3], "drive")
	nicLabels  = append(vmiLabels[:3:3], "interface")
)

func desc(name, help string, labels []string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The series, by the part of the stats they come from.
var (
	cpuUsage  = desc("podvirt_vmi_cpu_usage_seconds_total", "CPU time of the VMI's QEMU process: vCPUs and emulator threads.", vmiLabels)
	cpuUser   = desc("podvirt_vmi_cpu_user_usage_seconds_total", "User CPU time of the VMI's QEMU process.", vmiLabels)
	cpuSystem = desc("podvirt_vmi_cpu_system_usage_seconds_total", "System CPU time of the VMI's QEMU process.", vmiLabels)
	vcpuTime  = desc("podvirt_vmi_vcpu_seconds_total", "Time each vCPU ran.", vcpuLabels)

	memBalloon   = desc("podvirt_vmi_memory_actual_balloon_bytes", "Memory the guest has now (the balloon's current size).", vmiLabels)
	memResident  = desc("podvirt_vmi_memory_resident_bytes", "Resident set size of the VMI's QEMU process.", vmiLabels)
	memAvailable = desc("podvirt_vmi_memory_available_bytes", "Memory usable by the guest, as its balloon driver reports it.", vmiLabels)
	memUnused    = desc("podvirt_vmi_memory_unused_bytes", "Memory left unused in the guest, as its balloon driver reports it.", vmiLabels)

	diskReadBytes  = desc("podvirt_vmi_storage_read_traffic_bytes_total", "Bytes read from the disk.", diskLabels)
	diskWriteBytes = desc("podvirt_vmi_storage_write_traffic_bytes_total", "Bytes written to the disk.", diskLabels)
	diskReadOps    = desc("podvirt_vmi_storage_iops_read_total", "Read requests to the disk.", diskLabels)
	diskWriteOps   = desc("podvirt_vmi_storage_iops_write_total", "Write requests to the disk.", diskLabels)
	diskReadTime   = desc("podvirt_vmi_storage_read_times_seconds_total", "Time spent on reads from the disk.", diskLabels)
	diskWriteTime  = desc("podvirt_vmi_storage_write_times_seconds_total", "Time spent on writes to the disk.", diskLabels)
	diskFlushOps   = desc("podvirt_vmi_storage_flush_requests_total", "Flush requests to the disk.", diskLabels)
	diskFlushTime  = desc("podvirt_vmi_storage_flush_times_seconds_total", "Time spent on flushes of the disk.", diskLabels)

	netRxBytes   = desc("podvirt_vmi_network_receive_bytes_total", "Bytes the guest received on the interface.", nicLabels)
	netTxBytes   = desc("podvirt_vmi_network_transmit_bytes_total", "Bytes the guest sent on the interface.", nicLabels)
	netRxPackets = desc("podvirt_vmi_network_receive_packets_total", "Packets the guest received on the interface.", nicLabels)
	netTxPackets = desc("podvirt_vmi_network_transmit_packets_total", "Packets the guest sent on the interface.", nicLabels)
	netRxErrors  = desc("podvirt_vmi_network_receive_errors_total", "Receive errors on the interface.", nicLabels)
	netTxErrors  = desc("podvirt_vmi_network_transmit_errors_total", "Transmit errors on the interface.", nicLabels)
	netRxDropped = desc("podvirt_vmi_network_receive_packets_dropped_total", "Packets dropped on receive on the interface.", nicLabels)
	netTxDropped = desc("podvirt_vmi_network_transmit_packets_dropped_total", "Packets dropped on transmit on the interface.", nicLabels)

	allDescs = []*prometheus.Desc{cpuUsage, cpuUser, cpuSystem, vcpuTime,
		memBalloon, memResident, memAvailable, memUnused,
		diskReadBytes, diskWriteBytes, diskReadOps, diskWriteOps, diskReadTime, diskWriteTime, diskFlushOps, diskFlushTime,
		netRxBytes, netTxBytes, netRxPackets, netTxPackets, netRxErrors, netTxErrors, netRxDropped, netTxDropped}
)

// Describe sends the descriptions of every series the collector makes.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range allDescs {
		ch <- d
	}
	c.failures.Describe(ch)
}

// Collect asks every launcher for its stats, a bounded number at once,
// and sends the series of those that answered in time.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	sem := make(chan struct{}, c.opts.Concurrency)
	var wg sync.WaitGroup
	for _, l := range c.launchers.Launchers() {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer func() { <-sem; wg.Done() }()
			c.collectOne(ch, l)
		}()
	}
	wg.Wait()
	c.failures.Collect(ch)
}

func (c *Collector) collectOne(ch chan<- prometheus.Metric, l Launcher) {
	ctx, cancel := context.WithTimeout(context.Background(), c.opts.Timeout)
	defer cancel()
	st, err := l.Client.DomainStats(ctx, &launchercmd.DomainStatsRequest{})
	if err != nil {
		c.failures.Inc()
		c.opts.Log.V(1).Info("domain stats failed", "vmi", l.Namespace+"/"+l.Name, "err", err)
		return
	}
	vmi := []string{l.Namespace, l.Name, c.opts.Node}
	w := writer{ch: ch}
	w.counter(cpuUsage, st.CpuTimeNs, nanos, vmi...)
	w.counter(cpuUser, st.CpuUserNs, nanos, vmi...)
	w.counter(cpuSystem, st.CpuSystemNs, nanos, vmi...)
	for _, v := range st.GetVcpus() {
		w.counter(vcpuTime, v.TimeNs, nanos, append(vmi, strconv.Itoa(int(v.GetId())))...)
	}
	if m := st.GetMemory(); m != nil {
		w.gauge(memBalloon, m.ActualBalloonBytes, vmi...)
		w.gauge(memResident, m.RssBytes, vmi...)
		w.gauge(memAvailable, m.AvailableBytes, vmi...)
		w.gauge(memUnused, m.UnusedBytes, vmi...)
	}
	for _, d := range st.GetDisks() {
		lv := append(vmi[:3:3], d.GetName())
		w.counter(diskReadBytes, d.ReadBytes, 1, lv...)
		w.counter(diskWriteBytes, d.WriteBytes, 1, lv...)
		w.counter(diskReadOps, d.ReadOps, 1, lv...)
		w.counter(diskWriteOps, d.WriteOps, 1, lv...)
		w.counter(diskReadTime, d.ReadTimeNs, nanos, lv...)
		w.counter(diskWriteTime, d.WriteTimeNs, nanos, lv...)
		w.counter(diskFlushOps, d.FlushOps, 1, lv...)
		w.counter(diskFlushTime, d.FlushTimeNs, nanos, lv...)
	}
	for _, n := range st.GetInterfaces() {
		lv := append(vmi[:3:3], n.GetName())
		w.counter(netRxBytes, n.RxBytes, 1, lv...)
		w.counter(netTxBytes, n.TxBytes, 1, lv...)
		w.counter(netRxPackets, n.RxPackets, 1, lv...)
		w.counter(netTxPackets, n.TxPackets, 1, lv...)
		w.counter(netRxErrors, n.RxErrors, 1, lv...)
		w.counter(netTxErrors, n.TxErrors, 1, lv...)
		w.counter(netRxDropped, n.RxDropped, 1, lv...)
		w.counter(netTxDropped, n.TxDropped, 1, lv...)
	}
}

// nanos scales nanoseconds to seconds.
const nanos = 1e-9

// writer sends the series whose values the launcher reported; an absent
// value makes no series rather than a false zero.
type writer struct {
	ch chan<- prometheus.Metric
}

func (w writer) counter(d *prometheus.Desc, v *uint64, scale float64, labels ...string) {
	if v != nil {
		w.ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(*v)*scale, labels...)
	}
}

func (w writer) gauge(d *prometheus.Desc, v *uint64, labels ...string) {
	if v != nil {
		w.ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, float64(*v), labels...)
	}
}
