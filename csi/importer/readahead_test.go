package importer

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"testing"
	"time"
)

// choppyReader hands out its data in reads of random sizes, then err.
type choppyReader struct {
	data []byte
	err  error
}

func (c *choppyReader) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, c.err
	}
	n := min(len(p), len(c.data), 1+mrand.IntN(40<<10))
	copy(p, c.data[:n])
	c.data = c.data[n:]
	return n, nil
}

func TestReadAheadDeliversEverythingThenTheError(t *testing.T) {
	data := make([]byte, 3<<20+12345)
	if _, err := rand.Read(data); err != nil {
		t.Fatal(err)
	}
	boom := errors.New("connection reset")
	for _, tc := range []struct {
		name string
		err  error
	}{{"eof", io.EOF}, {"error", boom}} {
		t.Run(tc.name, func(t *testing.T) {
			// A ring smaller than the data, so it wraps and the producer waits for room.
			ra := newReadAhead(io.NopCloser(&choppyReader{data: data, err: tc.err}), 256<<10)
			defer ra.Close()
			var got bytes.Buffer
			buf := make([]byte, 100<<10)
			var err error
			for err == nil {
				var n int
				n, err = ra.Read(buf[:1+mrand.IntN(len(buf))])
				got.Write(buf[:n])
			}
			if !errors.Is(err, tc.err) {
				t.Fatalf("read error %v, want %v", err, tc.err)
			}
			if !bytes.Equal(got.Bytes(), data) {
				t.Fatalf("read %d bytes that differ from the %d sent", got.Len(), len(data))
			}
		})
	}
}

// TestReadAheadCloseStopsTheReader: Close returns once the body's Read has ended, and
// nothing reads the body after that.
func TestReadAheadCloseStopsTheReader(t *testing.T) {
	pr, pw := io.Pipe()
	ra := newReadAhead(pr, 64<<10)
	if _, err := pw.Write([]byte("some bytes")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 64)
	if n, err := ra.Read(buf); err != nil || string(buf[:n]) != "some bytes" {
		t.Fatalf("Read = %q, %v", buf[:n], err)
	}
	closed := make(chan struct{})
	go func() {
		ra.Close() // closing the pipe's reader ends the pending Read
		close(closed)
	}()
	select {
	case <-closed:
	case <-time.After(10 * time.Second):
		t.Fatal("Close did not return while the body's Read was pending")
	}
	if _, err := pw.Write([]byte("more")); !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("the body is still being read after Close: write = %v", err)
	}
	if _, err := ra.Read(buf); err == nil {
		t.Fatal("Read after Close succeeded")
	}
}
