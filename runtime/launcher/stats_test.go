package launcher

import (
	"testing"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"

	"github.com/podvirt/podvirt/cni"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/converter"
)

// TestStatsResponse: libvirt's KiB become bytes, unreported counters stay
// absent, and devices take their VMI names from the aliases.
func TestStatsResponse(t *testing.T) {
	def := &libvirtxml.Domain{Devices: &libvirtxml.DomainDeviceList{
		Disks:      []libvirtxml.DomainDisk{{Target: &libvirtxml.DomainDiskTarget{Dev: "vda"}, Alias: &libvirtxml.DomainAlias{Name: "ua-root"}}},
		Interfaces: []libvirtxml.DomainInterface{{Target: &libvirtxml.DomainInterfaceTarget{Dev: "tap0"}, Alias: &libvirtxml.DomainAlias{Name: "ua-l2"}}},
	}}
	s := &libvirt.DomainStats{
		Cpu:     &libvirt.DomainStatsCPU{TimeSet: true, Time: 7},
		Balloon: &libvirt.DomainStatsBalloon{CurrentSet: true, Current: 262144, RssSet: true, Rss: 1000},
		Vcpu:    []libvirt.DomainStatsVcpu{{TimeSet: true, Time: 5}, {}},
		Block:   []libvirt.DomainStatsBlock{{NameSet: true, Name: "vda", RdBytesSet: true, RdBytes: 512}, {NameSet: true, Name: "sdz"}},
		Net:     []libvirt.DomainStatsNet{{NameSet: true, Name: "tap0", TxPktsSet: true, TxPkts: 3}},
	}
	r := statsResponse(s, deviceNames(def))
	if r.GetCpuTimeNs() != 7 || r.CpuUserNs != nil {
		t.Errorf("cpu %v %v", r.CpuTimeNs, r.CpuUserNs)
	}
	if m := r.GetMemory(); m.GetActualBalloonBytes() != 256<<20 || m.GetRssBytes() != 1000*1024 || m.AvailableBytes != nil {
		t.Errorf("memory %v", m)
	}
	if v := r.GetVcpus(); len(v) != 2 || v[0].GetTimeNs() != 5 || v[1].GetId() != 1 || v[1].TimeNs != nil {
		t.Errorf("vcpus %v", v)
	}
	if d := r.GetDisks(); len(d) != 2 || d[0].GetName() != "root" || d[0].GetDevice() != "vda" || d[0].GetReadBytes() != 512 || d[1].GetName() != "sdz" {
		t.Errorf("disks %v", d)
	}
	if n := r.GetInterfaces(); len(n) != 1 || n[0].GetName() != "l2" || n[0].GetDevice() != "tap0" || n[0].GetTxPackets() != 3 || n[0].RxBytes != nil {
		t.Errorf("interfaces %v", n)
	}
}

// TestStatsGuest boots the test guest with a disk and a tap NIC (the
// L2 path, bridge mode), waits until it took its address by DHCP, and
// reads its stats: the vCPU ran, it has memory and its balloon driver
// reports what it uses, and the root disk and the NIC have counted traffic
// under their VMI names.
func TestStatsGuest(t *testing.T) {
	art := l2Guest(t)
	vm := startL2VM(t, art, newNodeNS(t), l2Conf(cni.ModeBridge, t.TempDir()), "stats")
	waitGuestIP(t, vm)

	st, err := vm.l.Stats()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("stats: %v", st)
	if st.GetCpuTimeNs() == 0 {
		t.Error("no CPU time")
	}
	if len(st.GetVcpus()) != 1 || st.GetVcpus()[0].GetTimeNs() == 0 {
		t.Errorf("vcpus %v, want one that ran", st.GetVcpus())
	}
	if m := st.GetMemory(); m.GetActualBalloonBytes() != 256<<20 || m.GetRssBytes() == 0 {
		t.Errorf("memory %v, want 256Mi actual and some RSS", m)
	}
	// The driver reports on loading and then every stats period.
	deadline := time.Now().Add(3 * converter.MemBalloonStatsPeriod)
	for st.GetMemory().AvailableBytes == nil && time.Now().Before(deadline) {
		time.Sleep(500 * time.Millisecond)
		if st, err = vm.l.Stats(); err != nil {
			t.Fatal(err)
		}
	}
	if m := st.GetMemory(); m.GetAvailableBytes() == 0 || m.GetAvailableBytes() > 256<<20 || m.GetUnusedBytes() == 0 || m.GetUnusedBytes() > m.GetAvailableBytes() {
		t.Errorf("memory %v, want available ≤ 256Mi and unused ≤ available from the balloon driver", m)
	}
	disk := findDisk(st, "root")
	if disk == nil || disk.GetDevice() != "vda" || disk.GetReadBytes() == 0 || disk.GetReadOps() == 0 || disk.GetReadTimeNs() == 0 {
		t.Errorf("disks %v, want root (vda) with reads", st.GetDisks())
	}
	nic := findInterface(st, l2Net)
	// The DHCP exchange went both ways over the tap.
	if nic == nil || nic.GetDevice() == "" || nic.GetRxPackets() == 0 || nic.GetTxPackets() == 0 || nic.GetRxBytes() == 0 || nic.GetTxBytes() == 0 {
		t.Errorf("interfaces %v, want %s with packets both ways", st.GetInterfaces(), l2Net)
	}
}

func findDisk(st *launchercmd.DomainStatsResponse, name string) *launchercmd.DiskStats {
	for _, d := range st.GetDisks() {
		if d.GetName() == name {
			return d
		}
	}
	return nil
}

func findInterface(st *launchercmd.DomainStatsResponse, name string) *launchercmd.InterfaceStats {
	for _, n := range st.GetInterfaces() {
		if n.GetName() == name {
			return n
		}
	}
	return nil
}
