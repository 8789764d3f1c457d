package driver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"
)

// Server serves a Driver's CSI services on a unix socket.
type Server struct {
	grpc *grpc.Server
	lis  net.Listener
	path string
}

// ParseEndpoint turns unix:///csi/csi.sock (or a plain path) into a socket
// path.
func ParseEndpoint(endpoint string) (string, error) {
	if !strings.Contains(endpoint, "://") {
		return endpoint, nil
	}
	u, err := url.Parse(endpoint)
	if err != nil || u.Scheme != "unix" {
		return "", fmt.Errorf("CSI endpoint %q: use unix:///path/to/csi.sock", endpoint)
	}
	p := u.Path
	if u.Host != "" { // unix://relative/path
		p = path.Join(u.Host, u.Path)
	}
	return p, nil
}

// Listen opens the CSI socket at endpoint, replacing a stale one, and
// registers the services. reg, when set, receives operation metrics.
func (d *Driver) Listen(endpoint string, reg prometheus.Registerer) (*Server, error) {
	p, err := ParseEndpoint(endpoint)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(p), 0o750); err != nil {
		return nil, fmt.Errorf("CSI endpoint: %w", err)
	}
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("CSI endpoint: remove stale socket: %w", err)
	}
	lis, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("CSI endpoint: %w", err)
	}
	m := newMetrics(reg)
	g := grpc.NewServer(grpc.UnaryInterceptor(func(ctx context.Context, req any, info *grpc.UnaryServerInfo, h grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := h(ctx, req)
		method := path.Base(info.FullMethod)
		code := status.Code(err)
		m.ops.WithLabelValues(method, code.String()).Inc()
		m.duration.WithLabelValues(method).Observe(time.Since(start).Seconds())
		if err != nil {
			d.log.Warn("CSI call failed", "method", method, "code", code.String(), "err", status.Convert(err).Message())
		} else if !strings.HasPrefix(method, "Probe") && !strings.HasPrefix(method, "Get") && !strings.HasSuffix(method, "GetCapabilities") {
			d.log.Debug("CSI call", "method", method, "took", time.Since(start))
		}
		return resp, err
	}))
	csi.RegisterIdentityServer(g, d)
	csi.RegisterControllerServer(g, d)
	csi.RegisterNodeServer(g, d)
	return &Server{grpc: g, lis: lis, path: p}, nil
}

// Serve answers calls until Stop.
func (s *Server) Serve() error {
	if err := s.grpc.Serve(s.lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
		return err
	}
	return nil
}

// Stop stops serving and removes the socket.
func (s *Server) Stop() {
	s.grpc.Stop()
	_ = os.Remove(s.path)
}

type metrics struct {
	ops      *prometheus.CounterVec
	duration *prometheus.HistogramVec
}

func newMetrics(reg prometheus.Registerer) metrics {
	m := metrics{
		ops: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "podvirt_csi_operations_total",
			Help: "CSI calls answered by the disk.podvirt.io driver, by method and gRPC code.",
		}, []string{"method", "code"}),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name:    "podvirt_csi_operation_duration_seconds",
			Help:    "Time the disk.podvirt.io driver took to answer CSI calls, by method.",
			Buckets: prometheus.ExponentialBuckets(0.001, 4, 10),
		}, []string{"method"}),
	}
	if reg != nil {
		reg.MustRegister(m.ops, m.duration)
	}
	return m
}
