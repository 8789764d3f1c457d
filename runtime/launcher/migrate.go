package launcher

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/migrationproxy"
)

// MigrationSockets is the directory of a migration's unix sockets, as
// libvirtd and QEMU see it (the same path on both sides) and as this
// process does.
type MigrationSockets struct {
	Daemon, Visible string
}

// MigrateOptions say where and how the domain moves.
type MigrateOptions struct {
	// Target is the target launcher's migration proxy (host:port), Token
	// the migration's secret it checks, and CertificateSHA256 the digest
	// of its TLS certificate, the only one accepted.
	Target            string
	Token             []byte
	CertificateSHA256 []byte
	// DestXML is the domain as the target launcher rendered it for its pod.
	DestXML string
	// Disks are the target devices (vda, …) whose data is copied: the top
	// of each backing chain only, the rest must be on the target already.
	// nil: every writable disk (in podvirt every disk is node-local).
	Disks []string
	// Bandwidth caps the migration in MiB/s (0: unlimited).
	Bandwidth uint64
	// AutoConverge throttles vCPUs of a guest that dirties memory faster
	// than it can be sent; PostCopy switches to post-copy at the deadline
	// instead of failing.
	AutoConverge, PostCopy bool
	// Deadline aborts the migration (or starts post-copy) when it runs
	// longer; 0: none.
	Deadline time.Duration
}

// MigrationStats is what a migration moved.
type MigrationStats struct {
	MemoryProcessed, MemoryTotal, MemoryRemaining uint64
	DiskProcessed, DiskTotal, DiskRemaining       uint64
	Elapsed, Downtime                             time.Duration
	PostCopy                                      bool
}

func statsOf(j *libvirt.DomainJobInfo) MigrationStats {
	return MigrationStats{
		MemoryProcessed: j.MemProcessed, MemoryTotal: j.MemTotal, MemoryRemaining: j.MemRemaining,
		DiskProcessed: j.DiskProcessed, DiskTotal: j.DiskTotal, DiskRemaining: j.DiskRemaining,
		Elapsed: time.Duration(j.TimeElapsed) * time.Millisecond, Downtime: time.Duration(j.Downtime) * time.Millisecond,
	}
}

// MigrateTo moves the running domain live to the target launcher: memory
// and the top of each listed disk's chain over the target's proxy, the
// domain defined there and gone here on success. progress (may be nil) is
// called about twice a second. Cancelling ctx aborts the migration; the
// domain then keeps running here.
func (l *Launcher) MigrateTo(ctx context.Context, socks MigrationSockets, o MigrateOptions, progress func(MigrationStats)) (MigrationStats, error) {
	d, err := l.domain()
	if err != nil {
		return MigrationStats{}, err
	}
	proxy, err := migrationproxy.ListenSource(socks.Visible, o.Target, o.Token, o.CertificateSHA256)
	if err != nil {
		return MigrationStats{}, err
	}
	defer func() { _ = proxy.Close() }()
	sock := func(c migrationproxy.Channel) string { return filepath.Join(socks.Daemon, c.SocketName()) }
	params := &libvirt.DomainMigrateParameters{
		URISet: true, URI: "unix://" + sock(migrationproxy.Migration),
		DisksURISet: true, DisksURI: "unix://" + sock(migrationproxy.Disks),
		DestXMLSet: o.DestXML != "", DestXML: o.DestXML,
		BandwidthSet: o.Bandwidth > 0, Bandwidth: o.Bandwidth,
	}
	flags := libvirt.MIGRATE_LIVE | libvirt.MIGRATE_PEER2PEER | libvirt.MIGRATE_PERSIST_DEST | libvirt.MIGRATE_ABORT_ON_ERROR
	if o.Disks == nil {
		if o.Disks, err = writableDisks(d); err != nil {
			return MigrationStats{}, fmt.Errorf("domain %s: %w", l.name, err)
		}
	}
	if len(o.Disks) > 0 {
		if err := l.pullLayers(ctx, d, o.Disks); err != nil {
			return MigrationStats{}, fmt.Errorf("domain %s: %w", l.name, err)
		}
		flags |= libvirt.MIGRATE_NON_SHARED_INC
		params.MigrateDisksSet, params.MigrateDisks = true, o.Disks
	}
	if o.AutoConverge {
		flags |= libvirt.MIGRATE_AUTO_CONVERGE
	}
	if o.PostCopy {
		flags |= libvirt.MIGRATE_POSTCOPY
	}
	dconn := "qemu+unix:///system?socket=" + sock(migrationproxy.Libvirt)

	done := make(chan error, 1)
	go func() { done <- d.MigrateToURI3(dconn, params, flags) }()
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	var deadline <-chan time.Time
	if o.Deadline > 0 {
		t := time.NewTimer(o.Deadline)
		defer t.Stop()
		deadline = t.C
	}
	var last MigrationStats
	aborted := ""
	for {
		select {
		case err := <-done:
			if err != nil {
				if aborted != "" {
					return last, fmt.Errorf("domain %s: migration to %s %s: %w", l.name, o.Target, aborted, err)
				}
				return last, fmt.Errorf("domain %s: migration to %s: %w", l.name, o.Target, err)
			}
			if j, err := d.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED); err == nil {
				last = statsOf(j)
			}
			last.PostCopy = last.PostCopy || aborted == "switched to post-copy"
			return last, nil
		case <-tick.C:
			if j, err := d.GetJobStats(0); err == nil && j.Type != libvirt.DOMAIN_JOB_NONE {
				last = statsOf(j)
				if progress != nil {
					progress(last)
				}
			}
		case <-ctx.Done():
			if aborted == "" {
				aborted = "cancelled"
				if err := d.AbortJob(); err != nil {
					slog.Warn("abort migration", "domain", l.name, "err", err)
				}
			}
		case <-deadline:
			deadline = nil
			if o.PostCopy {
				if err := d.MigrateStartPostCopy(0); err == nil {
					aborted = "switched to post-copy"
					continue
				}
			}
			aborted = fmt.Sprintf("stopped at its deadline of %s", o.Deadline)
			if err := d.AbortJob(); err != nil {
				slog.Warn("abort migration", "domain", l.name, "err", err)
			}
		}
	}
}

// Migrate is MigrateTo for the command server, through the launcher's
// migration sockets.
func (l *Launcher) Migrate(ctx context.Context, req *launchercmd.MigrateRequest, progress func(*launchercmd.MigrationProgress)) (*launchercmd.MigrationProgress, error) {
	o := MigrateOptions{Target: req.GetTargetAddress(), Token: req.GetToken(), CertificateSHA256: req.GetCertificateSha256(),
		DestXML: req.GetDomainXml(), Bandwidth: req.GetBandwidthMib(),
		AutoConverge: req.GetAutoConverge(), PostCopy: req.GetPostCopy(), Deadline: time.Duration(req.GetDeadlineSeconds()) * time.Second}
	st, err := l.MigrateTo(ctx, l.sockets, o, func(st MigrationStats) { progress(st.progress()) })
	if err != nil {
		return nil, err
	}
	return st.progress(), nil
}

func (st MigrationStats) progress() *launchercmd.MigrationProgress {
	return &launchercmd.MigrationProgress{MemoryProcessed: st.MemoryProcessed, MemoryTotal: st.MemoryTotal, DiskProcessed: st.DiskProcessed,
		DiskTotal: st.DiskTotal, ElapsedMs: st.Elapsed.Milliseconds(), DowntimeMs: st.Downtime.Milliseconds(), PostCopy: st.PostCopy}
}

// writableDisks lists the target devices of the domain's writable disks.
func writableDisks(d *libvirt.Domain) ([]string, error) {
	dom, err := liveDefinition(d)
	if err != nil {
		return nil, err
	}
	devs := []string{}
	if dom.Devices == nil {
		return devs, nil
	}
	for _, disk := range dom.Devices.Disks {
		if disk.ReadOnly != nil || disk.Device == "cdrom" || disk.Target == nil {
			continue
		}
		devs = append(devs, disk.Target.Dev)
	}
	return devs, nil
}

// Incoming is the target side of a migration: a proxy that takes the
// migration's connections to this launcher's libvirtd and QEMU.
type Incoming struct {
	l     *Launcher
	proxy *migrationproxy.Target
}

// AwaitIncoming readies the launcher for its domain to arrive by
// migration: it follows the domain's events and listens on addr for the
// source's connections with token. daemonSocket is the libvirtd socket.
func (l *Launcher) AwaitIncoming(addr string, token []byte, daemonSocket string, socks MigrationSockets) (*Incoming, error) {
	if err := l.follow(); err != nil {
		return nil, err
	}
	sock := func(c migrationproxy.Channel) string { return filepath.Join(socks.Visible, c.SocketName()) }
	p, err := migrationproxy.ListenTarget(addr, token, map[migrationproxy.Channel]string{
		migrationproxy.Libvirt:   daemonSocket,
		migrationproxy.Migration: sock(migrationproxy.Migration),
		migrationproxy.Disks:     sock(migrationproxy.Disks),
	})
	if err != nil {
		return nil, err
	}
	return &Incoming{l: l, proxy: p}, nil
}

// Addr is where the source connects.
func (in *Incoming) Addr() string { return in.proxy.Addr() }

// CertificateSHA256 is the digest of the TLS certificate the source must
// find at Addr.
func (in *Incoming) CertificateSHA256() []byte { return in.proxy.CertificateSHA256() }

// Wait returns once the domain runs here, or an error when the migration
// failed (libvirt then removed the incoming domain) or ctx ended.
func (in *Incoming) Wait(ctx context.Context) error {
	l := in.l
	for {
		if l.isGone() {
			st, reason := l.State()
			return fmt.Errorf("domain %s: the incoming migration failed (%s, %s)", l.name, st, reason)
		}
		ch := l.Changed()
		if st, _ := l.State(); st == v1.DomainRunning {
			// Resumed here: the migration is over. Adopt the domain.
			d, err := l.conn.LookupDomainByName(l.name)
			if err != nil {
				return fmt.Errorf("domain %s: arrived but cannot be looked up: %w", l.name, err)
			}
			l.mu.Lock()
			if l.dom == nil {
				l.dom, l.started = d, time.Now()
			} else {
				_ = d.Free()
			}
			l.mu.Unlock()
			// The agent came connected: no event says so here.
			go l.readOSInfo(context.WithoutCancel(ctx))
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("domain %s: waiting for the incoming migration: %w", l.name, ctx.Err())
		case <-ch:
		}
	}
}

// Stats is what the arrived migration moved, as the target saw it
// (downtime included).
func (in *Incoming) Stats() (MigrationStats, error) {
	d, err := in.l.domain()
	if err != nil {
		return MigrationStats{}, err
	}
	j, err := d.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED)
	if err != nil {
		return MigrationStats{}, err
	}
	return statsOf(j), nil
}

// StopAccepting takes no new connections; the source's open ones finish.
func (in *Incoming) StopAccepting() error { return in.proxy.StopAccepting() }

// Close stops the proxy and cuts its connections.
func (in *Incoming) Close() error { return in.proxy.Close() }
