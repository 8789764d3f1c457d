package driver

import (
	"context"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/container-storage-interface/spec/lib/go/csi"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/diskmeta"
	"github.com/podvirt/podvirt/contracts/upload"
	"github.com/podvirt/podvirt/csi/importer"
	"github.com/podvirt/podvirt/csi/state"
	"github.com/podvirt/podvirt/csi/volume"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// Event reasons on claims. Each also sets the claim's import annotations
// (importstatus.go): ImportStarted and ImportProgress make it Importing,
// ImportCompleted Succeeded, ImportRetrying Retrying and ImportFailed
// Failed.
const (
	ReasonImportStarted   = "ImportStarted"
	ReasonImportProgress  = "ImportProgress"
	ReasonImportCompleted = "ImportCompleted"
	ReasonImportRetrying  = "ImportRetrying"
	ReasonImportFailed    = "ImportFailed"
)

// FromCache is how an ImportCompleted event says that the image was in the
// node's cache and nothing was downloaded for the volume.
const FromCache = "from the node's image cache, nothing downloaded"

// Keys of credentials, in a provisioner secret (req.Secrets, from the
// csi.storage.k8s.io/provisioner-secret-* parameters) or in the Secret
// named by registrySecretName.
const (
	secretUsername      = "username"
	secretPassword      = "password"
	secretCDIAccessKey  = "accessKeyId" // CDI's registry Secret
	secretCDISecretKey  = "secretKey"
	secretDockerConfig  = corev1.DockerConfigJsonKey
	secretDockerConfigO = corev1.DockerConfigKey
)

// resolveImage finds the image a volume is filled from: the claim's
// annotation, else the StorageClass source; with its credentials and CA.
func (d *Driver) resolveImage(ctx context.Context, req *csi.CreateVolumeRequest, p *plan) error {
	source, checksum := p.params.source, ""
	ns, name := p.params.claimNamespace, p.params.claimName
	if name != "" {
		if d.opts.Cluster == nil {
			return status.Errorf(codes.FailedPrecondition, "CreateVolume %q for claim %s/%s: the driver runs without Kubernetes access (--kubeconfig)", p.name, ns, name)
		}
		claim, err := d.opts.Cluster.Claim(ctx, ns, name)
		if err != nil {
			return status.Errorf(codes.Unavailable, "CreateVolume %q: read claim %s/%s for its %s annotation: %v", p.name, ns, name, v1.DiskSourceAnnotation, err)
		}
		p.claim = claim
		if claim.Annotations[v1.DiskBlankAnnotation] == "true" {
			return nil // an empty disk, whatever the StorageClass's source
		}
		if strings.TrimSpace(claim.Annotations[v1.DiskSourceAnnotation]) == upload.Source {
			return d.resolveUpload(p, claim)
		}
		if s := strings.TrimSpace(claim.Annotations[v1.DiskSourceAnnotation]); s != "" {
			if err := checkSourceURL(s); err != nil {
				err = status.Errorf(codes.InvalidArgument, "claim %s/%s annotation %s: %v", ns, name, v1.DiskSourceAnnotation, err)
				msg := status.Convert(err).Message()
				d.event(claim, corev1.EventTypeWarning, ReasonImportFailed, msg)
				// Failed until the annotation is fixed: the next
				// CreateVolume reads it again.
				d.recordImport(claim, importAnnotations(v1.ImportFailed, nil, msg))
				return err
			}
			source = s
		}
		checksum = strings.TrimSpace(claim.Annotations[v1.DiskChecksumAnnotation])
	}
	if source == "" {
		if checksum != "" {
			return status.Errorf(codes.InvalidArgument, "claim %s/%s has a %s annotation but no %s: name the image", ns, name, v1.DiskChecksumAnnotation, v1.DiskSourceAnnotation)
		}
		return nil
	}
	if d.opts.Cache == nil {
		return status.Errorf(codes.FailedPrecondition, "CreateVolume %q: source %s: %v", p.name, source, errNoCache)
	}
	p.failureKey = source + " " + checksum
	if !p.params.sourceAllowed(source) {
		if err := d.rememberedFailure(p); err != nil {
			return err // reported on the claim already
		}
		return d.fail(*p, finalImportError(codes.FailedPrecondition,
			"image %s for volume %q is not allowed by StorageClass parameter %s (%s): name an image from those, or ask the cluster admin to add it there",
			source, p.name, ParamAllowedSources, strings.Join(p.params.allowed, ", ")))
	}
	// With registries, a docker:// source is fetched from them only (importer.Source.Mirrors).
	src := importer.Source{URL: source, Checksum: checksum, Mirrors: p.params.mirrors, AllowPrivate: p.params.allowPrivate}
	insecure, err := p.params.insecureFor(source)
	if err != nil {
		return status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
	}
	src.Insecure = insecure
	if len(req.GetSecrets()) > 0 {
		if err := credentials(&src, req.GetSecrets(), "the provisioner secret"); err != nil {
			return status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
		}
	}
	if p.params.secretName != "" {
		sns := p.params.secretNamespace
		if sns == "" {
			sns = ns
		}
		if d.opts.Cluster == nil || sns == "" {
			return status.Errorf(codes.FailedPrecondition, "CreateVolume %q: %s=%s needs Kubernetes access and a namespace (%s)", p.name, ParamRegistrySecretName, p.params.secretName, ParamRegistrySecretNamespace)
		}
		sec, err := d.opts.Cluster.Secret(ctx, sns, p.params.secretName)
		if err != nil {
			return status.Errorf(codeOf(err), "CreateVolume %q: read registry Secret %s/%s: %v", p.name, sns, p.params.secretName, err)
		}
		data := map[string]string{}
		for k, v := range sec.Data {
			data[k] = string(v)
		}
		if err := credentials(&src, data, fmt.Sprintf("Secret %s/%s", sns, p.params.secretName)); err != nil {
			return status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
		}
	}
	if p.params.caConfigMap != "" {
		cns := p.params.caNamespace
		if cns == "" {
			cns = ns
		}
		if d.opts.Cluster == nil || cns == "" {
			return status.Errorf(codes.FailedPrecondition, "CreateVolume %q: %s=%s needs Kubernetes access and a namespace (%s)", p.name, ParamCAConfigMap, p.params.caConfigMap, ParamCAConfigMapNamespace)
		}
		cm, err := d.opts.Cluster.ConfigMap(ctx, cns, p.params.caConfigMap)
		if err != nil {
			return status.Errorf(codeOf(err), "CreateVolume %q: read CA ConfigMap %s/%s: %v", p.name, cns, p.params.caConfigMap, err)
		}
		keys := make([]string, 0, len(cm.Data))
		for k := range cm.Data {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			src.CACertsPEM = append(src.CACertsPEM, []byte(strings.TrimSpace(cm.Data[k])+"\n")...)
		}
	}
	p.image = &src
	return nil
}

// resolveUpload plans the import of a claim filled by podvirtctl image-upload.
func (d *Driver) resolveUpload(p *plan, claim *corev1.PersistentVolumeClaim) error {
	if d.opts.Cache == nil {
		return status.Errorf(codes.FailedPrecondition, "CreateVolume %q: upload: %v", p.name, errNoCache)
	}
	src, err := d.uploadSource(claim)
	if err != nil {
		err = status.Errorf(codes.InvalidArgument, "CreateVolume %q: %v", p.name, err)
		msg := status.Convert(err).Message()
		d.event(claim, corev1.EventTypeWarning, ReasonImportFailed, msg)
		d.recordImport(claim, importAnnotations(v1.ImportFailed, nil, msg))
		return err
	}
	p.failureKey = src.URL + " " + string(claim.UID) + " " + src.Checksum
	p.image = src
	return nil
}

// codeOf maps an API error: a missing object is the user's to fix, the
// rest may heal.
func codeOf(err error) codes.Code {
	if apierrors.IsNotFound(err) || apierrors.IsForbidden(err) {
		return codes.FailedPrecondition
	}
	return codes.Unavailable
}

// credentials takes registry credentials from a secret's data.
func credentials(src *importer.Source, data map[string]string, what string) error {
	switch {
	case data[secretDockerConfig] != "":
		src.DockerConfigJSON = []byte(data[secretDockerConfig])
	case data[secretDockerConfigO] != "":
		// The legacy .dockercfg has no "auths" wrapper.
		src.DockerConfigJSON = []byte(`{"auths":` + data[secretDockerConfigO] + `}`)
	case data[secretUsername] != "" || data[secretPassword] != "":
		src.Username, src.Password = data[secretUsername], data[secretPassword]
	case data[secretCDIAccessKey] != "" || data[secretCDISecretKey] != "":
		src.Username, src.Password = data[secretCDIAccessKey], data[secretCDISecretKey]
	default:
		return fmt.Errorf("%s holds no registry credentials: give it keys %s and %s, or make it a kubernetes.io/dockerconfigjson Secret", what, secretUsername, secretPassword)
	}
	return nil
}

// allowedSize is the largest disk the claim takes: its capacity range's
// limit, else what it requires.
func (p plan) allowedSize() int64 { return max(p.size, p.limit) }

// importVolume fills a new volume from the image cache.
func (d *Driver) importVolume(ctx context.Context, p plan, v state.Volume) (state.Volume, error) {
	src := *p.image
	src.MaxDiskSize = p.allowedSize()
	d.event(p.claim, corev1.EventTypeNormal, ReasonImportStarted, fmt.Sprintf("Importing %s for volume %s on node %s", src.URL, p.id, d.opts.NodeID))
	d.recordImport(p.claim, importAnnotations(v1.ImportImporting, nil, ""))
	start := time.Now()
	base, err := d.opts.Cache.Acquire(ctx, src, p.id, d.progressReporter(p))
	if err != nil {
		switch {
		case ctx.Err() != nil:
			d.recordImport(p.claim, importAnnotations(v1.ImportPending, nil, ""))
			return v, status.Errorf(codes.Aborted, "import %s for volume %q interrupted: the driver is stopping; CreateVolume resumes it", src.URL, p.name)
		case importer.IsLargerThanClaim(err):
			return v, d.fail(p, finalImportError(codes.InvalidArgument,
				"image %s does not fit volume %q (%s requested): %v", src.URL, p.name, bytesize.Format(src.MaxDiskSize), err))
		case importer.IsTerminal(err):
			return v, d.fail(p, finalImportError(codes.FailedPrecondition,
				"import %s for volume %q failed and will not be retried: %v. Fix the claim's %s (or %s) annotation and create the claim again",
				src.URL, p.name, err, v1.DiskSourceAnnotation, v1.DiskChecksumAnnotation))
		}
		msg := fmt.Sprintf("import %s for volume %q: %v (retrying)", src.URL, p.name, err)
		d.retrying(p, msg)
		return v, status.Error(codes.Unavailable, msg)
	}
	release := func() {
		if err := d.opts.Cache.Release(p.id); err != nil {
			d.log.Error("release image cache reference", "volume", p.id, "err", err)
		}
	}
	allowed := p.allowedSize()
	if base.VirtualSize > allowed {
		release()
		return v, d.fail(p, finalImportError(codes.InvalidArgument,
			"image %s has a virtual size of %s (%d bytes), larger than the %s (%d bytes) requested for volume %q: request at least %s",
			src.URL, bytesize.Format(base.VirtualSize), base.VirtualSize, bytesize.Format(allowed), allowed, p.name, bytesize.Format(base.VirtualSize)))
	}
	if base.VirtualSize > v.Size {
		v.Size = (base.VirtualSize + 511) &^ 511
	}
	v.Source, v.Digest = src.URL, base.Digest
	meta := diskmeta.Meta{Source: src.URL, Digest: base.Digest}
	overlay := !p.block && p.params.cloneStrategy == CloneOverlay
	v.Overlay = overlay
	if overlay {
		v.Format = diskmeta.FormatQCOW2
	} else if !p.block && !p.params.formatWasExplicit {
		v.Format = base.Format
	}
	dir, tmp := d.VolumeDir(p.id), d.VolumeDir(tmpPrefix+p.id)
	err = build(tmp, dir, func() error {
		if overlay {
			return volume.Overlay(ctx, tmp, base.Path, base.Format, v.Size, meta)
		}
		return volume.Convert(ctx, tmp, base.Path, base.Format, v.Format, v.Size, v.Prealloc, meta)
	})
	if err != nil {
		release()
		err = status.Errorf(codes.Internal, "make volume %q from image %s (%s) on node %s: %v (retrying)", p.name, src.URL, base.Digest, d.opts.NodeID, err)
		d.retrying(p, status.Convert(err).Message())
		return v, err
	}
	if !overlay {
		release() // a copy does not need the cached image any more
	}
	d.removeUpload(src)
	if err := d.store.PutVolume(v); err != nil {
		err = status.Errorf(codes.Internal, "record volume %q on node %s: %v (retrying)", p.name, d.opts.NodeID, err)
		d.retrying(p, status.Convert(err).Message())
		return v, err
	}
	if err := d.store.DeleteFailure(p.name); err != nil {
		d.log.Error("forget old failure", "name", p.name, "err", err)
	}
	how := fmt.Sprintf("a qcow2 overlay of %s on the cached image", bytesize.Format(v.Size))
	if !overlay {
		how = fmt.Sprintf("a %s copy of %s", v.Format, bytesize.Format(v.Size))
	}
	from := "downloaded"
	if base.Cached {
		from = FromCache
	}
	d.event(p.claim, corev1.EventTypeNormal, ReasonImportCompleted, fmt.Sprintf("Volume %s is ready on node %s: %s (%s, %s, virtual size %s) %s, as %s, after %s",
		p.id, d.opts.NodeID, src.URL, base.Digest, base.Format, bytesize.Format(base.VirtualSize), from, how, time.Since(start).Round(time.Millisecond)))
	d.recordImport(p.claim, importAnnotations(v1.ImportSucceeded, nil, ""))
	return v, nil
}

// retrying reports on the claim an import failure the provisioner's next
// call may get past.
func (d *Driver) retrying(p plan, msg string) {
	d.event(p.claim, corev1.EventTypeWarning, ReasonImportRetrying, msg)
	d.recordImport(p.claim, importAnnotations(v1.ImportRetrying, nil, msg))
}

// rememberedFailure is the final import failure remembered for p's image,
// answered again without another attempt or event; nil when there is none.
// The claim shows it, should the driver that failed have stopped before
// writing it there.
func (d *Driver) rememberedFailure(p *plan) error {
	if p.failureKey == "" {
		return nil
	}
	if f, ok := d.store.Failure(p.name); ok && f.Key == p.failureKey {
		d.reassertImport(p.claim, importAnnotations(v1.ImportFailed, nil, f.Message))
		return status.Error(codes.Code(f.Code), f.Message)
	}
	return nil
}

// fail remembers a final import error for the claim and reports it there.
func (d *Driver) fail(p plan, err error) error {
	st := status.Convert(err)
	if perr := d.store.PutFailure(state.Failure{Name: p.name, Key: p.failureKey, Code: uint32(st.Code()), Message: st.Message(), At: time.Now().UTC()}); perr != nil {
		d.log.Error("remember import failure", "name", p.name, "err", perr)
	}
	d.event(p.claim, corev1.EventTypeWarning, ReasonImportFailed, st.Message())
	d.recordImport(p.claim, importAnnotations(v1.ImportFailed, nil, st.Message()))
	return err
}

// progressReporter turns import progress into Normal events and the
// import-progress annotation on the claim, at most one of each per
// ProgressInterval, plus one whenever the mirror changes.
func (d *Driver) progressReporter(p plan) func(importer.Progress) {
	var mu sync.Mutex
	var last time.Time
	mirror := ""
	return func(pr importer.Progress) {
		mu.Lock()
		defer mu.Unlock()
		now := time.Now()
		if !last.IsZero() && now.Sub(last) < d.opts.ProgressInterval && pr.Mirror == mirror {
			return
		}
		last, mirror = now, pr.Mirror
		msg := fmt.Sprintf("Importing %s: %s", p.image.URL, progressText(pr))
		d.log.Info("import progress", "volume", p.id, "bytes", pr.Bytes, "total", pr.Total, "rate", pr.Rate, "mirror", pr.Mirror)
		d.event(p.claim, corev1.EventTypeNormal, ReasonImportProgress, msg)
		d.recordImport(p.claim, importAnnotations(v1.ImportImporting, &pr, ""))
	}
}

func progressText(pr importer.Progress) string {
	s := bytesize.Format(pr.Bytes)
	if pr.Total > 0 {
		s += fmt.Sprintf(" of %s (%d%%)", bytesize.Format(pr.Total), pr.Bytes*100/pr.Total)
	}
	s += fmt.Sprintf(" at %s/s", bytesize.Format(int64(pr.Rate)))
	if pr.Mirror != "" {
		s += " from " + pr.Mirror
	}
	return s
}

func (d *Driver) event(claim *corev1.PersistentVolumeClaim, eventType, reason, msg string) {
	if claim == nil || d.opts.Cluster == nil {
		return
	}
	d.opts.Cluster.Event(claim, eventType, reason, msg)
}
