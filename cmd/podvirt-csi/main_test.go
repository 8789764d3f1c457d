package main

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"

	"github.com/podvirt/podvirt/test/harness/apiserver"
)

// TestRun starts the driver with the chart's flags against a real API
// server, then talks to it as the sidecars, the kubelet's plugin watcher and
// Prometheus do, and stops it.
func TestRun(t *testing.T) {
	srv, err := apiserver.Start(apiserver.Options{})
	if err != nil {
		t.Fatalf("API server: %v (run 'make deps')", err)
	}
	t.Cleanup(func() { srv.Stop() })
	dir, err := os.MkdirTemp("", "pvcsi-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	kubeconfig := filepath.Join(dir, "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["test"] = &clientcmdapi.Cluster{Server: srv.Config.Host, CertificateAuthorityData: srv.Config.CAData}
	cfg.AuthInfos["test"] = &clientcmdapi.AuthInfo{ClientCertificateData: srv.Config.CertData, ClientKeyData: srv.Config.KeyData, Token: srv.Config.BearerToken}
	cfg.Contexts["test"] = &clientcmdapi.Context{Cluster: "test", AuthInfo: "test"}
	cfg.CurrentContext = "test"
	if err := clientcmd.WriteToFile(*cfg, kubeconfig); err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsAddr := lis.Addr().String()
	lis.Close()

	csiSock := filepath.Join(dir, "csi.sock")
	regSock := filepath.Join(dir, "reg", "disk.podvirt.io-reg.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{
			"--endpoint", "unix://" + csiSock,
			"--node-id", "node-a",
			"--state-dir", filepath.Join(dir, "state"),
			"--cache-size", "1Gi",
			"--registration-socket", regSock,
			"--kubelet-endpoint", "/var/lib/kubelet/plugins/disk.podvirt.io/csi.sock",
			"--metrics-address", metricsAddr,
			"--kubeconfig", kubeconfig,
		})
	}()
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, err1 := os.Stat(csiSock)
		_, err2 := os.Stat(regSock)
		if err1 == nil && err2 == nil {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("podvirt-csi exited: %v", err)
		default:
		}
		if time.Now().After(deadline) {
			t.Fatal("podvirt-csi did not open its sockets within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	rctx, rcancel := context.WithTimeout(ctx, 30*time.Second)
	defer rcancel()
	conn, err := grpc.NewClient("unix://"+csiSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	info, err := csi.NewIdentityClient(conn).GetPluginInfo(rctx, &csi.GetPluginInfoRequest{})
	if err != nil || info.Name != "disk.podvirt.io" {
		t.Fatalf("GetPluginInfo = %v, %v", info, err)
	}
	node, err := csi.NewNodeClient(conn).NodeGetInfo(rctx, &csi.NodeGetInfoRequest{})
	if err != nil || node.NodeId != "node-a" || node.AccessibleTopology.Segments["topology.disk.podvirt.io/node"] != "node-a" {
		t.Fatalf("NodeGetInfo = %v, %v", node, err)
	}

	rconn, err := grpc.NewClient("unix://"+regSock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer rconn.Close()
	pi, err := registerapi.NewRegistrationClient(rconn).GetInfo(rctx, &registerapi.InfoRequest{})
	if err != nil || pi.Type != registerapi.CSIPlugin || pi.Endpoint != "/var/lib/kubelet/plugins/disk.podvirt.io/csi.sock" {
		t.Fatalf("registration GetInfo = %v, %v", pi, err)
	}

	resp, err := http.Get("http://" + metricsAddr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	for _, want := range []string{`podvirt_csi_operations_total{code="OK",method="NodeGetInfo"} 1`, "process_cpu_seconds_total"} {
		if !strings.Contains(string(body), want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("podvirt-csi: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("podvirt-csi did not stop within 30s")
	}
	for _, s := range []string{csiSock, regSock} {
		if _, err := os.Stat(s); !os.IsNotExist(err) {
			t.Errorf("socket %s left after stop: %v", s, err)
		}
	}
}

func TestRunRefusesBadFlags(t *testing.T) {
	err := run(context.Background(), []string{"--cache-size", "lots", "--node-id", "n"})
	if err == nil || !strings.Contains(err.Error(), "--cache-size") {
		t.Errorf("run with --cache-size lots: %v", err)
	}
	err = run(context.Background(), []string{"--node-id", "n", "--pod-cidrs", "10.244.0.0"})
	if err == nil || !strings.Contains(err.Error(), "--pod-cidrs") {
		t.Errorf("run with --pod-cidrs 10.244.0.0: %v, want it to name --pod-cidrs", err)
	}
	err = run(context.Background(), []string{"--node-id", "n", "--state-dir", t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "--kubeconfig") {
		t.Errorf("run outside a pod without --kubeconfig: %v, want it to name --kubeconfig", err)
	}
}
