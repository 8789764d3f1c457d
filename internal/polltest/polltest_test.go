package polltest

import (
	"testing"
	"time"
)

func TestEventually(t *testing.T) {
	n := 0
	Eventually(t, 5*time.Second, "the third call", func() (bool, string) {
		n++
		return n == 3, "not the third call"
	})
	if n != 3 {
		t.Errorf("cond called %d times, want 3", n)
	}
	start := time.Now()
	Until(t, 5*time.Second, "100ms passed", func() bool { return time.Since(start) > 100*time.Millisecond })
}

func TestConsistently(t *testing.T) {
	n := 0
	Consistently(t, 200*time.Millisecond, "the condition", func() (bool, string) {
		n++
		return true, ""
	})
	if n < 2 {
		t.Errorf("cond polled %d times in 200ms", n)
	}
}
