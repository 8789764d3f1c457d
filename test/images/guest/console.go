package guest

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"time"
)

// WaitForOutput polls the console log at path from byte offset from on
// until it holds marker, and returns the offset just past the marker. It
// gives up when ctx ends, with the log's tail in the error.
func WaitForOutput(ctx context.Context, path string, from int64, marker string) (int64, error) {
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		b, _ := os.ReadFile(path)
		if int64(len(b)) > from {
			if i := bytes.Index(b[from:], []byte(marker)); i >= 0 {
				return from + int64(i+len(marker)), nil
			}
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("waiting for %q on console %s: %w; console tail:\n%s", marker, path, ctx.Err(), Tail(b, 1500))
		case <-tick.C:
		}
	}
}

// Tail returns at most the last n bytes of b.
func Tail(b []byte, n int) string {
	if len(b) > n {
		b = b[len(b)-n:]
	}
	return string(b)
}
