package launcher

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/netlinksafe"
	"github.com/containernetworking/plugins/pkg/ns"
	"github.com/vishvananda/netlink"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/converter"
	"github.com/podvirt/podvirt/test/harness/netnstest"
	"github.com/podvirt/podvirt/test/images/guest"
)

// Addresses of the stand-in pod network: the pod's eth0 and, in another
// namespace, a client on the same link (a node, a Service's backend path).
const (
	podIP    = "10.98.0.2"
	clientIP = "10.98.0.1"
	guestWeb = 8080
)

// TestPodNetworkPortForward boots the test guest with a NIC on the pod
// network (passt) serving HTTP on two ports, in a pod namespace whose eth0
// has the pod's address, and fetches pages from another namespace at the
// pod's address: what a Service in front of the VM does. With ports listed
// only those are forwarded. With none, every port is where the process may
// open that many sockets, else none (and the launcher says so).
func TestPodNetworkPortForward(t *testing.T) {
	if _, err := exec.LookPath(converter.UserNetPasst); err != nil {
		t.Fatal("passt is not installed: run `make deps` (Debian package passt)")
	}
	allPorts := raiseOpenFiles(allPortsFiles) == nil
	t.Logf("open-file limit allows forwarding every port: %v", allPorts)
	for _, c := range []struct {
		name          string
		ports         []v1.Port
		first, second bool // whether guestWeb and guestWeb+1 answer
	}{
		{"listed", []v1.Port{{Name: "web", Port: guestWeb}}, true, false},
		{"all", nil, allPorts, allPorts},
	} {
		t.Run(c.name, func(t *testing.T) {
			pod, client := netnstest.New(t), netnstest.New(t)
			linkPodNetwork(t, pod, client)
			d := startDaemonIn(t, pod)
			vmi := podNetVMI(t, c.ports)
			socket, warning := passtIn(t, pod, vmi)
			// The launcher's warning (a Degraded event on the VMI) when
			// it cannot forward what the VMI asks.
			if forwardsNone := c.ports == nil && !allPorts; forwardsNone != strings.Contains(warning, "forwards no port") {
				t.Errorf("passt's warning %q; want one saying it forwards no port: %v", warning, forwardsNone)
			}
			vm := podNetVM(t, vmi, socket)
			startVM(t, d, vm)

			// The guest started both servers before it printed the
			// cloud-init marker, and has its address once it printed the
			// IP marker.
			ctx, cancel := context.WithTimeout(context.Background(), bootLimit)
			defer cancel()
			for {
				b, _ := os.ReadFile(vm.console)
				if bytes.Contains(b, []byte(guest.CloudInitMarker)) && bytes.Contains(b, []byte(guest.IPMarker)) {
					break
				}
				select {
				case <-ctx.Done():
					t.Fatalf("the guest did not run its user-data and take an address; console:\n%s", guest.Tail(b, 2000))
				case <-time.After(200 * time.Millisecond):
				}
			}
			for port, want := range map[int]bool{guestWeb: c.first, guestWeb + 1: c.second} {
				url := fmt.Sprintf("http://%s:%d/index.html", podIP, port)
				// passt may take a moment to reach the guest's new address.
				var body string
				var err error
				for range 20 {
					if body, err = fetchIn(client, url); err == nil {
						break
					}
					time.Sleep(250 * time.Millisecond)
				}
				if answered := err == nil && strings.Contains(body, "hello from the guest"); answered != want {
					t.Errorf("GET %s (ports %v): answered %v (%q, %v), want %v", url, c.ports, answered, body, err, want)
				}
			}
		})
	}
}

// passtIn starts passt for vmi in pod, with a run dir like the pod's
// emptyDir, and returns its socket and warning.
func passtIn(t *testing.T, pod ns.NetNS, vmi *v1.VirtualMachineInstance) (socket, warning string) {
	t.Helper()
	// As the pod's emptyDir: passt, running as nobody, reaches its socket.
	runDir, err := os.MkdirTemp("", "podvirt-podnet-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(runDir) })
	if err := os.Chmod(runDir, 0o711); err != nil {
		t.Fatal(err)
	}
	err = pod.Do(func(ns.NetNS) error {
		var err error
		socket, warning, err = startPasst(vmi, runDir)
		return err
	})
	if err != nil || socket == "" {
		t.Fatalf("passt: %q, %v", socket, err)
	}
	return socket, warning
}

// linkPodNetwork gives pod an eth0 with podIP and a default route through
// clientIP, the other end of a veth in client.
func linkPodNetwork(t *testing.T, pod, client ns.NetNS) {
	t.Helper()
	err := pod.Do(func(ns.NetNS) error {
		attrs := netlink.NewLinkAttrs()
		attrs.Name = "eth0"
		if err := netlink.LinkAdd(&netlink.Veth{LinkAttrs: attrs, PeerName: "client0"}); err != nil {
			return err
		}
		peer, err := netlinksafe.LinkByName("client0")
		if err != nil {
			return err
		}
		if err := netlink.LinkSetNsFd(peer, int(client.Fd())); err != nil {
			return err
		}
		return setUp("eth0", podIP, clientIP)
	})
	if err == nil {
		err = client.Do(func(ns.NetNS) error { return setUp("client0", clientIP, "") })
	}
	if err != nil {
		t.Fatalf("pod network veth: %v", err)
	}
}

// setUp brings link up with addr/24 (and lo), routing by gw when given.
func setUp(link, addr, gw string) error {
	for _, name := range []string{"lo", link} {
		l, err := netlinksafe.LinkByName(name)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetUp(l); err != nil {
			return err
		}
		if name == "lo" {
			continue
		}
		a, _ := netlink.ParseAddr(addr + "/24")
		if err := netlink.AddrAdd(l, a); err != nil {
			return err
		}
		if gw != "" {
			if err := netlink.RouteAdd(&netlink.Route{LinkIndex: l.Attrs().Index, Gw: net.ParseIP(gw)}); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetchIn GETs url from inside netns n: the connection is dialled on a
// thread in n (http.Transport would dial from another goroutine, outside).
func fetchIn(n ns.NetNS, url string) (string, error) {
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		var c net.Conn
		err := n.Do(func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, addr)
			return err
		})
		return c, err
	}
	c := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{DialContext: dial, DisableKeepAlives: true, Proxy: nil}}
	resp, err := c.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("%s (server %q): %s", resp.Status, resp.Header.Get("Server"), b)
	}
	return string(b), err
}

// podNetVMI is the test guest with one NIC on the pod network forwarding
// ports, whose user-data serves HTTP on guestWeb+1, then guestWeb.
func podNetVMI(t *testing.T, ports []v1.Port) *v1.VirtualMachineInstance {
	web := fmt.Sprintf("#!/bin/sh\necho 'hello from the guest' > /tmp/index.html\nhttpd -p %d -h /tmp\nhttpd -p %d -h /tmp\n", guestWeb+1, guestWeb)
	return &v1.VirtualMachineInstance{
		ObjectMeta: metav1.ObjectMeta{Name: "podnet", Namespace: "test", UID: types.UID(newUID(t))},
		Spec: v1.VirtualMachineInstanceSpec{
			Domain: v1.DomainSpec{
				Memory: v1.Memory{Guest: resource.MustParse("256Mi")},
				Devices: v1.Devices{
					Disks:      []v1.Disk{{Name: "root"}, {Name: "ci"}},
					Interfaces: []v1.Interface{{Name: "default", Ports: ports}},
				},
			},
			Volumes: []v1.Volume{
				{Name: "root", VolumeSource: v1.VolumeSource{ContainerDisk: &v1.ContainerDiskSource{Image: "podvirt.local/test-guest:1"}}},
				{Name: "ci", VolumeSource: v1.VolumeSource{CloudInitNoCloud: &v1.CloudInitNoCloudSource{UserData: web}}},
			},
			Networks: []v1.Network{{Name: "default", NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}},
		},
	}
}

// podNetVM renders vmi on an overlay of the test guest, its pod network NIC
// on the passt socket.
func podNetVM(t *testing.T, vmi *v1.VirtualMachineInstance, socket string) *testVM {
	t.Helper()
	dir, overlay := guestOverlay(t)
	return renderTestVM(t, vmi, dir, overlay, converter.Options{PasstSocket: socket})
}
