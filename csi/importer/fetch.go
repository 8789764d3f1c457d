package importer

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// health remembers which mirrors failed recently, for the whole node.
type health struct {
	mu        sync.Mutex // guards until
	until     map[string]time.Time
	backoff   time.Duration
	failovers func(mirror string)
}

func (h *health) markBad(mirror string) {
	h.mu.Lock()
	h.until[mirror] = time.Now().Add(h.backoff)
	h.mu.Unlock()
	h.failovers(mirror)
}

// order puts healthy mirrors first, keeping the user's order; unhealthy ones stay as a
// last resort rather than failing an import that one of them could still serve.
func (h *health) order(mirrors []string) []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	now := time.Now()
	var good, bad []string
	for _, m := range mirrors {
		if now.Before(h.until[m]) {
			bad = append(bad, m)
		} else {
			good = append(good, m)
		}
	}
	return append(good, bad...)
}

// httpStatusError is a non-success answer from a mirror or HTTP server.
type httpStatusError struct {
	url    string
	status int
}

func (e *httpStatusError) Error() string {
	return fmt.Sprintf("GET %s: %d %s", e.url, e.status, http.StatusText(e.status))
}

// errSourceChanged: the file on the server is not the one a partial download began with.
var errSourceChanged = errors.New("the file changed on the server since the download began; starting over")

func isNotFound(err error) bool {
	var se *httpStatusError
	return errors.As(err, &se) && (se.status == http.StatusNotFound || se.status == http.StatusGone)
}

// opener opens a blob on one mirror, from offset. It returns the body, positioned at
// offset, and the blob's total size when the server says it (-1 otherwise).
type opener func(ctx context.Context, mirror string, offset int64) (io.ReadCloser, int64, error)

// rangeGET is the opener body shared by registry blobs and HTTP sources: a GET with a
// Range header (to size-1 when the size is known: some registries want both ends); a
// server that ignores Range gets its first offset bytes skipped.
//
// validator (nil for content-addressed blobs) guards a mutable HTTP file: the first answer's
// strong ETag or Last-Modified is recorded in it, and a resume sends it as If-Range, so a
// file replaced on the server is never spliced onto the old one's first part.
func rangeGET(ctx context.Context, client *http.Client, url string, offset, size int64, validator *string) (io.ReadCloser, int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, -1, err
	}
	ifRange := false
	if offset > 0 {
		rng := "bytes=" + strconv.FormatInt(offset, 10) + "-"
		if size > 0 {
			rng += strconv.FormatInt(size-1, 10)
		}
		req.Header.Set("Range", rng)
		if validator != nil && *validator != "" {
			req.Header.Set("If-Range", *validator)
			ifRange = true
		}
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, -1, err
	}
	if validator != nil && *validator == "" && resp.StatusCode/100 == 2 {
		if et := resp.Header.Get("ETag"); et != "" && !strings.HasPrefix(et, "W/") {
			*validator = et
		} else {
			*validator = resp.Header.Get("Last-Modified")
		}
	}
	if ifRange && resp.StatusCode == http.StatusOK {
		resp.Body.Close()
		return nil, -1, fmt.Errorf("GET %s: %w", url, errSourceChanged)
	}
	switch {
	case resp.StatusCode == http.StatusPartialContent && offset > 0:
		total := int64(-1)
		var start, end int64
		if _, err := fmt.Sscanf(resp.Header.Get("Content-Range"), "bytes %d-%d/%d", &start, &end, &total); err != nil || start != offset {
			resp.Body.Close()
			return nil, -1, fmt.Errorf("GET %s: Content-Range %q does not start at %d", url, resp.Header.Get("Content-Range"), offset)
		}
		return bulkBody(resp), total, nil
	case resp.StatusCode == http.StatusOK:
		body := bulkBody(resp)
		if offset > 0 {
			if _, err := io.CopyN(io.Discard, body, offset); err != nil {
				body.Close()
				return nil, -1, fmt.Errorf("GET %s: skip to %d: %w", url, offset, err)
			}
		}
		return body, resp.ContentLength, nil
	default:
		resp.Body.Close()
		return nil, -1, &httpStatusError{url: url, status: resp.StatusCode}
	}
}

// failoverReader reads one blob, moving to the next mirror (at the same offset, by Range)
// when the current one fails: connection error, 5xx, or no byte for stall. The bytes above
// it are hashed and checked against the expected digest, so which mirror served which part
// does not matter.
type failoverReader struct {
	ctx      context.Context
	open     opener
	mirrors  []string // in the order to try
	health   *health
	stall    time.Duration
	offset   int64
	onSwitch func(mirror string)

	cur       io.ReadCloser
	curMirror string
	next      int // index into mirrors of the next one to try
	actx      context.Context
	cancel    context.CancelCauseFunc
	timer     *time.Timer
	notFound  int
	lastErr   error
	err       error // the reader's final failure, once it gave up
}

func (r *failoverReader) Mirror() string { return r.curMirror }

func (r *failoverReader) connect() error {
	for r.next < len(r.mirrors) {
		m := r.mirrors[r.next]
		r.next++
		actx, cancel := context.WithCancelCause(r.ctx)
		body, _, err := r.open(actx, m, r.offset)
		if err == nil {
			r.cur, r.curMirror, r.cancel, r.actx = body, m, cancel, actx
			stall := r.stall
			r.timer = time.AfterFunc(stall, func() { cancel(fmt.Errorf("stalled: no bytes for %s", stall)) })
			if r.onSwitch != nil {
				r.onSwitch(m)
			}
			return nil
		}
		cancel(nil)
		if r.ctx.Err() != nil {
			return r.ctx.Err()
		}
		r.lastErr = fmt.Errorf("mirror %s: %w", m, err)
		if isNotFound(err) {
			r.notFound++
			continue
		}
		r.health.markBad(m)
	}
	if r.notFound == len(r.mirrors) {
		return terminal(fmt.Errorf("not found on any of %d mirror(s) (last: %w); check the image name and that the mirrors hold it", len(r.mirrors), r.lastErr))
	}
	return fmt.Errorf("no mirror could serve it (tried %d, last: %w)", len(r.mirrors), r.lastErr)
}

func (r *failoverReader) Read(p []byte) (int, error) {
	for {
		if r.err != nil {
			return 0, r.err
		}
		if r.cur == nil {
			if err := r.connect(); err != nil {
				r.err = err
				return 0, err
			}
		}
		n, err := r.cur.Read(p)
		if n > 0 {
			r.offset += int64(n)
			r.timer.Reset(r.stall)
		}
		if err == nil || errors.Is(err, io.EOF) {
			return n, err
		}
		// The mirror failed mid-blob: the caller's context ending is not the mirror's fault.
		if cause := context.Cause(r.actx); cause != nil && r.ctx.Err() == nil {
			err = cause
		}
		r.drop()
		if r.ctx.Err() != nil {
			r.err = r.ctx.Err()
			return n, r.err
		}
		r.lastErr = fmt.Errorf("mirror %s failed at byte %d: %w", r.curMirror, r.offset, err)
		r.health.markBad(r.curMirror)
		if n > 0 {
			return n, nil
		}
	}
}

func (r *failoverReader) drop() {
	if r.cur == nil {
		return
	}
	r.timer.Stop()
	r.cancel(nil)
	r.cur.Close()
	r.cur = nil
}

func (r *failoverReader) Close() error {
	r.drop()
	return nil
}

// bulkBody is the body of a blob or file download. Over TLS it is read ahead in a
// goroutine of its own (readAhead). Plain HTTP needs no such thing: the socket's receive
// buffer already lets the server run ahead, and a Read takes all it holds.
func bulkBody(resp *http.Response) io.ReadCloser {
	if resp.TLS == nil {
		return resp.Body
	}
	return newReadAhead(resp.Body, readAheadSize)
}

// readAheadSize is how much of a response body readAhead holds: enough that the
// consumer (hashing, unpacking, writing) gets reads of up to a few MiB when it is the
// slower side, little enough per import not to matter.
const readAheadSize = 4 << 20

// readAhead reads a response body in a goroutine of its own into a ring buffer, so that
// receiving (TLS decryption) overlaps with what the consumer does with the bytes, and the
// consumer's Read gets everything buffered so far: a TLS connection otherwise decrypts in
// the consumer's goroutine and hands out one 16 KiB record per Read, each then hashed,
// counted and written on its own. It never reads more than the ring holds ahead of the
// consumer. A read error (io.EOF included) reaches the consumer after the bytes before
// it. The read is bounded by the request's context (the stall timer, the import), so the
// consumer never waits on a goroutine that could not end. Close closes the body and waits
// for the goroutine: nothing reads the body after it returns.
type readAhead struct {
	body io.ReadCloser
	done chan struct{}

	mu     sync.Mutex
	cond   sync.Cond
	buf    []byte
	r, n   int   // ring: next byte to hand out, bytes buffered
	err    error // the body's read error, once it came
	closed bool
}

func newReadAhead(body io.ReadCloser, size int) *readAhead {
	ra := &readAhead{body: body, done: make(chan struct{}), buf: make([]byte, size)}
	ra.cond.L = &ra.mu
	go ra.fill()
	return ra
}

func (ra *readAhead) fill() {
	defer close(ra.done)
	for {
		ra.mu.Lock()
		for ra.n == len(ra.buf) && !ra.closed {
			ra.cond.Wait()
		}
		if ra.closed {
			ra.mu.Unlock()
			return
		}
		// The free part after the buffered bytes, up to the ring's end: the consumer does
		// not look at it until n grows.
		w := (ra.r + ra.n) % len(ra.buf)
		end := len(ra.buf)
		if w < ra.r {
			end = ra.r
		}
		ra.mu.Unlock()
		m, err := ra.body.Read(ra.buf[w:end])
		ra.mu.Lock()
		ra.n += m
		if err != nil {
			ra.err = err
		}
		ra.cond.Broadcast()
		ra.mu.Unlock()
		if err != nil {
			return
		}
	}
}

func (ra *readAhead) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	ra.mu.Lock()
	defer ra.mu.Unlock()
	for ra.n == 0 && ra.err == nil && !ra.closed {
		ra.cond.Wait()
	}
	if ra.n == 0 {
		if ra.closed {
			return 0, errors.New("read after close")
		}
		return 0, ra.err
	}
	total := 0
	for len(p) > 0 && ra.n > 0 {
		c := copy(p, ra.buf[ra.r:min(ra.r+ra.n, len(ra.buf))])
		ra.r = (ra.r + c) % len(ra.buf)
		ra.n -= c
		total += c
		p = p[c:]
	}
	ra.cond.Broadcast()
	return total, nil
}

func (ra *readAhead) Close() error {
	ra.mu.Lock()
	ra.closed = true
	ra.cond.Broadcast()
	ra.mu.Unlock()
	err := ra.body.Close()
	<-ra.done
	return err
}
