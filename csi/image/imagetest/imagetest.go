// Package imagetest makes disk images that tests feed to the validator and
// the importer, where making them is more than one qemu-img call.
package imagetest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
)

// calibrationFailure is what qemu-img prints when QEMU's PBKDF2 calibration
// reads no CPU time for its first round. QEMU 7.2 always calibrates a LUKS
// key slot against the thread's CPU time (there is no option for a fixed
// iteration count), and on a loaded machine that reading can be 0 ms.
const calibrationFailure = "Unable to get accurate CPU usage"

// calibrationAttempts bounds the retries: each failure is an independent
// reading, so a handful makes a failure vanishingly rare however loaded the
// machine is, and a real error still surfaces on the first try.
const calibrationAttempts = 20

// EncryptedQCOW2 creates a LUKS-encrypted qcow2 of the given virtual size
// (qemu-img's syntax, e.g. "16M") at path, with a throw-away passphrase.
func EncryptedQCOW2(ctx context.Context, path, size string) error {
	if _, err := exec.LookPath("qemu-img"); err != nil {
		return fmt.Errorf("qemu-img (Debian package qemu-utils) is not installed: run `make deps`")
	}
	args := []string{"create", "-q", "-f", "qcow2", "--object", "secret,id=sec0,data=hunter2",
		"-o", "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", path, size}
	var out []byte
	var err error
	for range calibrationAttempts {
		out, err = exec.CommandContext(ctx, "qemu-img", args...).CombinedOutput()
		if err == nil || !strings.Contains(string(out), calibrationFailure) {
			break
		}
	}
	if err != nil {
		return fmt.Errorf("qemu-img %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
