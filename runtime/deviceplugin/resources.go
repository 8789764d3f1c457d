package deviceplugin

import (
	"fmt"
	"os"
	"strings"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/runtime/kvm"
)

// DevicesPerResource is how many devices each resource advertises. The
// device nodes are shared: the number only caps how many launcher pods a
// node takes, as in KubeVirt.
const DevicesPerResource = 1000

// resource is one extended resource and the host device node behind it.
type resource struct {
	// name is the extended resource, e.g. devices.podvirt.io/kvm.
	name string
	// hostPath is the device node given to the container at the same path.
	hostPath string
	// check says why the devices are unhealthy, or nil when they are
	// healthy.
	check func() error
}

// defaultResources are the devices a launcher pod needs.
func defaultResources() []resource {
	return []resource{
		// /dev/kvm can exist on a host that cannot run KVM guests.
		{name: v1.KVMDevice, hostPath: kvm.DevicePath, check: func() error { return kvm.Probe(kvm.DevicePath) }},
		{name: v1.TunDevice, hostPath: "/dev/net/tun", check: charDevice("/dev/net/tun")},
		{name: v1.VhostNetDevice, hostPath: "/dev/vhost-net", check: charDevice("/dev/vhost-net")},
	}
}

// charDevice is a health check: path must be a character device.
func charDevice(path string) func() error {
	return func() error {
		fi, err := os.Stat(path)
		if err != nil {
			return fmt.Errorf("device node %s: %w", path, err)
		}
		if fi.Mode()&os.ModeCharDevice == 0 {
			return fmt.Errorf("%s is not a character device (mode %s)", path, fi.Mode())
		}
		return nil
	}
}

// socketName is the plugin's socket in the kubelet's device-plugins dir:
// podvirt-kvm.sock for devices.podvirt.io/kvm.
func (r resource) socketName() string {
	short := r.name[strings.LastIndex(r.name, "/")+1:]
	return "podvirt-" + short + ".sock"
}

// deviceIDs are the IDs the resource advertises: kvm-0 … kvm-999.
func (r resource) deviceIDs() []string {
	short := r.name[strings.LastIndex(r.name, "/")+1:]
	ids := make([]string, DevicesPerResource)
	for i := range ids {
		ids[i] = fmt.Sprintf("%s-%d", short, i)
	}
	return ids
}
