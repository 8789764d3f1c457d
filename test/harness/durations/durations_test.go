package durations

import (
	"testing"
	"time"
)

func TestMedian(t *testing.T) {
	s := time.Second
	for _, tt := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{3 * s}, 3 * s},
		{[]time.Duration{5 * s, 1 * s, 3 * s}, 3 * s},
		{[]time.Duration{4 * s, 1 * s, 2 * s, 3 * s}, 2500 * time.Millisecond},
	} {
		in := append([]time.Duration(nil), tt.in...)
		if got := Median(tt.in); got != tt.want {
			t.Errorf("Median(%v) = %v, want %v", tt.in, got, tt.want)
		}
		for i := range in {
			if in[i] != tt.in[i] {
				t.Fatalf("Median reordered its input: %v, was %v", tt.in, in)
			}
		}
	}
}

func TestRounded(t *testing.T) {
	got := Rounded([]time.Duration{1500 * time.Microsecond, 2 * time.Second})
	if got[0] != 2*time.Millisecond || got[1] != 2*time.Second {
		t.Fatalf("Rounded = %v", got)
	}
}
