// Package image decides whether an untrusted VM disk image may become a base in the
// node's cache: which file of a containerDisk layer is the disk, what format it is, and
// whether qemu-img (run under resource limits) finds it sane. Every refusal is an *Error
// that names its Reason; a refused image cannot heal by retrying.
package image

import "fmt"

// Reason names why an image was refused.
type Reason string

// The reasons an image is refused.
const (
	ReasonBackingFile   Reason = "BackingFile"
	ReasonDataFile      Reason = "ExternalDataFile"
	ReasonEncrypted     Reason = "Encrypted"
	ReasonVirtualSize   Reason = "VirtualSizeTooLarge"
	ReasonCorrupt       Reason = "Corrupt"
	ReasonNotAnImage    Reason = "NotAnImage"
	ReasonUnsupported   Reason = "UnsupportedFormat"
	ReasonEmpty         Reason = "Empty"
	ReasonPathEscape    Reason = "PathEscape"
	ReasonNoDisk        Reason = "NoDiskFile"
	ReasonSeveralDisks  Reason = "SeveralDiskFiles"
	ReasonChecksum      Reason = "ChecksumMismatch"
	ReasonDigest        Reason = "DigestMismatch"
	ReasonInspectFailed Reason = "InspectFailed"
	// ReasonOutputTooLarge: the image unpacks to more than the import may write.
	ReasonOutputTooLarge Reason = "OutputTooLarge"
	// ReasonTimeout: the import ran past the node's time limit.
	ReasonTimeout Reason = "ImportTimeout"
)

// Error is a refusal of an image: what is wrong (Reason, Detail), on which file, and what
// the user can do about it (Hint).
type Error struct {
	Reason Reason
	File   string
	Detail string
	Hint   string
}

func (e *Error) Error() string {
	s := fmt.Sprintf("image refused (%s)", e.Reason)
	if e.File != "" {
		s += ": " + e.File
	}
	s += ": " + e.Detail
	if e.Hint != "" {
		s += "; " + e.Hint
	}
	return s
}

func refuse(reason Reason, file, hint, format string, args ...any) *Error {
	return &Error{Reason: reason, File: file, Detail: fmt.Sprintf(format, args...), Hint: hint}
}
