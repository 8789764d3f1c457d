package driver

import (
	"fmt"
	"net/url"
	"slices"
	"sort"
	"strings"

	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/csi/volume"
)

// StorageClass parameters.
const (
	// ParamSource is the image of claims without a disk.podvirt.io/source
	// annotation.
	ParamSource = "source"
	// ParamRegistries lists registry mirrors (host[:port]), tried in order,
	// separated by commas or newlines.
	ParamRegistries = "registries"
	// ParamFormat is the format of empty disks and copies: qcow2 (default
	// for Filesystem) or raw (the only one for Block).
	ParamFormat = "format"
	// ParamCloneStrategy is overlay (default: a qcow2 overlay on the
	// cached image, O(1)) or copy (an independent disk).
	ParamCloneStrategy = "cloneStrategy"
	// ParamPreallocation is qemu-img's preallocation for new disks: off,
	// metadata (qcow2), falloc or full.
	ParamPreallocation = "preallocation"
	// ParamRegistrySecretName names a Secret with registry credentials:
	// type kubernetes.io/dockerconfigjson, or keys username and password
	// (CDI's accessKeyId and secretKey work too).
	ParamRegistrySecretName = "registrySecretName"
	// ParamRegistrySecretNamespace is that Secret's namespace (default:
	// the claim's).
	ParamRegistrySecretNamespace = "registrySecretNamespace"
	// ParamCAConfigMap names a ConfigMap whose values are PEM CA
	// certificates trusted for the registries and HTTP servers (like
	// CDI's certConfigMap).
	ParamCAConfigMap = "caConfigMap"
	// ParamCAConfigMapNamespace is that ConfigMap's namespace (default:
	// the claim's).
	ParamCAConfigMapNamespace = "caConfigMapNamespace"
	// ParamInsecureRegistries lists hosts reached over plain HTTP or
	// unverified TLS. An import uses insecure transport only when every
	// host it may use is listed.
	ParamInsecureRegistries = "insecureRegistries"
)

// Keys external-provisioner adds with --extra-create-metadata.
const (
	paramPVCName      = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	paramPrefixCSI    = "csi.storage.k8s.io/"
)

// Clone strategies.
const (
	CloneOverlay = "overlay"
	CloneCopy    = "copy"
)

// params are a CreateVolume request's parameters, checked.
type params struct {
	source            string
	mirrors           []string
	format            string
	cloneStrategy     string
	prealloc          string
	secretName        string
	secretNamespace   string
	caConfigMap       string
	caNamespace       string
	insecure          []string
	claimName         string
	claimNamespace    string
	formatWasExplicit bool
}

var knownParams = []string{ParamSource, ParamRegistries, ParamFormat, ParamCloneStrategy, ParamPreallocation,
	ParamRegistrySecretName, ParamRegistrySecretNamespace, ParamCAConfigMap, ParamCAConfigMapNamespace, ParamInsecureRegistries}

// parseParams checks the StorageClass parameters for a volume (block says
// its mode). Unknown keys are refused so a typo does not go unnoticed.
func parseParams(in map[string]string, block bool) (params, error) {
	p := params{cloneStrategy: CloneOverlay, format: diskmeta.FormatQCOW2}
	if block {
		p.format = diskmeta.FormatRaw
	}
	var unknown []string
	for k, v := range in {
		switch k {
		case ParamSource:
			p.source = strings.TrimSpace(v)
		case ParamRegistries:
			p.mirrors = splitList(v)
		case ParamFormat:
			p.format, p.formatWasExplicit = v, true
		case ParamCloneStrategy:
			p.cloneStrategy = v
		case ParamPreallocation:
			p.prealloc = v
		case ParamRegistrySecretName:
			p.secretName = v
		case ParamRegistrySecretNamespace:
			p.secretNamespace = v
		case ParamCAConfigMap:
			p.caConfigMap = v
		case ParamCAConfigMapNamespace:
			p.caNamespace = v
		case ParamInsecureRegistries:
			p.insecure = splitList(v)
		case paramPVCName:
			p.claimName = v
		case paramPVCNamespace:
			p.claimNamespace = v
		default:
			if !strings.HasPrefix(k, paramPrefixCSI) {
				unknown = append(unknown, k)
			}
		}
	}
	if len(unknown) > 0 {
		sort.Strings(unknown)
		return p, fmt.Errorf("unknown StorageClass parameter(s) %s: %s knows %s", strings.Join(unknown, ", "), Name, strings.Join(knownParams, ", "))
	}
	if !diskmeta.ValidFormat(p.format) {
		return p, fmt.Errorf("StorageClass parameter %s=%q: use %s or %s", ParamFormat, p.format, diskmeta.FormatQCOW2, diskmeta.FormatRaw)
	}
	if block && p.format != diskmeta.FormatRaw {
		return p, fmt.Errorf("StorageClass parameter %s=%s: a Block volume is a raw disk; use format raw or volumeMode Filesystem", ParamFormat, p.format)
	}
	if p.cloneStrategy != CloneOverlay && p.cloneStrategy != CloneCopy {
		return p, fmt.Errorf("StorageClass parameter %s=%q: use %s or %s", ParamCloneStrategy, p.cloneStrategy, CloneOverlay, CloneCopy)
	}
	if err := volume.ValidPreallocation(p.format, p.prealloc); err != nil {
		return p, fmt.Errorf("StorageClass parameter %s: %w", ParamPreallocation, err)
	}
	if p.source != "" {
		if err := checkSourceURL(p.source); err != nil {
			return p, fmt.Errorf("StorageClass parameter %s: %w", ParamSource, err)
		}
	}
	return p, nil
}

// checkSourceURL accepts docker://… and http(s)://… image sources.
func checkSourceURL(s string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("image source %q is not a URL: use docker://registry/repo:tag or https://host/disk.qcow2", s)
	}
	switch u.Scheme {
	case "docker", "http", "https":
		return nil
	}
	return fmt.Errorf("image source %q: scheme %q is not supported: use docker://, http:// or https://", s, u.Scheme)
}

// sourceHost is the registry or server host of an image source.
func sourceHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}

// insecureFor says whether the import of source may use insecure
// transport: only when every host it may reach is listed, since the
// importer applies one setting to all of them.
func (p params) insecureFor(source string) (bool, error) {
	if len(p.insecure) == 0 {
		return false, nil
	}
	hosts := p.mirrors
	if len(hosts) == 0 || !strings.HasPrefix(source, "docker://") {
		hosts = []string{sourceHost(source)}
	}
	var listed, unlisted []string
	for _, h := range hosts {
		if slices.Contains(p.insecure, h) {
			listed = append(listed, h)
		} else {
			unlisted = append(unlisted, h)
		}
	}
	switch {
	case len(listed) == 0:
		return false, nil
	case len(unlisted) == 0:
		return true, nil
	}
	return false, fmt.Errorf("StorageClass parameter %s lists %s but not %s: one import uses one transport for all its hosts; list all of them or none",
		ParamInsecureRegistries, strings.Join(listed, ", "), strings.Join(unlisted, ", "))
}

func splitList(s string) []string {
	var out []string
	for _, f := range strings.FieldsFunc(s, func(r rune) bool { return r == ',' || r == '\n' || r == ' ' || r == '\t' || r == '\r' }) {
		if f != "" {
			out = append(out, f)
		}
	}
	return out
}
