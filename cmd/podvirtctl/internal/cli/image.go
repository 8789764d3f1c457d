package cli

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	gcrv1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/spf13/cobra"
	"golang.org/x/term"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/containerdisk"
	"github.com/podvirt/podvirt/csi/image"
	"github.com/podvirt/podvirt/internal/bytesize"
)

// registriesParam is the podvirt StorageClass parameter listing the registry
// mirrors its imports fetch from (csi/driver.ParamRegistries).
const registriesParam = "registries"

// registryFlags are the flags push and inspect share.
type registryFlags struct {
	mirrors  []string
	insecure bool
}

func (f *registryFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringArrayVar(&f.mirrors, "mirror", nil, "another registry HOST[:PORT] holding the same REPOSITORY:TAG (repeatable)")
	cmd.Flags().BoolVar(&f.insecure, "insecure", false, "allow plain-HTTP registries and TLS certificates that do not verify")
}

// imageCommand groups the commands that publish VM disks as containerDisks.
func (o *options) imageCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Publish a VM disk file as a containerDisk to registries, and inspect one",
	}
	cmd.AddCommand(o.imagePushCommand(), o.imageInspectCommand())
	return cmd
}

// imagePushCommand is `image push FILE REF`: validate the disk as a node
// would, build the containerDisk, push it to every registry, check that
// they all serve it.
func (o *options) imagePushCommand() *cobra.Command {
	var f registryFlags
	var storageClass, compress string
	cmd := &cobra.Command{
		Use:   "push FILE REGISTRY/REPOSITORY:TAG",
		Short: "Check a qcow2 or raw disk file as podvirt's nodes would, and push it as a containerDisk to a registry and its mirrors",
		Long: `push checks FILE with the same rules the CSI driver applies to an import (qcow2 or raw by its
header, no backing or data file, not encrypted, a sane virtual size), so nothing a node would refuse is
published. It then builds a containerDisk without Docker (the file as /disk/<name>, owned by 107:107,
mode 0440: what KubeVirt's docs build with a Dockerfile), pushes it to REGISTRY and to every mirror
(the same REPOSITORY:TAG there), and checks that every registry serves the same digest.
Credentials come from your docker config (docker login). The same file always gives the same digest.`,
		Example: fmt.Sprintf("  %s image push fedora.qcow2 registry-a.example.com/vms/fedora:40 --mirror registry-b.example.com\n"+
			"  %s image push fedora.qcow2 registry-a.example.com/vms/fedora:40 --storage-class podvirt-mirrored\n"+
			"  %s image push disk.img 127.0.0.1:5000/vms/test:1 --insecure --compress none", o.name, o.name, o.name),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 2 {
				return fmt.Errorf("%s needs a disk file and an image reference, got %d arguments: %s", cmd.CommandPath(), len(args), cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			comp, err := containerdisk.ParseCompression(compress)
			if err != nil {
				return fmt.Errorf("--compress: %w", err)
			}
			return o.push(cmd.Context(), args[0], args[1], f, storageClass, comp)
		},
	}
	f.add(cmd)
	cmd.Flags().StringVar(&storageClass, "storage-class", "", "push also to the registries the podvirt StorageClass NAME imports from (its registries parameter; needs the kubeconfig)")
	cmd.Flags().StringVar(&compress, "compress", string(containerdisk.Gzip), "layer compression: gzip (compressed once, in $TMPDIR) or none")
	return cmd
}

// imageInspectCommand is `image inspect REF`: what disk the image holds
// and which registries serve it.
func (o *options) imageInspectCommand() *cobra.Command {
	var f registryFlags
	cmd := &cobra.Command{
		Use:   "inspect REGISTRY/REPOSITORY:TAG",
		Short: "Show a containerDisk's disk (file, format, virtual size), its digest, and which registries serve it",
		Long: `inspect reads the image's manifest from REGISTRY and every mirror, and the disk's header from
one of them (only the first bytes of the layer are downloaded). It fails when a registry does not
serve the image, serves another digest, or when podvirt's nodes would refuse the disk.`,
		Example: fmt.Sprintf("  %s image inspect registry-a.example.com/vms/fedora:40 --mirror registry-b.example.com", o.name),
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) != 1 {
				return fmt.Errorf("%s needs one image reference, got %d arguments: %s", cmd.CommandPath(), len(args), cmd.UseLine())
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			return o.inspect(cmd.Context(), args[0], f)
		},
	}
	f.add(cmd)
	return cmd
}

// registries is where an image reference is published: its own registry
// first, then the mirrors, each once.
type registries struct {
	ref   name.Reference // as the user wrote it
	hosts []string
	opts  []name.Option
	flags registryFlags
}

func newRegistries(ref string, tagOnly bool, f registryFlags, more []string) (*registries, error) {
	opts := []name.Option{name.StrictValidation}
	if f.insecure {
		opts = append(opts, name.Insecure)
	}
	var r name.Reference
	var err error
	if tagOnly {
		r, err = name.NewTag(ref, opts...)
	} else {
		r, err = name.ParseReference(ref, opts...)
	}
	if err != nil {
		want := "REGISTRY/REPOSITORY:TAG"
		if !tagOnly {
			want += " (or @sha256:…)"
		}
		return nil, fmt.Errorf("image reference %q: %w: write %s with the registry's host, e.g. registry.example.com/vms/fedora:40", ref, err, want)
	}
	rs := &registries{ref: r, opts: opts, flags: f, hosts: []string{r.Context().RegistryStr()}}
	for _, h := range append(slices.Clone(f.mirrors), more...) {
		reg, err := name.NewRegistry(h, opts...)
		if err != nil || strings.ContainsAny(h, "/@") {
			return nil, fmt.Errorf("mirror %q is not a registry host: write HOST or HOST:PORT, without a repository (the mirror holds the same %s)", h, r.Context().RepositoryStr())
		}
		if !slices.Contains(rs.hosts, reg.RegistryStr()) {
			rs.hosts = append(rs.hosts, reg.RegistryStr())
		}
	}
	return rs, nil
}

// on is the reference on registry host.
func (rs *registries) on(host string) (name.Reference, error) {
	repo := host + "/" + rs.ref.Context().RepositoryStr()
	if d, ok := rs.ref.(name.Digest); ok {
		return name.NewDigest(repo+"@"+d.DigestStr(), rs.opts...)
	}
	return name.NewTag(repo+":"+rs.ref.Identifier(), rs.opts...)
}

// remoteOptions reach the registries with the user's docker credentials;
// --insecure also skips TLS verification (plain HTTP comes from
// name.Insecure).
func (rs *registries) remoteOptions(ctx context.Context) []remote.Option {
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	if rs.flags.insecure {
		tr.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true} //nolint:gosec // only with --insecure
	}
	return []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuthFromKeychain(authn.DefaultKeychain),
		remote.WithUserAgent("podvirtctl"), remote.WithPlatform(gcrv1.Platform{OS: "linux", Architecture: "amd64"})}
}

// storageClassRegistries reads the registries parameter of a podvirt
// StorageClass.
func (o *options) storageClassRegistries(ctx context.Context, className string) ([]string, error) {
	s, err := o.session()
	if err != nil {
		return nil, fmt.Errorf("--storage-class %s: %w", className, err)
	}
	sc, err := s.kube.StorageV1().StorageClasses().Get(ctx, className, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		return nil, fmt.Errorf("StorageClass %q not found: `kubectl get storageclass` lists them", className)
	case apierrors.IsForbidden(err):
		return nil, fmt.Errorf("not allowed to get StorageClass %q: %w\nask a cluster admin for a ClusterRole granting verb \"get\" on resource \"storageclasses\" (API group storage.k8s.io), or name the registries with --mirror", className, err)
	case err != nil:
		return nil, fmt.Errorf("get StorageClass %q: %w", className, err)
	}
	if sc.Provisioner != v1.CSIDriverName {
		return nil, fmt.Errorf("StorageClass %q is not podvirt's: its provisioner is %s, not %s; name a podvirt StorageClass, or the registries with --mirror", className, sc.Provisioner, v1.CSIDriverName)
	}
	regs := strings.FieldsFunc(sc.Parameters[registriesParam], func(r rune) bool { return r == ',' || r == '\n' || r == ' ' || r == '\t' || r == '\r' })
	if len(regs) == 0 {
		return nil, fmt.Errorf("StorageClass %q has no %s parameter, so its claims fetch from the registry their source names: push without --storage-class, or set the parameter", className, registriesParam)
	}
	return regs, nil
}

// push validates file, builds its containerDisk and pushes it everywhere.
func (o *options) push(ctx context.Context, file, ref string, f registryFlags, storageClass string, comp containerdisk.Compression) error {
	var more []string
	if storageClass != "" {
		var err error
		if more, err = o.storageClassRegistries(ctx, storageClass); err != nil {
			return err
		}
	}
	rs, err := newRegistries(ref, true, f, more)
	if err != nil {
		return err
	}
	if _, err := containerdisk.CheckFile(file); err != nil {
		return fmt.Errorf("nothing was pushed: %w", err)
	}
	info, err := checkDisk(ctx, file, "push", "nothing was pushed")
	if err != nil {
		return err
	}
	progress := o.progress()
	var buildProgress func(done, total int64)
	if progress != nil {
		what := "hashing " + file
		if comp == containerdisk.Gzip {
			what = "compressing " + file
		}
		buildProgress = func(done, total int64) { progress.show(what, done, total) }
	}
	img, err := containerdisk.Build(ctx, file, containerdisk.Options{Compression: comp, Progress: buildProgress})
	progress.end()
	if err != nil {
		return fmt.Errorf("nothing was pushed: %w", err)
	}
	defer img.Close()
	digest, err := img.Digest()
	if err != nil {
		return err
	}
	fmt.Fprintf(o.streams.Out, "%s: %s, virtual size %s; containerDisk %s\n", img.Disk, info.Format, bytesize.Format(info.VirtualSize), digest)

	opts := rs.remoteOptions(ctx)
	failed := map[string]error{}
	for _, host := range rs.hosts {
		to, err := rs.on(host)
		if err != nil {
			failed[host] = err
			continue
		}
		if err := o.pushOne(to, img, opts); err != nil {
			failed[host] = err
		}
	}
	// Every registry is asked again, after all the pushes: what counts is
	// what each serves now.
	var bad []string
	for _, host := range rs.hosts {
		to, _ := rs.on(host)
		if err := failed[host]; err != nil {
			bad = append(bad, fmt.Sprintf("%s: push: %v", host, registryHint(err, host)))
			continue
		}
		desc, err := remote.Head(to, opts...)
		switch {
		case err != nil:
			bad = append(bad, fmt.Sprintf("%s: pushed, but asking for it again failed: %v", host, registryHint(err, host)))
		case desc.Digest != digest:
			bad = append(bad, fmt.Sprintf("%s: serves %s for %s, not the pushed %s (did another push of the same tag run meanwhile?)", host, desc.Digest, to, digest))
		default:
			fmt.Fprintf(o.streams.Out, "%s %s\n", to, desc.Digest)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%d of %d registries do not serve %s:\n  %s", len(bad), len(rs.hosts), digest, strings.Join(bad, "\n  "))
	}
	return nil
}

// diskHint says what to do about a refused file in terms of this file and
// this command (verb: push, upload), where csi/image speaks of an image
// already published.
func diskHint(file string, e *image.Error, verb string) string {
	flat := strings.TrimSuffix(file, filepath.Ext(file)) + "-flat.qcow2"
	switch e.Reason {
	case image.ReasonBackingFile, image.ReasonDataFile:
		return fmt.Sprintf("make a self-contained copy with `qemu-img convert -O qcow2 %s %s` and %s that", file, flat, verb)
	case image.ReasonUnsupported:
		return fmt.Sprintf("convert it with `qemu-img convert -O qcow2 %s %s` and %s that", file, flat, verb)
	case image.ReasonNotAnImage, image.ReasonEmpty:
		return verb + " a qcow2 or raw disk image, decompressed"
	}
	return e.Hint
}

// pushOne pushes img to ref, with a progress line on a terminal.
func (o *options) pushOne(ref name.Reference, img gcrv1.Image, opts []remote.Option) error {
	p := o.progress()
	if p == nil {
		return remote.Write(ref, img, opts...)
	}
	updates := make(chan gcrv1.Update, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for u := range updates {
			if u.Error == nil {
				p.show("pushing to "+ref.Context().RegistryStr(), u.Complete, u.Total)
			}
		}
	}()
	err := remote.Write(ref, img, append(slices.Clone(opts), remote.WithProgress(updates))...)
	<-done // Write closes updates
	p.end()
	return err
}

// registryHint adds what to do to a registry's error.
func registryHint(err error, host string) error {
	var te *transport.Error
	switch {
	case errors.As(err, &te) && (te.StatusCode == http.StatusUnauthorized || te.StatusCode == http.StatusForbidden):
		return fmt.Errorf("%w (log in with `docker login %s`, or put credentials for it in your docker config)", err, host)
	case errors.As(err, &te) && te.StatusCode == http.StatusNotFound:
		return fmt.Errorf("%w (not found)", err)
	case strings.Contains(err.Error(), "http: server gave HTTP response to HTTPS client"),
		strings.Contains(err.Error(), "certificate"):
		return fmt.Errorf("%w (a plain-HTTP registry, or one whose certificate is not trusted here, needs --insecure)", err)
	}
	return fmt.Errorf("%w (is the registry up and reachable?)", err)
}

// inspect reports what ref holds and where.
func (o *options) inspect(ctx context.Context, ref string, f registryFlags) error {
	rs, err := newRegistries(ref, false, f, nil)
	if err != nil {
		return err
	}
	opts := rs.remoteOptions(ctx)
	type answer struct {
		desc *remote.Descriptor
		err  error
	}
	answers := map[string]answer{}
	var want *remote.Descriptor // the first registry's that serves it
	for _, host := range rs.hosts {
		on, err := rs.on(host)
		if err == nil {
			var desc *remote.Descriptor
			desc, err = remote.Get(on, opts...)
			answers[host] = answer{desc, err}
			if err == nil && want == nil {
				want = desc
			}
			continue
		}
		answers[host] = answer{nil, err}
	}
	out := tabwriter.NewWriter(o.streams.Out, 0, 4, 2, ' ', 0)
	defer out.Flush()
	fmt.Fprintf(out, "image:\t%s\n", rs.ref)
	var problems []string
	if want != nil {
		fmt.Fprintf(out, "digest:\t%s\n", want.Digest)
		img, err := want.Image()
		if err != nil {
			return fmt.Errorf("%s is a %s, not an image a VM disk can come from: %w", rs.ref, want.MediaType, err)
		}
		d, err := containerdisk.ReadDisk(img, rs.ref.String(), image.DefaultLimits)
		printDisk(out, d)
		var refusal *image.Error
		switch {
		case errors.As(err, &refusal):
			fmt.Fprintf(out, "refused:\t%v\n", err)
			problems = append(problems, "podvirt's nodes would refuse it: "+err.Error())
		case err != nil:
			return fmt.Errorf("read the disk of %s: %w", rs.ref, err)
		}
	}
	fmt.Fprintln(out, "registries:")
	for _, host := range rs.hosts {
		a := answers[host]
		switch {
		case a.err != nil:
			fmt.Fprintf(out, "  %s\tmissing: %v\n", host, a.err)
			problems = append(problems, fmt.Sprintf("%s: %v", host, registryHint(a.err, host)))
		case a.desc.Digest != want.Digest:
			fmt.Fprintf(out, "  %s\tdiffers: %s\n", host, a.desc.Digest)
			problems = append(problems, fmt.Sprintf("%s serves %s, not %s: push the image there again", host, a.desc.Digest, want.Digest))
		default:
			fmt.Fprintf(out, "  %s\tholds it\n", host)
		}
	}
	if len(problems) > 0 {
		return fmt.Errorf("%s:\n  %s", rs.ref, strings.Join(problems, "\n  "))
	}
	return nil
}

func printDisk(out io.Writer, d containerdisk.Disk) {
	if d.Path == "" {
		return
	}
	comp := ""
	if d.Compression != image.None {
		comp = ", " + string(d.Compression) + "-compressed"
	}
	fmt.Fprintf(out, "disk:\t%s (%s file%s)\n", d.Path, bytesize.Format(d.FileSize), comp)
	if d.Format != "" {
		fmt.Fprintf(out, "format:\t%s\n", d.Format)
	} else {
		fmt.Fprintln(out, "format:\tknown after decompression (qcow2 or raw)")
	}
	if d.VirtualSize > 0 {
		fmt.Fprintf(out, "virtual size:\t%s (%d bytes)\n", bytesize.Format(d.VirtualSize), d.VirtualSize)
	}
}

// progressLine is a progress line on a terminal's stderr.
type progressLine struct {
	w     io.Writer
	last  time.Time
	shown bool
}

// progress is a progress line when stderr is a terminal, nil otherwise.
func (o *options) progress() *progressLine {
	f, ok := o.streams.ErrOut.(*os.File)
	if !ok || !term.IsTerminal(int(f.Fd())) {
		return nil
	}
	return &progressLine{w: f}
}

func (p *progressLine) show(what string, done, total int64) {
	if p == nil || (time.Since(p.last) < 100*time.Millisecond && done < total) {
		return
	}
	p.last, p.shown = time.Now(), true
	pct := 0
	if total > 0 {
		pct = int(done * 100 / total)
	}
	fmt.Fprintf(p.w, "\r\x1b[K%s: %s of %s (%d%%)", what, bytesize.Format(done), bytesize.Format(total), pct)
}

func (p *progressLine) end() {
	if p != nil && p.shown {
		fmt.Fprintln(p.w)
		p.shown = false
	}
}
