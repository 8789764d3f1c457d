package importer

import (
	"errors"

	"github.com/podvirt/podvirt/csi/egress"
	"github.com/podvirt/podvirt/csi/image"
)

// terminalError marks a failure that retrying cannot heal: the image is not anywhere it
// could be fetched from, or it is not acceptable.
type terminalError struct{ err error }

func (e *terminalError) Error() string { return e.err.Error() }
func (e *terminalError) Unwrap() error { return e.err }

func terminal(err error) error {
	if err == nil {
		return nil
	}
	return &terminalError{err: err}
}

// IsTerminal reports whether err cannot heal by retrying: the image is missing on every
// mirror, fails its checksum or digest, is refused by validation, or lies at an address
// the egress policy refuses. Connection errors,
// 5xx answers and stalls are not terminal.
func IsTerminal(err error) bool {
	var t *terminalError
	if errors.As(err, &t) {
		return true
	}
	var ie *image.Error
	var re *egress.RefusedError
	return errors.As(err, &ie) || errors.As(err, &re)
}
