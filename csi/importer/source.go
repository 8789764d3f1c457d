// Package importer brings VM disk images from OCI registries (containerDisk layout) and
// HTTP(S) into a per-node cache keyed by digest: streamed, resumable, verified, validated.
package importer

// Source says where an image comes from and how to reach it.
type Source struct {
	// URL is docker://host/repo:tag, docker://host/repo@sha256:…, http(s)://…, or
	// upload://namespace/claim for an upload (with Upload set).
	URL string
	// Upload is the file an upload's bytes arrive in, for upload:// sources.
	Upload *Upload
	// Checksum ("sha256:<hex>") is optional for http(s) sources and required for uploads.
	Checksum string
	// Mirrors are registry hosts (host[:port]) tried in order for docker:// sources;
	// empty means the URL's own host.
	Mirrors []string
	// Username and Password are registry credentials (basic auth / token exchange).
	Username, Password string
	// DockerConfigJSON is the content of a kubernetes.io/dockerconfigjson Secret.
	DockerConfigJSON []byte
	// CACertsPEM are extra CAs trusted for the registry or HTTP server.
	CACertsPEM []byte
	// Insecure allows plain HTTP and unverified TLS; only when the user asked for it.
	Insecure bool
	// MaxDiskSize is the largest disk the caller can use (the claim's size): the import
	// stops as soon as it writes more (plus qcow2 metadata room) or a qcow2 header
	// declares a larger virtual size. 0: only the node's bounds apply.
	MaxDiskSize int64
	// AllowPrivate lets the import reach loopback and cluster (pod, Service) addresses,
	// for in-cluster registries and servers an admin opted in (csi/egress).
	AllowPrivate bool
}

// Progress reports an import in flight.
type Progress struct {
	Bytes, Total int64
	Rate         float64 // bytes/s
	Mirror       string
}

// Base is a validated image in the cache.
type Base struct {
	Digest      string
	Path        string // cached image file; treat read-only
	Format      string // "qcow2" | "raw"
	VirtualSize int64
	Size        int64
	// Cached: the image was in the node's cache already, so this Acquire
	// downloaded nothing.
	Cached bool
}

// Upload is a file that grows while a user uploads it (podvirtctl image-upload).
type Upload struct {
	// Path is the file the bytes are appended to.
	Path string
	// Length is how long it will be: the import reads that many bytes, waiting for them.
	Length int64
}
