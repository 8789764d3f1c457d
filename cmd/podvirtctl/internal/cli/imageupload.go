package cli

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// uploadPoll is how often the upload pod's readiness and the import's end
// are looked at: each is one GET, and the user waits on them.
const uploadPoll = 200 * time.Millisecond

// uploadAttempts bounds how often one run resumes an upload whose
// connection broke before it gives up (running the command again resumes).
const uploadAttempts = 5

type uploadFlags struct {
	claim, size, storageClass string
	block                     bool
	timeout                   time.Duration
}

// imageUploadCommand is `image-upload --claim NAME --size SIZE FILE`, virtctl
// image-upload's counterpart: it streams a local disk into a new claim
// through the API server, resumably.
func (o *options) imageUploadCommand() *cobra.Command {
	var f uploadFlags
	cmd := &cobra.Command{
		Use:   "image-upload --claim NAME [--size SIZE] [--storage-class SC] FILE",
		Short: "Upload a local disk image (qcow2 or raw) into a new claim through the API server; run it again to resume",
		Long: `image-upload checks FILE as the nodes would, creates the claim (annotated for an
upload), and streams FILE into it through the API server's port-forward to an
upload pod the controller runs. The CSI driver imports it like an image from a
registry: cached on the node and, with the StorageClass's overlay strategy, the
claim is an overlay on it. An interrupted upload resumes where it stopped when
the same command runs again.`,
		Example: fmt.Sprintf(`  %[1]s image-upload --claim fedora-root --size 20Gi fedora.qcow2
  %[1]s image-upload --claim fedora-root fedora.qcow2   # resume`, o.name),
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.claim == "" {
				return fmt.Errorf("%s needs --claim: the claim to create and fill", cmd.CommandPath())
			}
			s, err := o.session()
			if err != nil {
				return err
			}
			return s.imageUpload(cmd.Context(), args[0], f)
		},
	}
	cmd.Flags().StringVar(&f.claim, "claim", "", "the claim to create and fill (resumed when it exists for the same file)")
	cmd.Flags().StringVar(&f.size, "size", "", "the claim's size, at least the disk's virtual size (default: the virtual size)")
	cmd.Flags().StringVar(&f.storageClass, "storage-class", "", "the claim's StorageClass, one of podvirt's CSI driver (default: the cluster's default)")
	cmd.Flags().BoolVar(&f.block, "block", false, "make a Block claim (a raw disk) instead of Filesystem")
	cmd.Flags().DurationVar(&f.timeout, "timeout", 10*time.Minute, "how long to wait for the upload pod and, after the upload, for the import")
	return cmd
}

func (s *session) imageUpload(ctx context.Context, file string, f uploadFlags) error {
	info, err := checkDisk(ctx, file, "upload", "nothing was uploaded")
	if err != nil {
		return err
	}
	digest, length, err := s.hashFile(ctx, file)
	if err != nil {
		return err
	}
	size := resource.NewQuantity(info.VirtualSize, resource.BinarySI)
	if f.size != "" {
		q, err := resource.ParseQuantity(f.size)
		if err != nil || q.Sign() <= 0 {
			return fmt.Errorf("--size %q: give a quantity such as 20Gi", f.size)
		}
		if q.Value() < info.VirtualSize {
			return fmt.Errorf("--size %s is smaller than %s's virtual size of %s (%d bytes); nothing was uploaded: give at least that", f.size, file, bytesize.Format(info.VirtualSize), info.VirtualSize)
		}
		size = &q
	}
	if err := s.checkUploadClass(ctx, f.storageClass); err != nil {
		return err
	}
	claim, err := s.uploadClaim(ctx, f, digest, length, *size)
	if err != nil {
		return err
	}
	if claim.Spec.VolumeName != "" {
		fmt.Fprintf(s.o.streams.Out, "claim %s/%s holds %s already (%s)\n", s.ns, claim.Name, file, digest)
		return nil
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	pod, err := s.waitUploadPod(ctx, claim.Name, f.timeout)
	if err != nil {
		return err
	}
	fw, err := s.podForwarder(ctx, pod.Name, "127.0.0.1", []string{fmt.Sprintf("0:%d", upload.Port)}, io.Discard)
	if err != nil {
		return fmt.Errorf("port-forward to upload pod %s: %w", pod.Name, err)
	}
	addr, err := serveLocal(fw)
	if err != nil {
		return fmt.Errorf("port-forward to upload pod %s: %w", pod.Name, err)
	}
	start := time.Now()
	resumed, err := s.send(ctx, "http://"+addr+upload.Path, file, length)
	if err != nil {
		return fmt.Errorf("upload %s into claim %s/%s: %w; run the same command again to resume", file, s.ns, claim.Name, err)
	}
	took := time.Since(start)
	sent := length - resumed
	if resumed > 0 {
		fmt.Fprintf(s.o.streams.Out, "resumed at %d of %d bytes\n", resumed, length)
	}
	fmt.Fprintf(s.o.streams.Out, "sent %s in %s (%.1f MB/s) to %s on node %s\n", bytesize.Format(sent), took.Round(time.Millisecond),
		float64(sent)/1e6/max(took.Seconds(), 1e-3), pod.Name, pod.Spec.NodeName)
	return s.waitImported(ctx, claim.Name, file, digest, f.timeout)
}

// checkDisk validates file as podvirt's nodes would and says what to do
// when they would refuse it; verb ("push", "upload") names the command's
// action in the hint and nothing what did not happen.
func checkDisk(ctx context.Context, file, verb, nothing string) (image.Info, error) {
	info, err := image.Validate(ctx, file, file, image.DefaultLimits)
	var refusal *image.Error
	switch {
	case errors.As(err, &refusal):
		refusal.Hint = diskHint(file, refusal, verb)
		return info, fmt.Errorf("podvirt's nodes would refuse this disk, so %s: %w", nothing, err)
	case err != nil: // qemu-img missing (the message names its package), or interrupted
		return info, fmt.Errorf("%s: %w", nothing, err)
	}
	return info, nil
}

// hashFile is file's sha256 and length, with a progress line on a terminal.
func (s *session) hashFile(ctx context.Context, file string) (string, int64, error) {
	in, err := os.Open(file)
	if err != nil {
		return "", 0, err
	}
	defer in.Close()
	fi, err := in.Stat()
	if err != nil {
		return "", 0, err
	}
	h := sha256.New()
	p := s.o.progress()
	r := &progressReader{r: in, total: fi.Size(), show: func(done, total int64) { p.show("hashing "+file, done, total) }}
	_, err = io.Copy(h, readerWithContext(ctx, r))
	p.end()
	if err != nil {
		return "", 0, fmt.Errorf("hash %s: %w", file, err)
	}
	return "sha256:" + hex.EncodeToString(h.Sum(nil)), fi.Size(), nil
}

// checkUploadClass refuses a StorageClass of another provisioner, which
// would ignore the upload and give the claim an empty disk. A class the
// user may not read, or no default class, is left to the API server.
func (s *session) checkUploadClass(ctx context.Context, name string) error {
	classes, err := s.kube.StorageV1().StorageClasses().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil
	}
	for _, sc := range classes.Items {
		chosen := sc.Name == name || (name == "" && sc.Annotations["storageclass.kubernetes.io/is-default-class"] == "true")
		if chosen && sc.Provisioner != v1.CSIDriverName {
			return fmt.Errorf("StorageClass %q is provisioned by %s, not podvirt's %s, so it would not receive the upload; nothing was uploaded: name a podvirt StorageClass with --storage-class",
				sc.Name, sc.Provisioner, v1.CSIDriverName)
		}
	}
	return nil
}

// uploadClaim creates the claim for the upload, or returns the one an
// earlier run made for the same file.
func (s *session) uploadClaim(ctx context.Context, f uploadFlags, digest string, length int64, size resource.Quantity) (*corev1.PersistentVolumeClaim, error) {
	claims := s.kube.CoreV1().PersistentVolumeClaims(s.ns)
	existing, err := claims.Get(ctx, f.claim, metav1.GetOptions{})
	switch {
	case err == nil:
		a := existing.Annotations
		if a[v1.DiskSourceAnnotation] != upload.Source || a[v1.DiskChecksumAnnotation] != digest || a[upload.SizeAnnotation] != strconv.FormatInt(length, 10) {
			return nil, fmt.Errorf("claim %s/%s exists and was not made for uploading this file (%s %s): name another claim, or delete it (kubectl delete pvc -n %s %s)",
				s.ns, f.claim, digest, bytesize.Format(length), s.ns, f.claim)
		}
		return existing, nil
	case !apierrors.IsNotFound(err):
		return nil, fmt.Errorf("read claim %s/%s: %w", s.ns, f.claim, err)
	}
	mode := corev1.PersistentVolumeFilesystem
	if f.block {
		mode = corev1.PersistentVolumeBlock
	}
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{
			Name:   f.claim,
			Labels: map[string]string{upload.ClaimUploadLabel: "true"},
			Annotations: map[string]string{
				v1.DiskSourceAnnotation:   upload.Source,
				v1.DiskChecksumAnnotation: digest,
				upload.SizeAnnotation:     strconv.FormatInt(length, 10),
			},
		},
		Spec: corev1.PersistentVolumeClaimSpec{
			AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
			VolumeMode:  &mode,
			Resources:   corev1.VolumeResourceRequirements{Requests: corev1.ResourceList{corev1.ResourceStorage: size}},
		},
	}
	if f.storageClass != "" {
		claim.Spec.StorageClassName = &f.storageClass
	}
	created, err := claims.Create(ctx, claim, metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("create claim %s/%s: %w", s.ns, f.claim, err)
	}
	fmt.Fprintf(s.o.streams.Out, "created claim %s/%s (%s) for %s\n", s.ns, f.claim, size.String(), digest)
	return created, nil
}

// waitUploadPod waits for the controller to run the claim's upload pod and
// place the claim on its node.
func (s *session) waitUploadPod(ctx context.Context, claim string, timeout time.Duration) (*corev1.Pod, error) {
	deadline := time.Now().Add(timeout)
	var why string
	for {
		c, err := s.kube.CoreV1().PersistentVolumeClaims(s.ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return nil, fmt.Errorf("read claim %s/%s: %w", s.ns, claim, err)
		}
		why = "the controller has not made its upload pod yet (is podvirt-controller running?)"
		if name := c.Annotations[upload.PodAnnotation]; name != "" {
			pod, err := s.kube.CoreV1().Pods(s.ns).Get(ctx, name, metav1.GetOptions{})
			switch {
			case err != nil:
				why = fmt.Sprintf("upload pod %s: %v", name, err)
			case podReady(pod):
				return pod, nil
			default:
				why = fmt.Sprintf("upload pod %s is %s, not ready (kubectl describe pod -n %s %s)", name, pod.Status.Phase, s.ns, name)
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("claim %s/%s: no upload pod ready after %s: %s", s.ns, claim, timeout, why)
		}
		select {
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(uploadPoll):
		}
	}
}

func podReady(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// send uploads file from where the server's bytes end, resuming a few times
// when the connection breaks; it returns the offset it first resumed at.
func (s *session) send(ctx context.Context, url, file string, length int64) (int64, error) {
	client := &http.Client{}
	first := int64(-1)
	var last error
	for attempt := 0; attempt < uploadAttempts; attempt++ {
		off, err := uploadOffset(ctx, client, url, length)
		if err != nil {
			last = err
			continue
		}
		if first < 0 {
			first = off
		}
		if off == length {
			return first, nil
		}
		if err := s.patch(ctx, client, url, file, off, length); err != nil {
			if ctx.Err() != nil {
				return first, ctx.Err()
			}
			last = err
			continue
		}
	}
	return first, last
}

// uploadOffset asks the upload pod how many bytes it holds.
func uploadOffset(ctx context.Context, client *http.Client, url string, length int64) (int64, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, url, nil)
	if err != nil {
		return 0, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return 0, fmt.Errorf("HEAD %s: %s", upload.Path, resp.Status)
	}
	off, err := strconv.ParseInt(resp.Header.Get(upload.OffsetHeader), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("the upload pod answered no %s: %w", upload.OffsetHeader, err)
	}
	if l := resp.Header.Get(upload.LengthHeader); l != strconv.FormatInt(length, 10) {
		return 0, fmt.Errorf("the upload pod expects %s bytes, the file has %d", l, length)
	}
	if off > length {
		return 0, fmt.Errorf("the upload pod holds %d bytes, more than the file's %d", off, length)
	}
	return off, nil
}

// patch sends file from off to its end.
func (s *session) patch(ctx context.Context, client *http.Client, url, file string, off, length int64) error {
	in, err := os.Open(file)
	if err != nil {
		return err
	}
	defer in.Close()
	p := s.o.progress()
	defer p.end()
	body := &progressReader{r: io.NewSectionReader(in, off, length-off), done: off, total: length, show: func(done, total int64) { p.show("uploading "+file, done, total) }}
	req, err := http.NewRequestWithContext(ctx, http.MethodPatch, url, body)
	if err != nil {
		return err
	}
	req.ContentLength = length - off
	req.Header.Set("Content-Type", upload.ContentType)
	req.Header.Set(upload.OffsetHeader, strconv.FormatInt(off, 10))
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return fmt.Errorf("PATCH %s: %s: %s", upload.Path, resp.Status, strings.TrimSpace(string(msg)))
	}
	return nil
}

// waitImported waits for the CSI driver to import the upload into the claim.
func (s *session) waitImported(ctx context.Context, claim, file, digest string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		c, err := s.kube.CoreV1().PersistentVolumeClaims(s.ns).Get(ctx, claim, metav1.GetOptions{})
		if err != nil {
			return fmt.Errorf("read claim %s/%s: %w", s.ns, claim, err)
		}
		phase := v1.DiskImportPhase(c.Annotations[v1.ImportPhaseAnnotation])
		switch {
		case c.Status.Phase == corev1.ClaimBound:
			fmt.Fprintf(s.o.streams.Out, "claim %s/%s holds %s (%s), bound to %s\n", s.ns, claim, file, digest, c.Spec.VolumeName)
			return nil
		case phase == v1.ImportFailed:
			return fmt.Errorf("claim %s/%s: the node refused the upload: %s", s.ns, claim, c.Annotations[v1.ImportErrorAnnotation])
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("claim %s/%s: uploaded, but not imported after %s (import phase %q %s): kubectl describe pvc -n %s %s",
				s.ns, claim, timeout, phase, c.Annotations[v1.ImportErrorAnnotation], s.ns, claim)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(uploadPoll):
		}
	}
}

// progressReader reports how much of total has been read.
type progressReader struct {
	r           io.Reader
	done, total int64
	show        func(done, total int64)
}

func (p *progressReader) Read(b []byte) (int, error) {
	n, err := p.r.Read(b)
	p.done += int64(n)
	p.show(p.done, p.total)
	return n, err
}

// readerWithContext stops reading once ctx ends.
func readerWithContext(ctx context.Context, r io.Reader) io.Reader {
	return readerFunc(func(b []byte) (int, error) {
		if err := ctx.Err(); err != nil {
			return 0, err
		}
		return r.Read(b)
	})
}

type readerFunc func([]byte) (int, error)

func (f readerFunc) Read(b []byte) (int, error) { return f(b) }
