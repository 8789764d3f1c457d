package volume

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os/exec"
	"strings"
)

// Losetup is the losetup binary (util-linux).
var Losetup = "losetup"

// AttachLoop exposes the raw disk file as a block device and returns its
// path (/dev/loopN).
func AttachLoop(ctx context.Context, file string) (string, error) {
	out, err := losetup(ctx, "--find", "--show", file)
	if err != nil {
		return "", fmt.Errorf("attach loop device to %s: %w", file, err)
	}
	return strings.TrimSpace(string(out)), nil
}

// DetachLoop releases the loop device dev.
func DetachLoop(ctx context.Context, dev string) error {
	if _, err := losetup(ctx, "--detach", dev); err != nil {
		return fmt.Errorf("detach loop device %s: %w", dev, err)
	}
	return nil
}

// RefreshLoop makes the loop device dev see its file's new size.
func RefreshLoop(ctx context.Context, dev string) error {
	if _, err := losetup(ctx, "--set-capacity", dev); err != nil {
		return fmt.Errorf("resize loop device %s: %w", dev, err)
	}
	return nil
}

// LoopsOf lists the loop devices backed by file.
func LoopsOf(ctx context.Context, file string) ([]string, error) {
	out, err := losetup(ctx, "--noheadings", "--output", "NAME", "--associated", file)
	if err != nil {
		return nil, fmt.Errorf("list loop devices of %s: %w", file, err)
	}
	return strings.Fields(string(out)), nil
}

// DetachLoopsOf releases every loop device backed by file.
func DetachLoopsOf(ctx context.Context, file string) error {
	devs, err := LoopsOf(ctx, file)
	if err != nil {
		return err
	}
	var errs []error
	for _, d := range devs {
		errs = append(errs, DetachLoop(ctx, d))
	}
	return errors.Join(errs...)
}

func losetup(ctx context.Context, args ...string) ([]byte, error) {
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, Losetup, args...)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if errors.Is(err, exec.ErrNotFound) {
		return nil, fmt.Errorf("%s is not installed (Debian util-linux; run 'make deps')", Losetup)
	}
	if err != nil {
		return nil, fmt.Errorf("losetup %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(stderr.Bytes()))
	}
	return out, nil
}
