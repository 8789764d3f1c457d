// Package controller turns VirtualMachines into VirtualMachineInstances and
// VirtualMachineInstances into launcher pods, with controller-runtime
// against the real API server.
//
// The VM reconciler (vm.go) applies the run strategy and makes disks from
// disk templates; the VMI reconciler (vmi.go) keeps exactly one launcher pod
// per VMI (launcher.go) and derives the VMI's phase from that pod and from
// what the node daemon reports in status.domain (phase.go).
package controller

import (
	"fmt"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/controller/identity"
)

// DefaultLauncherImage is the launcher image unless configured otherwise.
const DefaultLauncherImage = "podvirt.local/podvirt-launcher:dev"

// DefaultLauncherCommand runs the launcher inside the launcher image.
var DefaultLauncherCommand = []string{"/usr/bin/podvirt-launcher"}

// DefaultUploadImage is the upload pods' image (the CSI driver's) unless
// configured otherwise.
const DefaultUploadImage = "podvirt.local/podvirt-csi:dev"

// DefaultUploadCommand runs podvirt-csi inside that image.
var DefaultUploadCommand = []string{"/usr/bin/podvirt-csi"}

// Config is what the reconcilers need to know beyond the API objects.
type Config struct {
	// LauncherImage is the image of every launcher pod.
	LauncherImage string
	// LauncherCommand is the launcher pod's command.
	LauncherCommand []string
	// UploadImage and UploadCommand run upload pods (podvirtctl
	// image-upload): the CSI driver's image and its podvirt-csi binary.
	UploadImage   string
	UploadCommand []string
	// UseEmulation leaves out the devices.podvirt.io/kvm request and adds
	// the TCG memory overhead, for nodes without /dev/kvm.
	UseEmulation bool
	// EmulationAuto overrides UseEmulation: each VMI is emulated unless a
	// node it may run on has KVM that runs guests, as the node daemon's
	// probe reports it (emulation.go).
	EmulationAuto bool
	// ContainerDiskStorageClass is the StorageClass of the ephemeral PVCs
	// that hold containerDisks; empty means the cluster's default.
	ContainerDiskStorageClass string
	// ContainerDiskSize is the size those PVCs request.
	ContainerDiskSize resource.Quantity
	// CPUAllocationRatio is vCPUs per requested CPU: a 4-vCPU VMI requests
	// 4/ratio CPUs.
	CPUAllocationRatio int64
	// RestartBackoff is the wait after a VM's first failed VMI before the
	// next starts (Always, RerunOnFailure); it doubles with every further
	// failure in a row, up to MaxRestartBackoff.
	RestartBackoff    time.Duration
	MaxRestartBackoff time.Duration
	// BackoffResetAfter is how long a VMI must run before its VM's
	// failure count is cleared.
	BackoffResetAfter time.Duration
	// MACRange is where the MACs of VM interfaces without one come from.
	MACRange identity.MACRange
	// DefaultEvictionStrategy is the eviction strategy of VMIs that name
	// none (empty: None).
	DefaultEvictionStrategy v1alpha1.EvictionStrategy
	// ParallelMigrations and ParallelOutboundMigrationsPerNode bound the
	// live migrations that run at once, in the cluster and from one node
	// (KubeVirt's defaults: 5 and 2); more wait, Pending.
	ParallelMigrations, ParallelOutboundMigrationsPerNode int
	// VMWorkers and VMIWorkers are the reconcilers' concurrency.
	VMWorkers, VMIWorkers int
	// Registerer takes the controller's metrics; nil leaves them
	// unregistered.
	Registerer prometheus.Registerer
}

var defaultMACRange, _ = identity.ParseMACRange(identity.DefaultMACRange)

// DefaultConfig is the configuration with every default filled in.
func DefaultConfig() Config {
	return Config{
		LauncherImage:                     DefaultLauncherImage,
		LauncherCommand:                   DefaultLauncherCommand,
		UploadImage:                       DefaultUploadImage,
		UploadCommand:                     DefaultUploadCommand,
		ContainerDiskSize:                 resource.MustParse("10Gi"),
		CPUAllocationRatio:                10,
		RestartBackoff:                    10 * time.Second,
		MaxRestartBackoff:                 5 * time.Minute,
		BackoffResetAfter:                 5 * time.Minute,
		MACRange:                          defaultMACRange,
		VMWorkers:                         16,
		VMIWorkers:                        16,
		ParallelMigrations:                5,
		ParallelOutboundMigrationsPerNode: 2,
	}
}

func (c *Config) validate() error {
	switch {
	case c.LauncherImage == "":
		return fmt.Errorf("controller config: launcher image is empty")
	case len(c.LauncherCommand) == 0:
		return fmt.Errorf("controller config: launcher command is empty")
	case c.CPUAllocationRatio < 1:
		return fmt.Errorf("controller config: cpu allocation ratio %d is below 1", c.CPUAllocationRatio)
	case c.MACRange == identity.MACRange{}:
		return fmt.Errorf("controller config: no MAC range")
	case c.VMWorkers < 1 || c.VMIWorkers < 1:
		return fmt.Errorf("controller config: workers must be at least 1 (vm %d, vmi %d)", c.VMWorkers, c.VMIWorkers)
	case c.DefaultEvictionStrategy != "" && c.DefaultEvictionStrategy != v1alpha1.EvictionStrategyLiveMigrate && c.DefaultEvictionStrategy != v1alpha1.EvictionStrategyNone:
		return fmt.Errorf("controller config: eviction strategy %q is not LiveMigrate or None", c.DefaultEvictionStrategy)
	case c.ParallelMigrations < 1 || c.ParallelOutboundMigrationsPerNode < 1:
		return fmt.Errorf("controller config: parallel migrations must be at least 1 (cluster %d, per node %d)", c.ParallelMigrations, c.ParallelOutboundMigrationsPerNode)
	case c.ContainerDiskSize.Sign() <= 0:
		return fmt.Errorf("controller config: container disk size %s is not positive", c.ContainerDiskSize.String())
	}
	return nil
}
