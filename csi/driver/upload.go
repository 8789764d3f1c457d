package driver

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/csi/importer"
)

// Keys the kubelet adds to a CSI inline volume's context (podInfoOnMount).
const (
	contextEphemeral    = "csi.storage.k8s.io/ephemeral"
	contextPodNamespace = "csi.storage.k8s.io/pod.namespace"
)

// uploadDir is where the upload for the claim with this UID arrives: the
// upload pod's CSI inline volume. It is named by UID so that a claim made
// again under the same name starts afresh.
func (d *Driver) uploadDir(claim *corev1.PersistentVolumeClaim) string {
	return filepath.Join(d.opts.StateDir, "uploads", string(claim.UID))
}

// uploadSource is the import of a claim filled by podvirtctl image-upload:
// the file its upload pod appends to, read as it grows, checked against the
// claim's checksum and length.
func (d *Driver) uploadSource(claim *corev1.PersistentVolumeClaim) (*importer.Source, error) {
	what := fmt.Sprintf("claim %s/%s (%s: %s)", claim.Namespace, claim.Name, v1.DiskSourceAnnotation, upload.Source)
	length, err := strconv.ParseInt(claim.Annotations[upload.SizeAnnotation], 10, 64)
	if err != nil || length <= 0 {
		return nil, fmt.Errorf("%s has no valid %s (%q): create it with podvirtctl image-upload", what, upload.SizeAnnotation, claim.Annotations[upload.SizeAnnotation])
	}
	checksum := strings.TrimSpace(claim.Annotations[v1.DiskChecksumAnnotation])
	if checksum == "" {
		return nil, fmt.Errorf("%s has no %s: create it with podvirtctl image-upload", what, v1.DiskChecksumAnnotation)
	}
	return &importer.Source{
		URL:      "upload://" + claim.Namespace + "/" + claim.Name,
		Checksum: checksum,
		Upload:   &importer.Upload{Path: filepath.Join(d.uploadDir(claim), upload.PartFile), Length: length},
	}, nil
}

// claimRecordSuffix names the file beside an upload directory that says
// whose claim it is (namespace/name).
const claimRecordSuffix = ".claim"

// removeUpload drops an upload's bytes once they are in the cache.
func (d *Driver) removeUpload(src importer.Source) {
	if src.Upload == nil {
		return
	}
	d.removeUploadDir(filepath.Dir(src.Upload.Path))
}

func (d *Driver) removeUploadDir(dir string) {
	if err := os.RemoveAll(dir); err != nil {
		d.log.Error("remove an upload", "dir", dir, "err", err)
		return
	}
	if err := os.Remove(dir + claimRecordSuffix); err != nil && !os.IsNotExist(err) {
		d.log.Error("remove an upload's claim record", "dir", dir, "err", err)
	}
}

// uploadSweepInterval is how often uploads nobody waits for any more are
// looked for.
const uploadSweepInterval = time.Hour

// sweepUploads removes, now and then every uploadSweepInterval, the bytes
// of uploads whose claim is gone or going (deleted half-way) or filled.
func (d *Driver) sweepUploads() {
	defer d.wg.Done()
	for {
		d.sweepUploadsOnce(d.ctx)
		select {
		case <-d.ctx.Done():
			return
		case <-time.After(uploadSweepInterval):
		}
	}
}

func (d *Driver) sweepUploadsOnce(ctx context.Context) {
	dirs, _ := filepath.Glob(filepath.Join(d.opts.StateDir, "uploads", "*"))
	for _, dir := range dirs {
		if strings.HasSuffix(dir, claimRecordSuffix) {
			continue
		}
		record, err := os.ReadFile(dir + claimRecordSuffix)
		ns, name, ok := strings.Cut(string(record), "/")
		if err != nil || !ok {
			d.log.Info("removing an upload without a claim record", "dir", dir)
			d.removeUploadDir(dir)
			continue
		}
		claim, err := d.opts.Cluster.Claim(ctx, ns, name)
		switch {
		case apierrors.IsNotFound(err) || (err == nil && (string(claim.UID) != filepath.Base(dir) || claim.Spec.VolumeName != "" || claim.DeletionTimestamp != nil)):
			d.log.Info("removing an upload no claim waits for", "dir", dir, "claim", ns+"/"+name)
			d.removeUploadDir(dir)
		case err != nil:
			d.log.Info("cannot tell whether an upload's claim waits; kept", "dir", dir, "claim", ns+"/"+name, "err", err)
		}
	}
}

// publishUpload is NodePublishVolume of an upload pod's CSI inline volume:
// the claim's upload directory, given to the pod's user. Only a pod in the
// claim's own namespace gets it, and only while the claim waits for its
// upload.
func (d *Driver) publishUpload(ctx context.Context, req *csi.NodePublishVolumeRequest) (*csi.NodePublishVolumeResponse, error) {
	attrs := req.GetVolumeContext()
	ns, name, target := attrs[contextPodNamespace], attrs[upload.VolumeAttributeClaim], req.GetTargetPath()
	if name == "" || ns == "" || target == "" {
		return nil, status.Errorf(codes.InvalidArgument, "NodePublishVolume %s: a CSI inline volume of %s is an upload pod's: it needs the %s attribute, the pod's namespace and a target path", req.GetVolumeId(), Name, upload.VolumeAttributeClaim)
	}
	if d.opts.Cluster == nil {
		return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: the driver runs without Kubernetes access (--kubeconfig)", req.GetVolumeId())
	}
	claim, err := d.opts.Cluster.Claim(ctx, ns, name)
	if err != nil {
		return nil, status.Errorf(codeOf(err), "NodePublishVolume %s: read claim %s/%s the upload is for: %v", req.GetVolumeId(), ns, name, err)
	}
	if claim.Annotations[v1.DiskSourceAnnotation] != upload.Source {
		return nil, status.Errorf(codes.PermissionDenied, "NodePublishVolume %s: claim %s/%s does not wait for an upload (%s is not %q)", req.GetVolumeId(), ns, name, v1.DiskSourceAnnotation, upload.Source)
	}
	if claim.Spec.VolumeName != "" {
		return nil, status.Errorf(codes.FailedPrecondition, "NodePublishVolume %s: claim %s/%s is filled already (bound to %s)", req.GetVolumeId(), ns, name, claim.Spec.VolumeName)
	}
	dir := d.uploadDir(claim)
	// The claim's name, kept beside the directory (which the pod owns),
	// lets sweepUploads find out whether the claim still waits.
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", req.GetVolumeId(), err)
	}
	if err := os.WriteFile(dir+claimRecordSuffix, []byte(ns+"/"+name), 0o600); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", req.GetVolumeId(), err)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: %v", req.GetVolumeId(), err)
	}
	if err := os.Chown(dir, upload.UID, upload.UID); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: give %s to the upload pod's user: %v", req.GetVolumeId(), dir, err)
	}
	if !d.lock(volumeKey(req.GetVolumeId())) {
		return nil, status.Errorf(codes.Aborted, "NodePublishVolume %s: another operation on the volume is in progress; retry", req.GetVolumeId())
	}
	defer d.unlock(volumeKey(req.GetVolumeId()))
	if err := os.MkdirAll(target, 0o750); err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: create %s: %v", req.GetVolumeId(), target, err)
	}
	mounted, err := mounter.IsMountPoint(target)
	if err != nil {
		return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: check %s: %v", req.GetVolumeId(), target, err)
	}
	if !mounted {
		if err := mounter.Mount(dir, target, "", []string{"bind"}); err != nil {
			return nil, status.Errorf(codes.Internal, "NodePublishVolume %s: bind-mount %s at %s: %v", req.GetVolumeId(), dir, target, err)
		}
	}
	d.log.Info("upload volume published", "claim", ns+"/"+name, "dir", dir, "target", target)
	return &csi.NodePublishVolumeResponse{}, nil
}
