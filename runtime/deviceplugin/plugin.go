package deviceplugin

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	pluginapi "k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1"
)

// plugin serves one resource's DevicePlugin service on its own socket.
type plugin struct {
	pluginapi.UnimplementedDevicePluginServer

	res    resource
	socket string // full path
	log    logr.Logger

	healthMu sync.Mutex
	healthy  bool
	// healthChanged is closed and replaced whenever healthy flips, waking
	// every ListAndWatch stream.
	healthChanged chan struct{}

	server *grpc.Server
	done   chan struct{} // closed by stop: ends ListAndWatch streams
}

func newPlugin(res resource, pluginDir string, log logr.Logger) *plugin {
	p := &plugin{
		res:           res,
		socket:        filepath.Join(pluginDir, res.socketName()),
		log:           log.WithValues("resource", res.name),
		healthChanged: make(chan struct{}),
		done:          make(chan struct{}),
	}
	p.checkHealth(true)
	return p
}

// checkHealth runs the resource's check, records the result and wakes the
// ListAndWatch streams when it changed (or logs it when first is true).
func (p *plugin) checkHealth(first bool) {
	err := p.res.check()
	healthy := err == nil
	p.healthMu.Lock()
	changed := !first && healthy != p.healthy
	p.healthy = healthy
	if changed {
		close(p.healthChanged)
		p.healthChanged = make(chan struct{})
	}
	p.healthMu.Unlock()
	if first || changed {
		if healthy {
			p.log.Info("devices healthy", "device", p.res.hostPath)
		} else {
			p.log.Info("devices unhealthy", "device", p.res.hostPath, "reason", err.Error())
		}
	}
}

// start listens on the plugin's socket (replacing a stale one) and serves.
func (p *plugin) start() error {
	if err := os.Remove(p.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing stale device plugin socket %s: %w", p.socket, err)
	}
	lis, err := net.Listen("unix", p.socket)
	if err != nil {
		return fmt.Errorf("listening on device plugin socket %s: %w", p.socket, err)
	}
	p.server = grpc.NewServer()
	pluginapi.RegisterDevicePluginServer(p.server, p)
	go func() {
		if err := p.server.Serve(lis); err != nil {
			p.log.Error(err, "device plugin server stopped", "socket", p.socket)
		}
	}()
	return nil
}

// stop ends the streams, stops the server and removes the socket (unless
// someone — a restarting kubelet — already did).
func (p *plugin) stop() {
	close(p.done)
	if p.server != nil {
		p.server.Stop()
	}
	if err := os.Remove(p.socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Error(err, "removing device plugin socket", "socket", p.socket)
	}
}

// register tells the kubelet at kubeletSocket about this plugin.
func (p *plugin) register(ctx context.Context, kubeletSocket string) error {
	conn, err := grpc.NewClient("unix://"+kubeletSocket, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return fmt.Errorf("connecting to the kubelet at %s: %w", kubeletSocket, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	_, err = pluginapi.NewRegistrationClient(conn).Register(ctx, &pluginapi.RegisterRequest{
		Version:      pluginapi.Version,
		Endpoint:     filepath.Base(p.socket),
		ResourceName: p.res.name,
		Options:      &pluginapi.DevicePluginOptions{},
	})
	if err != nil {
		return fmt.Errorf("registering %s with the kubelet at %s: %w", p.res.name, kubeletSocket, err)
	}
	return nil
}

func (p *plugin) devices() ([]*pluginapi.Device, chan struct{}) {
	p.healthMu.Lock()
	healthy, changed := p.healthy, p.healthChanged
	p.healthMu.Unlock()
	health := pluginapi.Unhealthy
	if healthy {
		health = pluginapi.Healthy
	}
	ids := p.res.deviceIDs()
	devs := make([]*pluginapi.Device, len(ids))
	for i, id := range ids {
		devs[i] = &pluginapi.Device{ID: id, Health: health}
	}
	return devs, changed
}

// GetDevicePluginOptions: no PreStartContainer, no preferred allocation.
func (p *plugin) GetDevicePluginOptions(context.Context, *pluginapi.Empty) (*pluginapi.DevicePluginOptions, error) {
	return &pluginapi.DevicePluginOptions{}, nil
}

// ListAndWatch sends the devices, then again whenever their health changes.
func (p *plugin) ListAndWatch(_ *pluginapi.Empty, stream grpc.ServerStreamingServer[pluginapi.ListAndWatchResponse]) error {
	for {
		devs, changed := p.devices()
		if err := stream.Send(&pluginapi.ListAndWatchResponse{Devices: devs}); err != nil {
			return err
		}
		select {
		case <-changed:
		case <-p.done:
			return nil
		case <-stream.Context().Done():
			return nil
		}
	}
}

// Allocate gives each container the device node, read-write, with mknod
// allowed: libvirt makes a private /dev for QEMU and creates the nodes it
// needs there.
func (p *plugin) Allocate(_ context.Context, req *pluginapi.AllocateRequest) (*pluginapi.AllocateResponse, error) {
	if err := p.res.check(); err != nil {
		return nil, status.Errorf(codes.FailedPrecondition, "allocating %s: %v", p.res.name, err)
	}
	resp := &pluginapi.AllocateResponse{}
	for range req.ContainerRequests {
		resp.ContainerResponses = append(resp.ContainerResponses, &pluginapi.ContainerAllocateResponse{
			Devices: []*pluginapi.DeviceSpec{{
				ContainerPath: p.res.hostPath,
				HostPath:      p.res.hostPath,
				Permissions:   "rwm",
			}},
		})
	}
	return resp, nil
}

// GetPreferredAllocation is not offered (GetDevicePluginOptions), but
// answers with no preference if asked.
func (p *plugin) GetPreferredAllocation(context.Context, *pluginapi.PreferredAllocationRequest) (*pluginapi.PreferredAllocationResponse, error) {
	return &pluginapi.PreferredAllocationResponse{}, nil
}

// PreStartContainer is not required (GetDevicePluginOptions): nothing to do.
func (p *plugin) PreStartContainer(context.Context, *pluginapi.PreStartContainerRequest) (*pluginapi.PreStartContainerResponse, error) {
	return &pluginapi.PreStartContainerResponse{}, nil
}
