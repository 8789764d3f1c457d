// Package testlog passes what a component under test writes (progress
// lines, a child's log) into the test's own log, so it shows with the test
// that produced it.
package testlog

import (
	"io"
	"strings"
	"testing"
)

// Writer writes each Write as one line of t's log.
func Writer(t testing.TB) io.Writer { return writer{t} }

type writer struct{ t testing.TB }

func (w writer) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
