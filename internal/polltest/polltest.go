// Package polltest waits in tests on a condition, never on a bare sleep:
// Eventually polls until the condition holds, Consistently checks that it
// keeps holding. A failure says what was awaited and the condition's last
// word.
package polltest

import (
	"testing"
	"time"
)

// Interval is how often a condition is polled.
const Interval = 50 * time.Millisecond

// Eventually polls cond until it holds or timeout passes; then it fails
// the test with cond's last word.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		ok, last := cond()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting until %s: %s", timeout, what, last)
		}
		time.Sleep(Interval)
	}
}

// Until is Eventually for a condition with nothing to say.
func Until(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	Eventually(t, timeout, what, func() (bool, string) { return cond(), "not yet" })
}

// Consistently checks that cond holds, polling, for the whole of d; it
// fails the test the first time it does not.
func Consistently(t testing.TB, d time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if ok, msg := cond(); !ok {
			t.Fatalf("expected %s for %s: %s", what, d, msg)
		}
		time.Sleep(Interval)
	}
}
