// Package cmdclient connects to a launcher's command socket: the client
// side of contracts/launchercmd. It has no cgo dependencies, so the node daemon
// builds as a static binary.
package cmdclient

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// Dial connects to the command socket at path. The path may be longer
// than a unix socket address allows (108 bytes), as it is where the node
// sees a pod's emptyDir (/var/lib/kubelet/pods/<uid>/volumes/...): the
// socket is reached through its open directory.
func Dial(path string) (launchercmd.CommandClient, *grpc.ClientConn, error) {
	cc, err := grpc.NewClient("passthrough:///"+path,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dialUnix))
	if err != nil {
		return nil, nil, fmt.Errorf("command socket %s: %w", path, err)
	}
	return launchercmd.NewCommandClient(cc), cc, nil
}

// dialUnix connects to the unix socket at path by way of its directory,
// opened and named as /proc/self/fd/<fd>, which keeps the address short.
func dialUnix(ctx context.Context, path string) (net.Conn, error) {
	dir, err := os.Open(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	defer dir.Close()
	var d net.Dialer
	addr := fmt.Sprintf("/proc/self/fd/%d/%s", dir.Fd(), filepath.Base(path))
	conn, err := d.DialContext(ctx, "unix", addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return conn, nil
}
