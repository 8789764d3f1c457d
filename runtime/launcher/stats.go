package launcher

import (
	"fmt"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// statsTypes are the groups of counters Stats asks libvirt for.
const statsTypes = libvirt.DOMAIN_STATS_CPU_TOTAL | libvirt.DOMAIN_STATS_BALLOON |
	libvirt.DOMAIN_STATS_VCPU | libvirt.DOMAIN_STATS_INTERFACE | libvirt.DOMAIN_STATS_BLOCK

// userAliasPrefix starts the aliases the converter gives disks and NICs
// ("ua-" + the VMI's name for the device): libvirt keeps only user
// aliases with that prefix.
const userAliasPrefix = "ua-"

// Stats reads the domain's CPU, memory, disk and NIC counters. libvirt
// names disks by guest device and NICs by host tap; the domain's live XML
// maps both back to the VMI's names through the converter's aliases.
func (l *Launcher) Stats() (*launchercmd.DomainStatsResponse, error) {
	d, err := l.domain()
	if err != nil {
		return nil, err
	}
	all, err := l.conn.GetAllDomainStats([]*libvirt.Domain{d}, statsTypes, 0)
	if err != nil {
		return nil, fmt.Errorf("domain %s: stats: %w", l.name, err)
	}
	for _, s := range all {
		if s.Domain != nil {
			_ = s.Domain.Free()
		}
	}
	if len(all) != 1 {
		return nil, fmt.Errorf("domain %s: stats: libvirt returned %d records", l.name, len(all))
	}
	def, err := liveDefinition(d)
	if err != nil {
		return nil, fmt.Errorf("domain %s: stats: %w", l.name, err)
	}
	return statsResponse(&all[0], deviceNames(def)), nil
}

// deviceNames maps the guest device of each disk (vda) and the host
// device of each NIC (the tap) to its VMI name.
func deviceNames(def *libvirtxml.Domain) map[string]string {
	names := map[string]string{}
	if def.Devices == nil {
		return names
	}
	for _, d := range def.Devices.Disks {
		if d.Target != nil && d.Alias != nil {
			names[d.Target.Dev] = strings.TrimPrefix(d.Alias.Name, userAliasPrefix)
		}
	}
	for _, i := range def.Devices.Interfaces {
		if i.Target != nil && i.Alias != nil {
			names[i.Target.Dev] = strings.TrimPrefix(i.Alias.Name, userAliasPrefix)
		}
	}
	return names
}

// statsResponse converts libvirt's record: memory from KiB to bytes,
// times stay in nanoseconds. Devices without a VMI name keep their
// device name.
func statsResponse(s *libvirt.DomainStats, names map[string]string) *launchercmd.DomainStatsResponse {
	r := &launchercmd.DomainStatsResponse{}
	if c := s.Cpu; c != nil {
		r.CpuTimeNs = opt(c.TimeSet, c.Time)
		r.CpuUserNs = opt(c.UserSet, c.User)
		r.CpuSystemNs = opt(c.SystemSet, c.System)
	}
	for i, v := range s.Vcpu {
		r.Vcpus = append(r.Vcpus, &launchercmd.VCPUStats{Id: uint32(i), TimeNs: opt(v.TimeSet, v.Time)})
	}
	if b := s.Balloon; b != nil {
		r.Memory = &launchercmd.MemoryStats{
			ActualBalloonBytes: opt(b.CurrentSet, b.Current*1024),
			RssBytes:           opt(b.RssSet, b.Rss*1024),
			AvailableBytes:     opt(b.AvailableSet, b.Available*1024),
			UnusedBytes:        opt(b.UnusedSet, b.Unused*1024),
		}
	}
	name := func(dev string) string {
		if n := names[dev]; n != "" {
			return n
		}
		return dev
	}
	for _, b := range s.Block {
		if !b.NameSet {
			continue
		}
		r.Disks = append(r.Disks, &launchercmd.DiskStats{
			Name: name(b.Name), Device: b.Name,
			ReadBytes: opt(b.RdBytesSet, b.RdBytes), WriteBytes: opt(b.WrBytesSet, b.WrBytes),
			ReadOps: opt(b.RdReqsSet, b.RdReqs), WriteOps: opt(b.WrReqsSet, b.WrReqs),
			ReadTimeNs: opt(b.RdTimesSet, b.RdTimes), WriteTimeNs: opt(b.WrTimesSet, b.WrTimes),
			FlushOps: opt(b.FlReqsSet, b.FlReqs), FlushTimeNs: opt(b.FlTimesSet, b.FlTimes),
		})
	}
	for _, n := range s.Net {
		if !n.NameSet {
			continue
		}
		r.Interfaces = append(r.Interfaces, &launchercmd.InterfaceStats{
			Name: name(n.Name), Device: n.Name,
			RxBytes: opt(n.RxBytesSet, n.RxBytes), RxPackets: opt(n.RxPktsSet, n.RxPkts),
			RxErrors: opt(n.RxErrsSet, n.RxErrs), RxDropped: opt(n.RxDropSet, n.RxDrop),
			TxBytes: opt(n.TxBytesSet, n.TxBytes), TxPackets: opt(n.TxPktsSet, n.TxPkts),
			TxErrors: opt(n.TxErrsSet, n.TxErrs), TxDropped: opt(n.TxDropSet, n.TxDrop),
		})
	}
	return r
}

// opt is v when libvirt reported it, nil (absent) when not.
func opt(set bool, v uint64) *uint64 {
	if !set {
		return nil
	}
	return &v
}
