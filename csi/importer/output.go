package importer

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"

	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// sparseWriter is where an import writes the disk: at increasing offsets of
// the partial file, leaving every all-zero block a hole, and never past its
// bound. What a source declares (sizes, a qcow2 header) is never trusted:
// the bound holds for every byte written, whatever the compression.
type sparseWriter struct {
	f     *os.File
	off   int64
	image string      // the source, for messages
	bound outputBound // on the bytes written
	// declared bounds the virtual size a qcow2 header may declare.
	declared outputBound
	space    *spaceGuard // nil: no reserve to keep

	headerChecked bool
	sinceCheck    int64 // bytes allocated since the space guard last looked
}

// holeBlock is the granularity of holes: the file systems' block size.
const holeBlock = 4096

var zeroBlock = make([]byte, holeBlock)

// spaceCheckEvery is how much an import may allocate between two looks at
// the node's free space: the most it can overshoot the reserve by.
const spaceCheckEvery = 64 << 20

func (w *sparseWriter) Write(p []byte) (int, error) {
	if w.bound.bytes > 0 && w.off+int64(len(p)) > w.bound.bytes {
		return 0, w.bound.exceeded(w.image)
	}
	n := 0
	for len(p) > 0 {
		// One run: blocks up to the first that differs in zero-ness from the first.
		c := min(len(p), holeBlock-int(w.off%holeBlock))
		zero := isZero(p[:c])
		for c < len(p) {
			next := min(len(p)-c, holeBlock)
			if isZero(p[c:c+next]) != zero {
				break
			}
			c += next
		}
		if !zero {
			if _, err := w.f.WriteAt(p[:c], w.off); err != nil {
				return n, err
			}
			w.sinceCheck += int64(c)
		}
		w.off += int64(c)
		n += c
		p = p[c:]
	}
	if !w.headerChecked && w.off >= image.HeaderSize {
		if err := w.checkHeader(); err != nil {
			return n, err
		}
	}
	if w.space != nil && w.sinceCheck >= spaceCheckEvery {
		w.sinceCheck = 0
		if err := w.space.check(0); err != nil {
			return n, err
		}
	}
	return n, nil
}

func isZero(b []byte) bool { return bytes.Equal(b, zeroBlock[:len(b)]) }

// checkHeader refuses a qcow2 whose header declares a virtual size past the
// bound as soon as the header is written, rather than after the download.
func (w *sparseWriter) checkHeader() error {
	w.headerChecked = true
	header := make([]byte, image.HeaderSize)
	n, err := w.f.ReadAt(header, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return err
	}
	h, err := image.ParseQCOW2Header(header[:n])
	if err != nil || w.declared.bytes <= 0 || h.Size <= uint64(w.declared.bytes) {
		return nil // not a qcow2, or within bounds: validation judges the rest
	}
	hint := w.declared.hint
	if w.declared.claim {
		hint = fmt.Sprintf("request at least %s for the claim (spec.resources.requests.storage), or use a smaller image", bytesize.Format(int64(h.Size)))
	}
	return w.declared.refusal(&image.Error{Reason: image.ReasonVirtualSize, File: w.image,
		Detail: fmt.Sprintf("its qcow2 header declares a virtual size of %s (%d bytes), larger than %s", bytesize.Format(int64(h.Size)), h.Size, w.declared.what),
		Hint:   hint})
}

// restart drops everything written: the disk streamed so far is no longer
// the image's (a later layer deleted or replaced it).
func (w *sparseWriter) restart() error {
	w.off, w.headerChecked = 0, false
	return w.f.Truncate(0)
}

// finish gives the file its full length (trailing zero blocks were skipped).
func (w *sparseWriter) finish() error { return w.f.Truncate(w.off) }

// outputBound is the most an import may write, and why.
type outputBound struct {
	bytes int64  // 0: unbounded
	what  string // e.g. "the 10.0 GiB its claim asks for"
	hint  string
	// retryable: the bound is the room left in the cache, which grows when
	// volumes let go of their bases.
	retryable bool
	claim     bool // the bound is the claim's size

}

// tighter returns the tighter of two bounds.
func (b outputBound) tighter(o outputBound) outputBound {
	if o.bytes > 0 && (b.bytes <= 0 || o.bytes < b.bytes) {
		return o
	}
	return b
}

func (b outputBound) exceeded(img string) error {
	err := &image.Error{Reason: image.ReasonOutputTooLarge, File: img,
		Detail: fmt.Sprintf("it unpacks to more than %s (%d bytes); the import stopped there and removed what it wrote", b.what, b.bytes),
		Hint:   b.hint}
	return b.refusal(err)
}

// refusal is err as this bound's kind of error.
func (b outputBound) refusal(err *image.Error) error {
	switch {
	case b.retryable:
		return &roomError{err}
	case b.claim:
		return &claimError{err}
	}
	return err
}

// claimError: the image is larger than its claim. Terminal for that claim only.
type claimError struct{ err *image.Error }

func (e *claimError) Error() string { return e.err.Error() }
func (e *claimError) Unwrap() error { return e.err }

// IsLargerThanClaim reports whether an import stopped because the image is larger than
// Source.MaxDiskSize: a larger claim of the same image may succeed.
func IsLargerThanClaim(err error) bool {
	var ce *claimError
	return errors.As(err, &ce)
}

// roomError is a bound that may grow: the cache's room. It is not terminal.
type roomError struct{ err *image.Error }

func (e *roomError) Error() string { return e.err.Error() + " (retrying)" }

// spaceGuard keeps an import from taking the node's file system below its
// reserve of free bytes, evicting unused bases first.
type spaceGuard struct {
	dir     string
	reserve int64
	evict   func(enough func() bool) // removes unused bases until enough() or none is left
}

// spaceError: the node's free space is below the reserve. It may heal, so it
// is not terminal, but the partial data goes (it holds the space).
type spaceError struct{ msg string }

func (e *spaceError) Error() string { return e.msg }

func (g *spaceGuard) free() (int64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(g.dir, &st); err != nil {
		return 0, fmt.Errorf("free space of %s: %w", g.dir, err)
	}
	return int64(st.Bavail) * st.Bsize, nil
}

// check makes sure need more bytes can be written and the reserve stays free.
func (g *spaceGuard) check(need int64) error {
	free, err := g.free()
	if err != nil {
		return err
	}
	if free-need >= g.reserve {
		return nil
	}
	g.evict(func() bool {
		free, err = g.free()
		return err != nil || free-need >= g.reserve
	})
	if err != nil {
		return err
	}
	if free-need >= g.reserve {
		return nil
	}
	what := "writing more"
	if need > 0 {
		what = fmt.Sprintf("writing its %s", bytesize.Format(need))
	}
	return &spaceError{fmt.Sprintf("the node's file system at %s has %s free; %s would leave less than the reserve of %s (--free-space-reserve), even with every unused cached image evicted: free space on the node or lower the reserve",
		g.dir, bytesize.Format(free), what, bytesize.Format(g.reserve))}
}
