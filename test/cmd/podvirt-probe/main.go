// Command podvirt-probe is the proof pod of the local cluster: it prints a
// marker, the pod's hostname and every network interface with its MAC and
// addresses, then exits 0. Tests read this through the pod's logs. With
// PROBE_CONNECT=host:port it also opens a TCP connection there and reports
// the outcome (a pod reaching a Service through kube-proxy, say).
package main

import (
	"fmt"
	"net"
	"os"
	"strings"
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
	if addr := os.Getenv("PROBE_CONNECT"); addr != "" {
		conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
		if err != nil {
			fmt.Printf("connect %s: %v\n", addr, err)
			os.Exit(1)
		}
		fmt.Printf("connect %s: ok from %s\n", addr, conn.LocalAddr())
		conn.Close()
	}
}
