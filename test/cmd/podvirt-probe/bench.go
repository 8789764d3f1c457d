package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Bench pages, served by PROBE_HTTP_SERVE and by the benchmark's guests
// (busybox httpd on files of the same names and sizes).
const (
	benchSmallPage = "/index.html"
	benchBigPage   = "/big"
	// BenchBigBytes is the size of the big page: what a throughput
	// sample moves.
	benchBigBytes = 16 << 20
)

// serveBench serves the bench pages on addr until killed: the far end of
// a throughput and latency measurement that is a plain pod.
func serveBench(addr, host string) {
	big := make([]byte, benchBigBytes)
	mux := http.NewServeMux()
	mux.HandleFunc(benchSmallPage, func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintf(w, "hello from %s\n", host) })
	mux.HandleFunc(benchBigPage, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Length", strconv.Itoa(len(big)))
		_, _ = w.Write(big)
	})
	fmt.Printf("serving bench pages on %s\n", addr)
	srv := &http.Server{Addr: addr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.ListenAndServe(); err != nil {
		fmt.Printf("serve %s: %v\n", addr, err)
		os.Exit(1)
	}
}

// bench measures each base URL (http://host:port) in turn: the median time
// of `samples` GETs of the small page, each on a new connection (connect
// and one round trip), and the throughput of GETs of the big page (the
// median of `samples`/5, at least 3). It prints one line per URL:
//
//	bench URL latency_ms=M throughput_mbps=T
//
// and reports whether every request succeeded.
func bench(bases []string, samples int, within time.Duration) bool {
	c := &http.Client{Timeout: time.Minute, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	ok := true
	for _, base := range bases {
		// The far end may still be starting: wait for its first answer.
		if !get(base+benchSmallPage, within) {
			ok = false
			continue
		}
		latency, err := medianOf(samples, func() (float64, error) {
			start := time.Now()
			n, err := fetch(c, base+benchSmallPage)
			if err == nil && n == 0 {
				err = fmt.Errorf("empty page")
			}
			return float64(time.Since(start).Microseconds()) / 1000, err
		})
		if err != nil {
			fmt.Printf("bench %s: %v\n", base, err)
			ok = false
			continue
		}
		throughput, err := medianOf(max(samples/5, 3), func() (float64, error) {
			start := time.Now()
			n, err := fetch(c, base+benchBigPage)
			if err == nil && n != benchBigBytes {
				err = fmt.Errorf("%s: %d bytes, want %d", benchBigPage, n, benchBigBytes)
			}
			return float64(n) * 8 / 1e6 / time.Since(start).Seconds(), err
		})
		if err != nil {
			fmt.Printf("bench %s: %v\n", base, err)
			ok = false
			continue
		}
		fmt.Printf("bench %s latency_ms=%.3f throughput_mbps=%.1f\n", base, latency, throughput)
	}
	return ok
}

// fetch GETs url and returns how many body bytes came.
func fetch(c *http.Client, url string) (int64, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return io.Copy(io.Discard, resp.Body)
}

// medianOf runs sample n times and returns the median of its values.
func medianOf(n int, sample func() (float64, error)) (float64, error) {
	values := make([]float64, 0, n)
	for range n {
		v, err := sample()
		if err != nil {
			return 0, err
		}
		values = append(values, v)
	}
	slices.Sort(values)
	return values[len(values)/2], nil
}

// benchBases is PROBE_HTTP_BENCH's list of base URLs.
func benchBases(env string) []string {
	var out []string
	for _, f := range strings.Fields(env) {
		out = append(out, strings.TrimSuffix(f, "/"))
	}
	return out
}
