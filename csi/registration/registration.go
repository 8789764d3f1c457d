// Package registration announces the CSI driver to the kubelet through the
// plugin-registration API (k8s.io/kubelet pluginregistration/v1), the job
// node-driver-registrar does elsewhere: the kubelet's plugin watcher finds
// the socket in its plugins_registry directory, asks GetInfo for the
// driver's name and CSI endpoint, and reports the outcome.
package registration

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"

	"google.golang.org/grpc"
	registerapi "k8s.io/kubelet/pkg/apis/pluginregistration/v1"
)

// SupportedVersions are the CSI versions announced to the kubelet.
var SupportedVersions = []string{"1.0.0"}

// Server answers the kubelet's registration calls.
type Server struct {
	registerapi.UnimplementedRegistrationServer

	driver, endpoint string
	log              *slog.Logger
	grpc             *grpc.Server
	lis              net.Listener
	path             string

	mu sync.Mutex
	// status is the kubelet's last answer; nil before it gave one.
	status *registerapi.RegistrationStatus
	// registered is closed on the first successful registration.
	registered chan struct{}
}

// Listen opens the registration socket at socketPath (replacing a stale
// one) for driver, whose CSI socket the kubelet reaches at endpoint.
func Listen(socketPath, driver, endpoint string, log *slog.Logger) (*Server, error) {
	if log == nil {
		log = slog.Default()
	}
	if err := os.MkdirAll(filepath.Dir(socketPath), 0o750); err != nil {
		return nil, fmt.Errorf("registration socket: %w", err)
	}
	if err := os.Remove(socketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("registration socket: remove stale %s: %w", socketPath, err)
	}
	lis, err := net.Listen("unix", socketPath)
	if err != nil {
		return nil, fmt.Errorf("registration socket: %w", err)
	}
	s := &Server{driver: driver, endpoint: endpoint, log: log, lis: lis, path: socketPath, registered: make(chan struct{})}
	s.grpc = grpc.NewServer()
	registerapi.RegisterRegistrationServer(s.grpc, s)
	return s, nil
}

// Serve answers calls until Stop.
func (s *Server) Serve() error {
	if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Stop stops serving and removes the socket, so the kubelet deregisters
// the driver.
func (s *Server) Stop() {
	s.grpc.Stop()
	_ = os.Remove(s.path)
}

// GetInfo tells the kubelet the driver's name and CSI endpoint.
func (s *Server) GetInfo(ctx context.Context, _ *registerapi.InfoRequest) (*registerapi.PluginInfo, error) {
	s.log.Info("kubelet asks for plugin info", "driver", s.driver, "endpoint", s.endpoint)
	return &registerapi.PluginInfo{
		Type:              registerapi.CSIPlugin,
		Name:              s.driver,
		Endpoint:          s.endpoint,
		SupportedVersions: SupportedVersions,
	}, nil
}

// NotifyRegistrationStatus receives the kubelet's verdict.
func (s *Server) NotifyRegistrationStatus(ctx context.Context, st *registerapi.RegistrationStatus) (*registerapi.RegistrationStatusResponse, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.status = st
	if st.PluginRegistered {
		s.log.Info("kubelet registered the driver", "driver", s.driver)
		select {
		case <-s.registered:
		default:
			close(s.registered)
		}
	} else {
		s.log.Error("kubelet refused the driver: check --kubelet-endpoint (the CSI socket as the kubelet sees it)", "driver", s.driver, "endpoint", s.endpoint, "err", st.Error)
	}
	return &registerapi.RegistrationStatusResponse{}, nil
}

// Status is the kubelet's last answer: registered, or the error it gave;
// ok is false before the kubelet answered.
func (s *Server) Status() (registered bool, kubeletError string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.status == nil {
		return false, "", false
	}
	return s.status.PluginRegistered, s.status.Error, true
}

// Registered is closed once the kubelet registered the driver.
func (s *Server) Registered() <-chan struct{} { return s.registered }
