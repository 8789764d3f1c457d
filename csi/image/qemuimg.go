package image

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/podvirt/podvirt/contracts/diskmeta"
)

// Limits bound what an untrusted image may cost.
type Limits struct {
	// MaxVirtualSize refuses images whose virtual size is larger (bytes); 0 means no cap.
	MaxVirtualSize int64
	// CPUSeconds and AddressSpace bound each qemu-img run (RLIMIT_CPU, RLIMIT_AS).
	CPUSeconds   int
	AddressSpace int64
	// Timeout bounds each qemu-img run in wall-clock time.
	Timeout time.Duration
}

// DefaultLimits are the node defaults: 4 TiB virtual, 30 s CPU, 1 GiB address space
// (CDI uses the same order of magnitude for qemu-img info).
var DefaultLimits = Limits{MaxVirtualSize: 4 << 40, CPUSeconds: 30, AddressSpace: 1 << 30, Timeout: 2 * time.Minute}

// Info is what validation learned about an accepted image.
type Info struct {
	Format      string
	VirtualSize int64
	ActualSize  int64
}

// qemuImgInfo is the part of `qemu-img info --output=json` that matters here.
type qemuImgInfo struct {
	Format          string `json:"format"`
	VirtualSize     int64  `json:"virtual-size"`
	ActualSize      int64  `json:"actual-size"`
	BackingFilename string `json:"backing-filename"`
	FullBacking     string `json:"full-backing-filename"`
	Encrypted       bool   `json:"encrypted"`
	FormatSpecific  struct {
		Type string `json:"type"`
		Data struct {
			DataFile string `json:"data-file"`
			Corrupt  bool   `json:"corrupt"`
		} `json:"data"`
	} `json:"format-specific"`
}

// ParseInfo checks qemu-img's JSON description of file (expected in format) against the rules.
func ParseInfo(file, format string, out []byte, lim Limits) (Info, error) {
	var qi qemuImgInfo
	if err := json.Unmarshal(out, &qi); err != nil {
		return Info{}, refuse(ReasonInspectFailed, file, "report this image to the podvirt developers", "qemu-img info printed unreadable JSON: %v", err)
	}
	switch {
	case qi.Format != format:
		return Info{}, refuse(ReasonNotAnImage, file, "publish a qcow2 or raw image", "qemu-img reads it as %q, not %s", qi.Format, format)
	case qi.BackingFilename != "" || qi.FullBacking != "":
		return Info{}, refuse(ReasonBackingFile, file, "flatten it first: `qemu-img convert -O qcow2 in.qcow2 out.qcow2`",
			"the image names a backing file (%q); a base must be self-contained", qi.BackingFilename)
	case qi.FormatSpecific.Data.DataFile != "":
		return Info{}, refuse(ReasonDataFile, file, "convert it to a self-contained image with `qemu-img convert -O qcow2`",
			"the image keeps its data in an external data file (%q)", qi.FormatSpecific.Data.DataFile)
	case qi.Encrypted:
		return Info{}, refuse(ReasonEncrypted, file, "publish an unencrypted image", "the image is encrypted; the node has no key for it")
	case qi.FormatSpecific.Data.Corrupt:
		return Info{}, refuse(ReasonCorrupt, file, "repair it with `qemu-img check -r all` and publish it again", "qemu-img reports the image corrupt")
	case qi.VirtualSize <= 0:
		return Info{}, refuse(ReasonEmpty, file, "publish an image with a non-zero disk size", "its virtual size is %d bytes", qi.VirtualSize)
	}
	if err := checkVirtualSize(file, uint64(qi.VirtualSize), lim.MaxVirtualSize); err != nil {
		return Info{}, err
	}
	return Info{Format: qi.Format, VirtualSize: qi.VirtualSize, ActualSize: qi.ActualSize}, nil
}

// Validate decides whether the image file at path may become a base. name is the file's
// name in the source, for messages. The format comes from the header (never from qemu-img
// probing); qcow2 headers are checked before qemu-img sees them, then `qemu-img info` and,
// for qcow2, `qemu-img check` run under lim.
func Validate(ctx context.Context, path, name string, lim Limits) (Info, error) {
	f, err := os.Open(path)
	if err != nil {
		return Info{}, fmt.Errorf("validate %s: %w", name, err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return Info{}, fmt.Errorf("validate %s: %w", name, err)
	}
	header := make([]byte, HeaderSize)
	n, err := io.ReadFull(f, header)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return Info{}, fmt.Errorf("validate %s: read header: %w", name, err)
	}
	header = header[:n]
	format, err := DetectFormat(name, header, st.Size())
	if err != nil {
		return Info{}, err
	}
	if format == diskmeta.FormatQCOW2 {
		if _, err := CheckQCOW2Header(name, header, lim.MaxVirtualSize); err != nil {
			return Info{}, err
		}
	}
	out, stderr, err := runLimited(ctx, lim, "info", "--output=json", "-f", format, path)
	if err != nil {
		return Info{}, refuseRun(ctx, name, "info", out, stderr, err)
	}
	info, err := ParseInfo(name, format, out, lim)
	if err != nil {
		return Info{}, err
	}
	if format == diskmeta.FormatQCOW2 {
		out, stderr, err := runLimited(ctx, lim, "check", "--output=json", "-f", format, path)
		var ee *exec.ExitError
		// Exit 3 means leaked clusters only: wasted space, not damage.
		leaksOnly := errors.As(err, &ee) && ee.ExitCode() == 3
		if err != nil && !leaksOnly {
			return Info{}, refuseRun(ctx, name, "check", out, stderr, err)
		}
	}
	return info, nil
}

// refuseRun turns a failed qemu-img run into a refusal; a missing tool or a caller that
// gave up is not the image's fault and stays a plain (retryable) error.
func refuseRun(ctx context.Context, file, what string, stdout []byte, stderr string, err error) error {
	if errors.Is(err, exec.ErrNotFound) {
		return fmt.Errorf("validate %s: %w", file, err)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("validate %s: %w", file, ctx.Err())
	}
	var ee *exec.ExitError
	if what == "check" && errors.As(err, &ee) {
		var res struct {
			Corruptions int `json:"corruptions"`
			CheckErrors int `json:"check-errors"`
		}
		if json.Unmarshal(stdout, &res) == nil && (res.Corruptions > 0 || res.CheckErrors > 0) {
			return refuse(ReasonCorrupt, file, "the image is truncated or damaged: rebuild it and publish it again",
				"qemu-img check found %d corruptions and %d check errors (first: %s)", res.Corruptions, res.CheckErrors, firstLine(stderr))
		}
	}
	return refuse(ReasonCorrupt, file, "check the image with `qemu-img check` and publish it again",
		"qemu-img %s cannot read it (%v): %s", what, err, firstLine(stderr))
}

func firstLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// runLimited runs qemu-img under prlimit(1), which sets RLIMIT_CPU and RLIMIT_AS on itself
// and then execs qemu-img: the limits are in force from qemu-img's first instruction, with
// no window between fork and a later prlimit(2) on the child's pid (Go's os/exec has no
// per-child setrlimit). The wall-clock timeout covers an image that makes qemu-img wait
// rather than compute.
func runLimited(ctx context.Context, lim Limits, args ...string) ([]byte, string, error) {
	qemuImg, err := exec.LookPath("qemu-img")
	if err != nil {
		return nil, "", fmt.Errorf("qemu-img (Debian package qemu-utils) is not installed, run `make deps`: %w", exec.ErrNotFound)
	}
	prlimit, err := exec.LookPath("prlimit")
	if err != nil {
		return nil, "", fmt.Errorf("prlimit (Debian package util-linux) is not installed, run `make deps`: %w", exec.ErrNotFound)
	}
	if lim.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, lim.Timeout)
		defer cancel()
	}
	argv := []string{}
	if lim.CPUSeconds > 0 {
		argv = append(argv, "--cpu="+strconv.Itoa(lim.CPUSeconds))
	}
	if lim.AddressSpace > 0 {
		argv = append(argv, "--as="+strconv.FormatInt(lim.AddressSpace, 10))
	}
	argv = append(argv, "--", qemuImg)
	argv = append(argv, args...)
	cmd := exec.CommandContext(ctx, prlimit, argv...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.Env = []string{"LC_ALL=C"}
	err = cmd.Run()
	if err != nil && ctx.Err() != nil {
		err = fmt.Errorf("qemu-img %s: %w", args[0], ctx.Err())
	}
	return stdout.Bytes(), stderr.String(), err
}
