// Command podvirt-probe is the proof pod of the local cluster: it prints a
// marker, the pod's hostname and every network interface with its MAC and
// addresses, then exits 0. Tests read this through the pod's logs. With
// PROBE_CONNECT=host:port it also opens a TCP connection there and reports
// the outcome (a pod reaching a Service through kube-proxy, say), trying
// again for up to PROBE_CONNECT_WITHIN (a Go duration; default once). With
// PROBE_DEVICES=/dev/a,/dev/b it reports, for each, whether it is a device
// node and opens read-write (a device plugin's allocation, say). With
// PROBE_LISTEN=:port it then serves TCP there until killed, greeting each
// connection with its hostname (the far end of a connectivity check).
// With PROBE_HTTP_GET="URL ..." it fetches each (again every second for up
// to PROBE_CONNECT_WITHIN) and prints its status and first line.
// With PROBE_RESOLVE="NAME ..." it prints the pod's nameservers and looks
// each name up (an IP address: its PTR names), again every second for up
// to PROBE_CONNECT_WITHIN, printing the addresses; with PROBE_UNRESOLVABLE
// ="NAME ..." it looks each up once and prints the error and how long the
// answer took (a name the cluster's DNS must refuse, fast). Either exits 1
// when a name does not behave so. They run before PROBE_CONNECT, which
// may then name a Service.
// With PROBE_CONNECT and PROBE_CONNECT_EVERY (a Go duration) it instead
// connects that often for PROBE_CONNECT_FOR and prints how many attempts
// failed and the longest time without a connection (reachability during a
// live migration, say).
// With PROBE_HTTP_BENCH="http://HOST:PORT ..." it measures each server's
// latency and throughput (bench.go; PROBE_BENCH_SAMPLES, default 30);
// with PROBE_HTTP_SERVE=:port it serves the pages that measures, until
// killed.
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Marker starts the probe's first line; tests look for it.
const Marker = "podvirt-probe: hello"

func main() {
	host, _ := os.Hostname()
	fmt.Printf("%s from %s\n", Marker, host)
	ifaces, err := net.Interfaces()
	if err != nil {
		fmt.Fprintf(os.Stderr, "podvirt-probe: list interfaces: %v\n", err)
		os.Exit(1)
	}
	for _, iface := range ifaces {
		addrs, _ := iface.Addrs()
		var list []string
		for _, a := range addrs {
			list = append(list, a.String())
		}
		fmt.Printf("iface %s mac=%s addrs=%s\n", iface.Name, iface.HardwareAddr, strings.Join(list, ","))
	}
	for _, dev := range strings.Split(os.Getenv("PROBE_DEVICES"), ",") {
		if dev != "" {
			fmt.Printf("device %s: %s\n", dev, deviceReport(dev))
		}
	}
	if names, bad := os.Getenv("PROBE_RESOLVE"), os.Getenv("PROBE_UNRESOLVABLE"); names != "" || bad != "" {
		within, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_WITHIN"))
		if !resolveAll(strings.Fields(names), strings.Fields(bad), within) {
			os.Exit(1)
		}
	}
	if every, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_EVERY")); every > 0 {
		span, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_FOR"))
		watch(os.Getenv("PROBE_CONNECT"), every, span)
		return
	}
	if addr := os.Getenv("PROBE_CONNECT"); addr != "" {
		within, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_WITHIN"))
		conn, err := connect(addr, within)
		if err != nil {
			fmt.Printf("connect %s: %v\n", addr, err)
			os.Exit(1)
		}
		fmt.Printf("connect %s: ok from %s\n", addr, conn.LocalAddr())
		conn.Close()
	}
	if urls := os.Getenv("PROBE_HTTP_GET"); urls != "" {
		within, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_WITHIN"))
		failed := false
		for _, u := range strings.Fields(urls) {
			failed = !get(u, within) || failed
		}
		if failed {
			os.Exit(1)
		}
	}
	if bases := benchBases(os.Getenv("PROBE_HTTP_BENCH")); len(bases) > 0 {
		samples, err := strconv.Atoi(os.Getenv("PROBE_BENCH_SAMPLES"))
		if err != nil || samples < 1 {
			samples = 30
		}
		within, _ := time.ParseDuration(os.Getenv("PROBE_CONNECT_WITHIN"))
		if !bench(bases, samples, within) {
			os.Exit(1)
		}
	}
	if addr := os.Getenv("PROBE_HTTP_SERVE"); addr != "" {
		serveBench(addr, host)
	}
	if addr := os.Getenv("PROBE_LISTEN"); addr != "" {
		serve(addr, host)
	}
}

// get fetches url, again every second until it answers 200 or within has
// passed, and prints the status and the body's first line.
func get(url string, within time.Duration) bool {
	c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}}
	deadline := time.Now().Add(within)
	for {
		resp, err := c.Get(url)
		if err == nil {
			b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
			resp.Body.Close()
			first, _, _ := strings.Cut(string(b), "\n")
			if resp.StatusCode == http.StatusOK || time.Now().After(deadline) {
				fmt.Printf("get %s: %s: %s\n", url, resp.Status, first)
				return resp.StatusCode == http.StatusOK
			}
			err = fmt.Errorf("%s", resp.Status)
		}
		if time.Now().After(deadline) {
			fmt.Printf("get %s: %v\n", url, err)
			return false
		}
		fmt.Printf("get %s: %v (trying again)\n", url, err)
		time.Sleep(time.Second)
	}
}

// resolveAll prints the nameservers of /etc/resolv.conf, then looks up
// each of names until it resolves or within has passed, and each of bad
// once; it reports whether every name resolved and every bad one failed.
func resolveAll(names, bad []string, within time.Duration) bool {
	if b, err := os.ReadFile("/etc/resolv.conf"); err == nil {
		for line := range strings.Lines(string(b)) {
			if f := strings.Fields(line); len(f) > 1 && (f[0] == "nameserver" || f[0] == "search") {
				fmt.Printf("resolv.conf %s\n", strings.Join(f, " "))
			}
		}
	}
	ok := true
	for _, name := range names {
		deadline := time.Now().Add(within)
		for {
			addrs, err := lookup(name)
			if err == nil {
				fmt.Printf("resolve %s: %s\n", name, strings.Join(addrs, ","))
				break
			}
			if time.Now().After(deadline) {
				fmt.Printf("resolve %s: %v\n", name, err)
				ok = false
				break
			}
			fmt.Printf("resolve %s: %v (trying again)\n", name, err)
			time.Sleep(time.Second)
		}
	}
	for _, name := range bad {
		start := time.Now()
		addrs, err := lookup(name)
		took := time.Since(start).Milliseconds()
		if err == nil {
			fmt.Printf("unresolvable %s: resolved to %s in %d ms\n", name, strings.Join(addrs, ","), took)
			ok = false
			continue
		}
		fmt.Printf("unresolvable %s: %v in %d ms\n", name, err, took)
	}
	return ok
}

// lookup resolves a name to its addresses, or an address to its names.
func lookup(name string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if net.ParseIP(name) != nil {
		return net.DefaultResolver.LookupAddr(ctx, name)
	}
	return net.DefaultResolver.LookupHost(ctx, name)
}

// connect dials addr, again every second until within has passed: a
// Service's forwarding rules may be made a moment after its endpoints.
func connect(addr string, within time.Duration) (net.Conn, error) {
	deadline := time.Now().Add(within)
	for {
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err == nil || time.Now().After(deadline) {
			return conn, err
		}
		fmt.Printf("connect %s: %v (trying again)\n", addr, err)
		time.Sleep(time.Second)
	}
}

// watch connects to addr every interval for span and prints a summary:
// attempts, failures, and the longest time between two connections.
func watch(addr string, every, span time.Duration) {
	start := time.Now()
	lastOK := time.Time{}
	var attempts, failed int
	var longest time.Duration
	tick := time.NewTicker(every)
	defer tick.Stop()
	for now := range tick.C {
		if now.Sub(start) > span {
			break
		}
		attempts++
		conn, err := net.DialTimeout("tcp", addr, every*20)
		if err != nil {
			failed++
			continue
		}
		conn.Close()
		if t := time.Now(); !lastOK.IsZero() && t.Sub(lastOK) > longest {
			longest = t.Sub(lastOK)
		}
		lastOK = time.Now()
	}
	if !lastOK.IsZero() && time.Since(lastOK) > longest {
		longest = time.Since(lastOK) // unreachable at the end
	}
	fmt.Printf("watch %s: attempts=%d failed=%d longest-gap-ms=%d last-ok-ago-ms=%d\n", addr, attempts, failed, longest.Milliseconds(), time.Since(lastOK).Milliseconds())
}

// serve greets every TCP connection on addr with host, forever.
func serve(addr, host string) {
	l, err := net.Listen("tcp", addr)
	if err != nil {
		fmt.Printf("listen %s: %v\n", addr, err)
		os.Exit(1)
	}
	fmt.Printf("listening on %s\n", l.Addr())
	for {
		conn, err := l.Accept()
		if err != nil {
			continue
		}
		fmt.Fprintf(conn, "hello from %s\n", host)
		conn.Close()
	}
}

// deviceReport says what path is ("char 10:200") and whether it opens
// read-write ("open rw ok"), or why not.
func deviceReport(path string) string {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil {
		return "missing: " + err.Error()
	}
	kind := "not a device"
	switch st.Mode & syscall.S_IFMT {
	case syscall.S_IFCHR:
		kind = "char"
	case syscall.S_IFBLK:
		kind = "block"
	}
	// Linux's encoding of a dev_t.
	major := (st.Rdev>>8)&0xfff | (st.Rdev>>32)&^0xfff
	minor := st.Rdev&0xff | (st.Rdev>>12)&^0xff
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return fmt.Sprintf("%s %d:%d open rw failed: %v", kind, major, minor, err)
	}
	f.Close()
	return fmt.Sprintf("%s %d:%d open rw ok", kind, major, minor)
}
