package registration

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// TestKubeletRegistration plays the kubelet's plugin watcher: it dials the
// socket the driver put in plugins_registry, asks GetInfo, and reports the
// outcome with NotifyRegistrationStatus.
func TestKubeletRegistration(t *testing.T) {
	dir, err := os.MkdirTemp("", "reg-") // short: unix socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "plugins_registry", "disk.podvirt.io-reg.sock")
	// A stale socket from a previous run is replaced.
	if err := os.MkdirAll(filepath.Dir(sock), 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(sock, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err := Listen(sock, "disk.podvirt.io", "/var/lib/kubelet/plugins/disk.podvirt.io/csi.sock", nil)
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- s.Serve() }()
	t.Cleanup(func() {
		s.Stop()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})

	conn, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	kubelet := registerapi.NewRegistrationClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := kubelet.GetInfo(ctx, &registerapi.InfoRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if info.Type != registerapi.CSIPlugin || info.Name != "disk.podvirt.io" || info.Endpoint != "/var/lib/kubelet/plugins/disk.podvirt.io/csi.sock" || !slices.Contains(info.SupportedVersions, "1.0.0") {
		t.Errorf("GetInfo = %+v", info)
	}
	if _, _, ok := s.Status(); ok {
		t.Error("status known before the kubelet answered")
	}

	// The kubelet refuses first (e.g. a wrong endpoint), then accepts.
	if _, err := kubelet.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: false, Error: "cannot dial"}); err != nil {
		t.Fatal(err)
	}
	if reg, msg, ok := s.Status(); !ok || reg || msg != "cannot dial" {
		t.Errorf("Status after refusal = %v, %q, %v", reg, msg, ok)
	}
	select {
	case <-s.Registered():
		t.Fatal("Registered closed after a refusal")
	default:
	}
	if _, err := kubelet.NotifyRegistrationStatus(ctx, &registerapi.RegistrationStatus{PluginRegistered: true}); err != nil {
		t.Fatal(err)
	}
	select {
	case <-s.Registered():
	case <-ctx.Done():
		t.Fatal("Registered not closed after the kubelet registered the driver")
	}
	if reg, _, _ := s.Status(); !reg {
		t.Error("Status does not say registered")
	}

	s.Stop()
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left after Stop (the kubelet would not deregister): %v", err)
	}
}
