// Package upload is the contract of `podvirtctl image-upload`: the claim
// annotations that ask for an upload, the upload pod the controller runs for
// it, the CSI inline volume through which the CSI driver receives its bytes,
// and the resumable HTTP protocol podvirtctl speaks to that pod through the
// API server (pods/portforward).
//
// The protocol is tus's core, cut to one file per pod: HEAD answers how many
// bytes have arrived (Upload-Offset) of how many (Upload-Length); PATCH
// appends its body at Upload-Offset, which must equal what has arrived, so
// a resumed upload neither skips nor repeats bytes.
package upload

// Claim annotations. A claim asks for an upload with
// disk.podvirt.io/source: upload, the file's size and its sha256 (the
// disk.podvirt.io/checksum annotation); the CSI driver imports the file as
// it imports any image, verifying the checksum.
const (
	// Source is the disk.podvirt.io/source value of a claim filled by an upload.
	Source = "upload"
	// SizeAnnotation is the uploaded file's length in bytes.
	SizeAnnotation = "disk.podvirt.io/upload-size"
	// PodAnnotation on the claim names its upload pod, once the controller made it.
	PodAnnotation = "disk.podvirt.io/upload-pod"
)

// The upload pod.
const (
	// ClaimLabel on an upload pod is its claim's name.
	ClaimLabel = "disk.podvirt.io/upload-claim"
	// Port is where the pod serves the protocol.
	Port = 8443
	// Dir is where the pod mounts its CSI inline volume.
	Dir = "/upload"
	// Command is the podvirt-csi subcommand the pod runs.
	Command = "upload-server"
	// UID runs the pod (KubeVirt's qemu user); the CSI driver gives it the
	// upload directory.
	UID = 107
	// PartFile is the file the bytes are appended to, in the upload directory.
	PartFile = "disk.part"
)

// VolumeAttributeClaim is the CSI inline volume attribute naming the claim
// (in the pod's own namespace) the volume receives bytes for.
const VolumeAttributeClaim = "uploadClaim"

// Protocol headers and path.
const (
	Path         = "/upload"
	HealthPath   = "/healthz"
	OffsetHeader = "Upload-Offset"
	LengthHeader = "Upload-Length"
	// ContentType of a PATCH body.
	ContentType = "application/offset+octet-stream"
)

// ClaimUploadLabel ("true") on a claim marks it as filled by an upload, so
// that the controller watches it (it caches only the claims it needs).
const ClaimUploadLabel = "disk.podvirt.io/upload"
