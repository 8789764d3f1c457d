package kubevirt

// noEquivalent says, by field name, why podvirt has no place for a KubeVirt
// or CDI field and what to do instead. A field not listed gets a generic
// reason; fields whose name means different things in different places
// are reported where they are read.
var noEquivalent = map[string]string{ //nolint:gosec // explanations for users, not credentials
	// VirtualMachine spec
	"instancetype":          "podvirt has no instance types: write the vCPUs and memory into spec.template.spec.domain (cpu, memory.guest)",
	"preference":            "podvirt has no preferences: write the devices and firmware into spec.template.spec.domain",
	"liveUpdateFeatures":    "podvirt has no live updates: a changed template applies at the VM's next start",
	"updateVolumesStrategy": "podvirt has no live updates: a changed template applies at the VM's next start",

	// VirtualMachineInstance spec
	"startStrategy":             "podvirt has no start strategy: start the VM, then pause it with `podvirtctl pause vm`",
	"hostname":                  "podvirt does not set the guest's hostname: set hostname in the cloud-init user-data",
	"subdomain":                 "podvirt does not give VMs DNS names under a subdomain",
	"dnsConfig":                 "podvirt does not set the launcher pod's DNS",
	"dnsPolicy":                 "podvirt does not set the launcher pod's DNS",
	"readinessProbe":            "podvirt has no guest probes: a VMI is Ready while its guest runs",
	"livenessProbe":             "podvirt has no guest probes: a VMI is Ready while its guest runs",
	"priorityClassName":         "podvirt places VMs by nodeSelector, affinity and tolerations only",
	"schedulerName":             "podvirt places VMs by nodeSelector, affinity and tolerations only",
	"topologySpreadConstraints": "podvirt places VMs by nodeSelector, affinity and tolerations only",
	"resourceClaims":            "podvirt has no dynamic resource allocation",
	"architecture":              "podvirt runs guests of the node's own architecture",

	// domain
	"features":        "podvirt's domain has no features (ACPI, APIC, SMM, Hyper-V enlightenments): the guest gets podvirt's defaults",
	"clock":           "podvirt's domain has no clock settings: the guest gets podvirt's default clock",
	"chassis":         "podvirt has no SMBIOS chassis fields",
	"ioThreadsPolicy": "podvirt has no I/O thread settings",
	"ioThreads":       "podvirt has no I/O thread settings",
	"launchSecurity":  "podvirt has no confidential computing (SEV)",

	// cpu and memory
	"dedicatedCpuPlacement": "podvirt does not pin vCPUs",
	"isolateEmulatorThread": "podvirt does not pin vCPUs",
	"numa":                  "podvirt has no guest NUMA topology",
	"realtime":              "podvirt has no real-time vCPUs",
	"maxSockets":            "podvirt has no CPU hotplug",
	"hugepages":             "podvirt backs guest memory with normal pages",
	"maxGuest":              "podvirt has no memory hotplug",

	// firmware
	"uuid":       "podvirt has no firmware UUID field",
	"kernelBoot": "KubeVirt's kernel boot takes the kernel from a container image; podvirt's firmware.kernelBoot takes files in the launcher pod: write it by hand if the files are there",
	"acpi":       "podvirt has no ACPI table (SLIC, MSDM) field",

	// devices
	"gpus":                       "podvirt has no GPU or host device passthrough",
	"hostDevices":                "podvirt has no GPU or host device passthrough",
	"rng":                        "podvirt adds no virtio RNG device",
	"watchdog":                   "podvirt adds no watchdog device",
	"tpm":                        "podvirt has no virtual TPM",
	"sound":                      "podvirt has no sound device",
	"inputs":                     "podvirt has no input device field",
	"autoattachInputDevice":      "podvirt has no input device field",
	"filesystems":                "podvirt has no virtiofs shares",
	"clientPassthrough":          "podvirt has no USB redirection",
	"useVirtioTransitional":      "podvirt has no transitional virtio devices (for old guests such as RHEL 6)",
	"networkInterfaceMultiqueue": "podvirt has no multi-queue settings",
	"blockMultiQueue":            "podvirt has no multi-queue settings",
	"autoattachVSOCK":            "podvirt has no VSOCK device",
	"disableHotplug":             "podvirt has no hotplug",
	"logSerialConsole":           "podvirt keeps no serial console log: use `podvirtctl console`",
	"downwardMetrics":            "podvirt does not show host metrics to the guest",
	"panicDevices":               "podvirt has no panic devices",

	// disks
	"cdrom":             "podvirt attaches volumes as disks only, no CD-ROMs: boot a prepared disk image instead of an installer ISO",
	"lun":               "podvirt has no SCSI LUN passthrough",
	"floppy":            "podvirt has no floppy disks",
	"cache":             "podvirt chooses the disk cache mode itself",
	"io":                "podvirt chooses the disk I/O mode itself",
	"dedicatedIOThread": "podvirt has no I/O thread settings",
	"errorPolicy":       "podvirt has no disk error policy",
	"shareable":         "podvirt's disks are node-local and never shared",
	"blockSize":         "podvirt has no disk block size settings",
	"pciAddress":        "podvirt places devices on the PCI bus itself",
	"tag":               "podvirt has no device tags",

	// interfaces
	"sriov":       "podvirt has no SR-IOV: put the NIC on a podvirt-l2 NetworkAttachmentDefinition (bridge or macvlan mode) with binding bridge",
	"dhcpOptions": "podvirt's DHCP server hands out the network's address and routes only",
	"state":       "podvirt has no link state (absent, down)",
	"acpiIndex":   "podvirt has no ACPI index for NICs",

	// volumes
	"hostDisk":             "podvirt has no host disks: import the image into a disk template (a dataVolumeTemplate with a registry or http source) or use a PVC",
	"emptyDisk":            "podvirt has no ephemeral empty disks: use a dataVolumeTemplate with source blank (a blank PVC)",
	"ephemeral":            "podvirt has no ephemeral overlays on a PVC: use the PVC itself, or a containerDisk",
	"cloudInitConfigDrive": "podvirt builds cloud-init NoCloud seeds only: use cloudInitNoCloud with the same data",
	"configMap":            "podvirt cannot hand ConfigMaps, Secrets or pod data to the guest as disks: put what the guest needs into the cloud-init user-data",
	"secret":               "podvirt cannot hand ConfigMaps, Secrets or pod data to the guest as disks: put what the guest needs into the cloud-init user-data",
	"serviceAccount":       "podvirt cannot hand ConfigMaps, Secrets or pod data to the guest as disks: put what the guest needs into the cloud-init user-data",
	"downwardAPI":          "podvirt cannot hand ConfigMaps, Secrets or pod data to the guest as disks: put what the guest needs into the cloud-init user-data",
	"sysprep":              "podvirt has no sysprep volumes for Windows",
	"memoryDump":           "podvirt has no memory dumps",

	// DataVolume (CDI)
	"sourceRef":          "podvirt has no CDI DataSources: name the image in the template's spec.source (registry or http)",
	"preallocation":      "set preallocation on podvirt's StorageClass (parameter preallocation), not per disk",
	"checkpoints":        "podvirt has no multi-stage (warm) imports",
	"finalCheckpoint":    "podvirt has no multi-stage (warm) imports",
	"upload":             "podvirt has no upload: serve the image over HTTP(S), or push it to a registry as a containerDisk",
	"s3":                 "podvirt imports from registries (docker://) and HTTP(S) only",
	"gcs":                "podvirt imports from registries (docker://) and HTTP(S) only",
	"imageio":            "podvirt imports from registries (docker://) and HTTP(S) only",
	"vddk":               "podvirt imports from registries (docker://) and HTTP(S) only",
	"certConfigMap":      "podvirt's StorageClass names the CA certificates (parameter caConfigMap), not each disk",
	"extraHeaders":       "podvirt sends no extra HTTP headers",
	"secretExtraHeaders": "podvirt sends no extra HTTP headers",
	"imageStream":        "podvirt has no OpenShift image streams: write the image's registry URL",

	// metadata
	"ownerReferences": "the owners are KubeVirt's objects: set owners on the podvirt VM yourself if it needs them",
}
