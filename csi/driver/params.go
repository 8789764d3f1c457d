package driver

import (
	"fmt"
	"net"
	"net/url"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

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
	// ParamAllowedSources lists what claims may import (comma or newline
	// separated): hosts (quay.io, reg:5000, *.example.com) or URL prefixes
	// (https://images.example.com/vm/, docker://quay.io/myorg/). Empty: any.
	ParamAllowedSources = "allowedSources"
	// ParamAllowPrivateSources ("true") lets imports reach loopback and the
	// cluster's pod and Service addresses, for in-cluster registries.
	ParamAllowPrivateSources = "allowPrivateSources"
)

// Keys external-provisioner and csi-snapshotter add with
// --extra-create-metadata.
const (
	paramPVCName      = "csi.storage.k8s.io/pvc/name"
	paramPVCNamespace = "csi.storage.k8s.io/pvc/namespace"
	paramSnapshotName = "csi.storage.k8s.io/volumesnapshot/name"
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
	allowed           []string
	allowPrivate      bool
	claimName         string
	claimNamespace    string
	formatWasExplicit bool
}

var knownParams = []string{ParamSource, ParamRegistries, ParamFormat, ParamCloneStrategy, ParamPreallocation,
	ParamRegistrySecretName, ParamRegistrySecretNamespace, ParamCAConfigMap, ParamCAConfigMapNamespace, ParamInsecureRegistries,
	ParamAllowedSources, ParamAllowPrivateSources}

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
		case ParamAllowedSources:
			p.allowed = splitList(v)
		case ParamAllowPrivateSources:
			b, err := strconv.ParseBool(v)
			if err != nil {
				return p, fmt.Errorf("StorageClass parameter %s=%q: use true or false", ParamAllowPrivateSources, v)
			}
			p.allowPrivate = b
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
	for _, a := range p.allowed {
		if err := checkAllowedPattern(a); err != nil {
			return p, fmt.Errorf("StorageClass parameter %s: %w", ParamAllowedSources, err)
		}
	}
	return p, nil
}

// checkAllowedPattern accepts a host[:port], *.domain[:port], or a URL prefix.
func checkAllowedPattern(a string) error {
	if strings.Contains(a, "://") {
		u, err := url.Parse(a)
		if err != nil || u.Host == "" || (u.Scheme != "docker" && u.Scheme != "http" && u.Scheme != "https") {
			return fmt.Errorf("%q is not a URL prefix such as https://images.example.com/vm/ or docker://quay.io/myorg/", a)
		}
		return nil
	}
	if strings.ContainsAny(a, "/?#@") || strings.Contains(strings.TrimPrefix(a, "*."), "*") {
		return fmt.Errorf("%q is not a host such as quay.io, registry.example:5000 or *.example.com", a)
	}
	return nil
}

// sourceAllowed says whether the StorageClass's allowedSources admit the
// source (as the claim or class names it; with registries, a docker://
// source is fetched from them only, whatever host it names).
func (p params) sourceAllowed(source string) bool {
	if len(p.allowed) == 0 {
		return true
	}
	scheme, host, pathPart := splitSource(source)
	if host == "" || strings.Contains("/"+pathPart+"/", "/../") {
		return false
	}
	canonical := scheme + "://" + host + "/" + pathPart
	for _, a := range p.allowed {
		if strings.Contains(a, "://") {
			prefix := strings.TrimSuffix(a, "/")
			if canonical == prefix || source == prefix || strings.HasPrefix(canonical, prefix+"/") {
				return true
			}
			continue
		}
		if hostMatches(a, host) {
			return true
		}
	}
	return false
}

// splitSource returns a source's scheme, host (the registry of a docker://
// reference, as the importer resolves it) and path.
func splitSource(source string) (scheme, host, pathPart string) {
	if ref, ok := strings.CutPrefix(source, "docker://"); ok {
		r, err := name.ParseReference(ref)
		if err != nil {
			return "docker", "", ""
		}
		sep := ":"
		if _, ok := r.(name.Digest); ok {
			sep = "@"
		}
		return "docker", r.Context().RegistryStr(), r.Context().RepositoryStr() + sep + r.Identifier()
	}
	u, err := url.Parse(source)
	if err != nil {
		return "", "", ""
	}
	return u.Scheme, strings.ToLower(u.Host), strings.TrimPrefix(u.EscapedPath(), "/")
}

// hostMatches: a pattern without a port matches the host on any port;
// *.example.com matches names below example.com, not example.com itself.
func hostMatches(pattern, host string) bool {
	pattern = strings.ToLower(pattern)
	hostOnly, port, err := net.SplitHostPort(host)
	if err != nil {
		hostOnly, port = host, ""
	}
	pHost, pPort, err := net.SplitHostPort(pattern)
	if err != nil {
		pHost, pPort = pattern, ""
	}
	if pPort != "" && pPort != port {
		return false
	}
	if suffix, ok := strings.CutPrefix(pHost, "*."); ok {
		return strings.HasSuffix(hostOnly, "."+suffix)
	}
	return hostOnly == pHost
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
