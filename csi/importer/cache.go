package importer

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/egress"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/atomicfile"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// Cache holds validated bases on one node, keyed by digest and reference counted by
// holder (a volume ID). Its index is persisted atomically, so references and bases
// survive restarts; imports interrupted by a crash resume from their partial directory.
//
// Layout of dir:
//
//	index.json            the index (bases, holders, source → digest)
//	bases/<hex>.<format>  validated bases, read-only
//	partial/<key hash>/   an import in progress: data + state.json (its checkpoint)
type Cache struct {
	dir      string
	maxBytes int64
	limits   image.Limits
	stall    time.Duration
	ckptSize int64
	health   *health
	metrics  *metrics
	log      *slog.Logger
	egress   egress.Policy // AllowPrivate comes from each source
	reserve  int64         // free bytes to leave on the cache's file system
	timeout  time.Duration // the longest one import may take

	mu       sync.Mutex // guards idx and inflight
	idx      index
	inflight map[string]*flight
}

type index struct {
	Bases   map[string]*entry `json:"bases"`   // digest → base
	Holders map[string]string `json:"holders"` // holder → digest
	Sources map[string]string `json:"sources"` // source key → digest, for sources without a digest of their own
}

type entry struct {
	File        string    `json:"file"` // under bases/
	Format      string    `json:"format"`
	VirtualSize int64     `json:"virtualSize"`
	Size        int64     `json:"size"`
	Source      string    `json:"source"`
	LastUsed    time.Time `json:"lastUsed"`
}

// flight is an import that Acquire calls join instead of starting their own.
type flight struct {
	job     *job
	done    chan struct{}
	base    Base
	err     error
	waiters int // guarded by Cache.mu
	ctx     context.Context
	cancel  context.CancelFunc
}

// Options tune a Cache beyond NewCache's arguments.
type Options struct {
	Limits        image.Limits  // validation limits; zero value means image.DefaultLimits
	Stall         time.Duration // no byte for this long fails a mirror over (default 30 s)
	MirrorBackoff time.Duration // how long a failed mirror is tried last (default 5 min)
	// CheckpointBytes is how much output a resumable import writes between checkpoints
	// (default 32 MiB): the most a crash can cost it.
	CheckpointBytes int64
	Logger          *slog.Logger
	// PodCIDRs and ServiceCIDRs are the cluster's: imports may not reach them unless
	// their source allows private addresses (csi/egress).
	PodCIDRs, ServiceCIDRs []netip.Prefix
	// FreeSpaceReserve is how many bytes an import leaves free on the cache's file
	// system: it does not start, or stops, below it (unused bases are evicted first).
	// 0: none.
	FreeSpaceReserve int64
	// ImportTimeout bounds one import's wall-clock time, and so the CPU a hostile image
	// can make it spend decompressing (0: none).
	ImportTimeout time.Duration
}

// NewCache opens (or creates) the cache in dir, capped at maxBytes of bases (0: no cap),
// with its metrics registered on reg (nil: not registered).
func NewCache(dir string, maxBytes int64, reg prometheus.Registerer) (*Cache, error) {
	return NewCacheWithOptions(dir, maxBytes, reg, Options{})
}

// NewCacheWithOptions is NewCache with tuning, for tests and the driver's flags.
func NewCacheWithOptions(dir string, maxBytes int64, reg prometheus.Registerer, o Options) (*Cache, error) {
	m, err := newMetrics(reg)
	if err != nil {
		return nil, err
	}
	if o.Limits == (image.Limits{}) {
		o.Limits = image.DefaultLimits
	}
	if o.Stall == 0 {
		o.Stall = 30 * time.Second
	}
	if o.MirrorBackoff == 0 {
		o.MirrorBackoff = 5 * time.Minute
	}
	if o.CheckpointBytes == 0 {
		o.CheckpointBytes = 32 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	c := &Cache{dir: dir, maxBytes: maxBytes, limits: o.Limits, stall: o.Stall, ckptSize: o.CheckpointBytes, metrics: m, log: o.Logger,
		inflight: map[string]*flight{}, egress: egress.Policy{PodCIDRs: o.PodCIDRs, ServiceCIDRs: o.ServiceCIDRs},
		reserve: o.FreeSpaceReserve, timeout: o.ImportTimeout}
	c.health = &health{until: map[string]time.Time{}, backoff: o.MirrorBackoff,
		failovers: func(mirror string) { m.failovers.WithLabelValues(mirror).Inc() }}
	for _, d := range []string{dir, filepath.Join(dir, "bases"), filepath.Join(dir, "partial")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("image cache %s: %w", dir, err)
		}
	}
	if err := c.load(); err != nil {
		return nil, err
	}
	c.mu.Lock()
	c.updateGauges()
	c.mu.Unlock()
	return c, nil
}

func (c *Cache) indexPath() string { return filepath.Join(c.dir, "index.json") }

func (c *Cache) basePath(digest, format string) string {
	return filepath.Join(c.dir, "bases", strings.TrimPrefix(digest, "sha256:")+"."+format)
}

// load reads the index and removes what a crash left behind: base files the index does not
// know (renamed into place just before a crash, never referenced) and index entries whose
// file is gone.
func (c *Cache) load() error {
	c.idx = index{Bases: map[string]*entry{}, Holders: map[string]string{}, Sources: map[string]string{}}
	b, err := os.ReadFile(c.indexPath())
	switch {
	case errors.Is(err, os.ErrNotExist):
	case err != nil:
		return fmt.Errorf("image cache index: %w", err)
	default:
		if err := json.Unmarshal(b, &c.idx); err != nil {
			return fmt.Errorf("image cache index %s is unreadable (%w); move it away to start with an empty cache", c.indexPath(), err)
		}
	}
	for _, m := range []*map[string]string{&c.idx.Holders, &c.idx.Sources} {
		if *m == nil {
			*m = map[string]string{}
		}
	}
	if c.idx.Bases == nil {
		c.idx.Bases = map[string]*entry{}
	}
	known := map[string]bool{}
	for d, e := range c.idx.Bases {
		if _, err := os.Stat(filepath.Join(c.dir, "bases", e.File)); err != nil {
			c.log.Warn("image cache: base file missing, forgetting it", "digest", d, "file", e.File)
			delete(c.idx.Bases, d)
			continue
		}
		known[e.File] = true
	}
	files, _ := os.ReadDir(filepath.Join(c.dir, "bases"))
	for _, f := range files {
		if !known[f.Name()] {
			_ = os.Remove(filepath.Join(c.dir, "bases", f.Name()))
		}
	}
	// Partial imports without a checkpoint cannot resume (compressed streams), and ones
	// nobody came back for in a week are abandoned.
	parts, _ := os.ReadDir(filepath.Join(c.dir, "partial"))
	for _, p := range parts {
		dir := filepath.Join(c.dir, "partial", p.Name())
		st, err := os.Stat(filepath.Join(dir, partialState))
		if err != nil || time.Since(st.ModTime()) > abandonedAfter {
			_ = os.RemoveAll(dir)
		}
	}
	return nil
}

// abandonedAfter is how long a resumable partial import is kept without anyone asking for it.
const abandonedAfter = 7 * 24 * time.Hour

// save persists the index atomically. Called with c.mu held.
func (c *Cache) save() error {
	b, err := json.MarshalIndent(c.idx, "", "  ")
	if err != nil {
		return err
	}
	if err := atomicfile.Write(c.indexPath(), b, 0o600); err != nil {
		return fmt.Errorf("image cache %s: write index: %w", c.dir, err)
	}
	return nil
}

// sourceKey names a source independently of its digest. A source fetched with private
// addresses allowed is another source: a claim whose StorageClass does not allow them
// must not get, from the cache, what the URL meant inside the cluster.
func sourceKey(src Source) string {
	k := src.URL
	if src.Checksum != "" {
		k += "#" + strings.ToLower(src.Checksum)
	}
	if src.AllowPrivate {
		k += "#private"
	}
	return k
}

// Acquire resolves src to a digest, imports it into the cache unless it is there (joining
// an import of the same digest already running), takes a persisted reference for holder
// and returns the validated base. progress (may be nil) is called while bytes arrive.
func (c *Cache) Acquire(ctx context.Context, src Source, holder string, progress func(Progress)) (Base, error) {
	if holder == "" {
		return Base{}, errors.New("image cache: Acquire needs a holder (the volume ID)")
	}
	j, digest, err := c.plan(ctx, src)
	if err != nil {
		if errors.Is(err, errUseCached) {
			base, err := c.reference(digest, holder)
			if base.Cached = err == nil; base.Cached {
				c.metrics.lookups.WithLabelValues(lookupHit).Inc()
			}
			return base, err
		}
		return Base{}, err
	}
	if digest != "" {
		if base, err := c.reference(digest, holder); err == nil {
			base.Cached = true
			c.metrics.lookups.WithLabelValues(lookupHit).Inc()
			return base, nil
		}
	}
	c.metrics.lookups.WithLabelValues(lookupMiss).Inc()
	base, err := c.join(ctx, j, progress)
	if err != nil {
		return Base{}, err
	}
	return c.reference(base.Digest, holder)
}

var errUseCached = errors.New("use the cached base")

// plan works out how to import src, by its scheme (planRegistry, planHTTP): the job, and
// the digest when it is known before downloading.
func (c *Cache) plan(ctx context.Context, src Source) (*job, string, error) {
	switch {
	case strings.HasPrefix(src.URL, "docker://"):
		return c.planRegistry(ctx, src)
	case strings.HasPrefix(src.URL, "http://") || strings.HasPrefix(src.URL, "https://"):
		return c.planHTTP(src)
	case strings.HasPrefix(src.URL, "upload://") && src.Upload != nil:
		return c.planUpload(src)
	default:
		return nil, "", terminal(fmt.Errorf("source %q: unsupported scheme; use docker://registry/repo:tag or http(s)://…", src.URL))
	}
}

// join runs j, or waits for the import of the same key already running. A waiter whose
// context ends leaves; the import stops only when every waiter has left (its checkpoint
// stays for the next attempt).
func (c *Cache) join(ctx context.Context, j *job, progress func(Progress)) (Base, error) {
	var f *flight
	for f == nil {
		c.mu.Lock()
		f = c.inflight[j.key]
		if f != nil && f.ctx.Err() != nil {
			// Every waiter left and the import is stopping: wait for it to let go of the
			// partial directory, then start again (from its checkpoint).
			c.mu.Unlock()
			select {
			case <-f.done:
			case <-ctx.Done():
				return Base{}, fmt.Errorf("import %s: %w", j.src.URL, ctx.Err())
			}
			f = nil
			continue
		}
		if f == nil {
			ictx, cancel := context.WithCancel(context.WithoutCancel(ctx))
			f = &flight{job: j, done: make(chan struct{}), ctx: ictx, cancel: cancel}
			j.dir = filepath.Join(c.dir, "partial", keyHash(j.key))
			c.inflight[j.key] = f
			go c.runFlight(ictx, f, sourceKey(j.src))
		}
		f.waiters++
		c.mu.Unlock()
	}
	sub := f.job.subscribe(progress)
	defer f.job.unsubscribe(sub)
	select {
	case <-f.done:
		c.mu.Lock()
		f.waiters--
		c.mu.Unlock()
		if f.err != nil && f.job != j && (j.src.MaxDiskSize == 0 || j.src.MaxDiskSize > f.job.src.MaxDiskSize) && IsLargerThanClaim(f.err) {
			// It stopped at a smaller claim's size than ours: try with ours.
			return c.join(ctx, j, progress)
		}
		return f.base, f.err
	case <-ctx.Done():
		c.mu.Lock()
		f.waiters--
		if f.waiters == 0 {
			f.cancel()
		}
		c.mu.Unlock()
		return Base{}, fmt.Errorf("import %s: %w", j.src.URL, ctx.Err())
	}
}

func keyHash(key string) string {
	s := sha256.Sum256([]byte(key))
	return hex.EncodeToString(s[:16])
}

func (c *Cache) runFlight(ctx context.Context, f *flight, srcKey string) {
	defer f.cancel()
	j := f.job
	j.started = time.Now()
	base, err := j.run(ctx)
	if err == nil {
		j.advance(0, true)
		err = c.add(base, j.src.URL, srcKey)
	}
	result := importSuccess
	switch {
	case err == nil:
	case IsTerminal(err):
		result = importTerminal
	case ctx.Err() != nil:
		result = importCancelled
	default:
		result = importRetryable
	}
	c.metrics.imports.WithLabelValues(result).Inc()
	c.metrics.duration.WithLabelValues(j.source.kind(), result).Observe(time.Since(j.started).Seconds())
	if err != nil {
		c.log.Info("image import failed", "source", j.src.URL, "result", result, "err", err)
	} else {
		c.log.Info("image imported", "source", j.src.URL, "digest", base.Digest, "bytes", j.fetched, "seconds", time.Since(j.started).Seconds())
	}
	c.mu.Lock()
	f.base, f.err = base, err
	delete(c.inflight, j.key)
	c.mu.Unlock()
	close(f.done)
}

// add records a freshly imported base. When the same digest is already cached (an HTTP
// source without checksum that turned out to be known), the new file is dropped.
func (c *Cache) add(b Base, url, srcKey string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.idx.Bases[b.Digest]; ok && filepath.Join(c.dir, "bases", e.File) != b.Path {
		_ = os.Remove(b.Path)
	} else {
		c.idx.Bases[b.Digest] = &entry{File: filepath.Base(b.Path), Format: b.Format, VirtualSize: b.VirtualSize, Size: b.Size,
			Source: url, LastUsed: time.Now()}
	}
	if !strings.Contains(srcKey, "@sha256:") {
		c.idx.Sources[srcKey] = b.Digest
	}
	c.evict(b.Digest)
	c.updateGauges()
	return c.save()
}

// reference takes holder's reference on a cached digest.
func (c *Cache) reference(digest, holder string) (Base, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.idx.Bases[digest]
	if !ok {
		return Base{}, fmt.Errorf("image cache: %s is not cached", digest)
	}
	if prev, ok := c.idx.Holders[holder]; ok && prev != digest {
		c.log.Info("image cache: holder moves to another base", "holder", holder, "from", prev, "to", digest)
	}
	c.idx.Holders[holder] = digest
	e.LastUsed = time.Now()
	if err := c.save(); err != nil {
		return Base{}, err
	}
	return Base{Digest: digest, Path: filepath.Join(c.dir, "bases", e.File), Format: e.Format, VirtualSize: e.VirtualSize, Size: e.Size}, nil
}

// Release drops holder's reference; releasing an unknown holder is not an error. The base
// stays cached until the size cap needs its room.
func (c *Cache) Release(holder string) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	d, ok := c.idx.Holders[holder]
	if !ok {
		return nil
	}
	delete(c.idx.Holders, holder)
	if e := c.idx.Bases[d]; e != nil {
		e.LastUsed = time.Now()
	}
	c.evict("")
	c.updateGauges()
	return c.save()
}

// evict removes unreferenced bases, least recently used first, until the cache fits its
// cap; keep is never evicted. Called with c.mu held.
func (c *Cache) evict(keep string) {
	if c.maxBytes <= 0 {
		return
	}
	var total int64
	for _, e := range c.idx.Bases {
		total += e.Size
	}
	for _, d := range c.unused(keep) {
		if total <= c.maxBytes {
			break
		}
		size := c.idx.Bases[d].Size
		if c.remove(d) {
			total -= size
		}
	}
}

// unused lists the bases no holder references, least recently used first, but keep.
// Called with c.mu held.
func (c *Cache) unused(keep string) []string {
	held := map[string]bool{}
	for _, d := range c.idx.Holders {
		held[d] = true
	}
	var candidates []string
	for d := range c.idx.Bases {
		if !held[d] && d != keep {
			candidates = append(candidates, d)
		}
	}
	sort.Slice(candidates, func(a, b int) bool {
		return c.idx.Bases[candidates[a]].LastUsed.Before(c.idx.Bases[candidates[b]].LastUsed)
	})
	return candidates
}

// remove deletes an unused base's file and its index entries. Called with c.mu held.
func (c *Cache) remove(d string) bool {
	e := c.idx.Bases[d]
	if err := os.Remove(filepath.Join(c.dir, "bases", e.File)); err != nil && !errors.Is(err, os.ErrNotExist) {
		c.log.Warn("image cache: evict", "digest", d, "err", err)
		return false
	}
	delete(c.idx.Bases, d)
	for k, v := range c.idx.Sources {
		if v == d {
			delete(c.idx.Sources, k)
		}
	}
	c.metrics.evictions.Inc()
	c.log.Info("image cache: evicted unused base", "digest", d, "bytes", e.Size)
	return true
}

// bound is the most an import of src may write, and the tighter of the claim's size and
// the node's maximum virtual size, which a qcow2 header may not declare more than.
func (c *Cache) bound(src Source) (written, declared outputBound) {
	if v := c.limits.MaxVirtualSize; v > 0 {
		declared = outputBound{bytes: v, what: fmt.Sprintf("the node's maximum virtual size of %s", bytesize.Format(v)),
			hint: "use a smaller image, or raise the CSI driver's --max-virtual-size (chart csi.maxVirtualSize)"}
	}
	if v := src.MaxDiskSize; v > 0 {
		declared = declared.tighter(outputBound{bytes: v, what: fmt.Sprintf("the %s its claim asks for", bytesize.Format(v)),
			hint: "ask for a larger claim (spec.resources.requests.storage), or use a smaller image", claim: true})
	}
	written = declared
	if declared.bytes > 0 {
		written.bytes += diskmeta.QCOW2Room(declared.bytes)
		written.what += " (plus room for qcow2 metadata)"
	}
	if c.maxBytes > 0 {
		c.mu.Lock()
		room := c.maxBytes - c.heldBytes()
		c.mu.Unlock()
		b := outputBound{bytes: room, what: fmt.Sprintf("the node's image cache size of %s", bytesize.Format(c.maxBytes)),
			hint: "raise the CSI driver's --cache-size (chart csi.cacheSize), or use a smaller image"}
		if room < c.maxBytes {
			b.what = fmt.Sprintf("the room left in the node's image cache (%s of its %s; images that volumes use hold the rest)",
				bytesize.Format(max(room, 0)), bytesize.Format(c.maxBytes))
			b.hint = "the import is retried as volumes let go of their images; or raise the CSI driver's --cache-size (chart csi.cacheSize)"
			b.retryable = true
			room = max(room, 1) // 0 would mean unbounded
			b.bytes = room
		}
		written = written.tighter(b)
	}
	return written, declared
}

// heldBytes is the size of the bases volumes hold. Called with c.mu held.
func (c *Cache) heldBytes() int64 {
	held := map[string]bool{}
	for _, d := range c.idx.Holders {
		held[d] = true
	}
	var n int64
	for d := range held {
		if e := c.idx.Bases[d]; e != nil {
			n += e.Size
		}
	}
	return n
}

// spaceGuard keeps imports above the free-space reserve, or is nil without one.
func (c *Cache) spaceGuard() *spaceGuard {
	if c.reserve <= 0 {
		return nil
	}
	return &spaceGuard{dir: c.dir, reserve: c.reserve, evict: c.evictUnused}
}

// evictUnused removes unreferenced bases, least recently used first, until enough()
// holds or none is left.
func (c *Cache) evictUnused(enough func() bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, d := range c.unused("") {
		if enough() {
			break
		}
		c.remove(d)
	}
	c.updateGauges()
	if err := c.save(); err != nil {
		c.log.Warn("image cache: save index", "err", err)
	}
}

// updateGauges is called with c.mu held.
func (c *Cache) updateGauges() {
	var total int64
	for _, e := range c.idx.Bases {
		total += e.Size
	}
	c.metrics.cacheBytes.Set(float64(total))
	c.metrics.entries.Set(float64(len(c.idx.Bases)))
}

// newJob is an import of src from s.
func (c *Cache) newJob(src Source, s source, key string) *job {
	return &job{c: c, src: src, source: s, key: key, diskName: src.URL, subs: map[int]func(Progress){}}
}
