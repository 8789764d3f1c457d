// Package kubevirt converts KubeVirt VirtualMachines (kubevirt.io/v1, with
// CDI DataVolume templates) into podvirt's (podvirt.io/v1alpha1), field by
// field. It reads the input as plain maps rather than with KubeVirt's Go
// modules (heavy, and they would drop fields they do not know), and every
// field it cannot map is reported with its path: nothing is lost without a
// word.
package kubevirt

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// Decode reads YAML or JSON holding one or more objects: documents
// separated by ---, or a List as `kubectl get -o yaml` prints it.
func Decode(r io.Reader) ([]map[string]any, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(r, 4096)
	var objs []map[string]any
	for doc := 1; ; doc++ {
		var obj map[string]any
		err := dec.Decode(&obj)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("document %d is not YAML or JSON: %w", doc, err)
		}
		if len(obj) == 0 {
			continue // an empty document, e.g. after a trailing ---
		}
		if obj["kind"] == "List" {
			items, _ := obj["items"].([]any)
			for i, item := range items {
				m, ok := item.(map[string]any)
				if !ok {
					return nil, fmt.Errorf("document %d: items[%d] is not an object", doc, i)
				}
				objs = append(objs, m)
			}
			continue
		}
		objs = append(objs, obj)
	}
	if len(objs) == 0 {
		return nil, errors.New("no object in the input: want a kubevirt.io/v1 VirtualMachine in YAML or JSON")
	}
	return objs, nil
}

// Name is an object's metadata.name as far as it has one, for messages.
func Name(obj map[string]any) string {
	meta, _ := obj["metadata"].(map[string]any)
	name, _ := meta["name"].(string)
	return name
}

// Convert maps one KubeVirt VirtualMachine onto podvirt's. The findings
// are the fields it could not map; the VM leaves them out, and is only
// usable when no finding is Blocking.
func Convert(obj map[string]any) (*v1.VirtualMachine, []Finding) {
	c := &conversion{droppedClaims: map[string]bool{}, droppedDisks: map[string]bool{}}
	vm := c.vm(c.object("", obj))
	sort.SliceStable(c.findings, func(i, j int) bool { return c.findings[i].Path < c.findings[j].Path })
	return vm, c.findings
}

// conversion is the state of one Convert.
type conversion struct {
	findings
	namespace string
	// droppedClaims are the dataVolumeTemplates that could not be made
	// into disk templates: the volumes using them go too.
	droppedClaims map[string]bool
	// ifaces are the interfaces, read once the networks are known.
	ifaces []pendingIface
	// droppedDisks are disks left out (CD-ROMs, LUNs): their volumes go
	// too.
	droppedDisks map[string]bool
}

func (c *conversion) vm(root *fields) *v1.VirtualMachine {
	vm := &v1.VirtualMachine{}
	vm.APIVersion, vm.Kind = v1.GroupVersion.String(), "VirtualMachine"
	apiVersion, kind := root.str("apiVersion"), root.str("kind")
	if kind != "VirtualMachine" || (apiVersion != "kubevirt.io/v1" && apiVersion != "kubevirt.io/v1alpha3") {
		c.block("kind", fmt.Sprintf("this is a %s %q, not a kubevirt.io/v1 VirtualMachine: convert takes KubeVirt VirtualMachines only", apiVersion, kind))
		return vm
	}
	c.vmMeta(root.object("metadata"), vm)
	spec := root.object("spec")
	vm.Spec.RunStrategy = c.runStrategy(spec)
	for _, dvt := range spec.list("dataVolumeTemplates") {
		if t, ok := c.diskTemplate(dvt); ok {
			vm.Spec.DiskTemplates = append(vm.Spec.DiskTemplates, t)
		}
	}
	tmpl := spec.object("template")
	tm := tmpl.object("metadata")
	vm.Spec.Template.ObjectMeta.Labels = tm.stringMap("labels")
	vm.Spec.Template.ObjectMeta.Annotations = c.annotations(tm, "annotations")
	tm.ignore("creationTimestamp")
	tm.done()
	if !tmpl.has("spec") {
		c.block(tmpl.at("spec"), "the VM has no template spec: it needs at least domain.memory")
	}
	c.vmiSpec(tmpl.object("spec"), &vm.Spec.Template.Spec)
	tmpl.done()
	spec.done()
	root.ignore("status")
	root.done()
	return vm
}

// serverAnnotations are written by KubeVirt or kubectl, not by the VM's
// author: they are left out without a word.
var serverAnnotations = map[string]bool{
	"kubevirt.io/latest-observed-api-version":          true,
	"kubevirt.io/storage-observed-api-version":         true,
	"kubectl.kubernetes.io/last-applied-configuration": true,
}

// kubevirtKey reports whether an annotation or finalizer is KubeVirt's or
// CDI's (kubevirt.io/…, cdi.kubevirt.io/…): podvirt does not act on those.
func kubevirtKey(k string) bool {
	domain, _, ok := strings.Cut(k, "/")
	return ok && (domain == "kubevirt.io" || strings.HasSuffix(domain, ".kubevirt.io"))
}

func (c *conversion) annotations(meta *fields, key string) map[string]string {
	all := meta.stringMap(key)
	keys := make([]string, 0, len(all))
	for k := range all {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		switch {
		case serverAnnotations[k]:
			delete(all, k)
		case kubevirtKey(k):
			c.drop(fmt.Sprintf("%s[%q]", meta.at(key), k), "a KubeVirt annotation: podvirt does not act on it")
			delete(all, k)
		}
	}
	if len(all) == 0 {
		return nil
	}
	return all
}

func (c *conversion) vmMeta(m *fields, vm *v1.VirtualMachine) {
	vm.Name = m.str("name")
	vm.GenerateName = m.str("generateName")
	if vm.Name == "" && vm.GenerateName == "" {
		c.block(m.at("name"), "the VM has no name")
	}
	vm.Namespace = m.str("namespace")
	c.namespace = vm.Namespace
	vm.Labels = m.stringMap("labels")
	vm.Annotations = c.annotations(m, "annotations")
	// What the API server writes, in `kubectl get -o yaml` output.
	m.ignore("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds")
	if v, ok := m.get("finalizers"); ok {
		list, _ := v.([]any)
		for i, f := range list {
			if s, _ := f.(string); !kubevirtKey(s) {
				c.drop(fmt.Sprintf("%s[%d]", m.at("finalizers"), i), "a finalizer of another controller: add it to the podvirt VM yourself if that controller acts on podvirt VMs")
			}
		}
	}
	m.done()
}

// runStrategy maps running: true|false and runStrategy; KubeVirt's VM with
// neither does not start.
func (c *conversion) runStrategy(spec *fields) v1.RunStrategy {
	running := spec.boolean("running")
	strategy := spec.str("runStrategy")
	switch {
	case running != nil && strategy != "":
		c.block(spec.at("running"), "set running or runStrategy, not both (KubeVirt refuses both too)")
	case running != nil && *running:
		return v1.RunStrategyAlways
	case running != nil || strategy == "":
		return v1.RunStrategyHalted
	}
	switch s := v1.RunStrategy(strategy); s {
	case v1.RunStrategyAlways, v1.RunStrategyRerunOnFailure, v1.RunStrategyManual, v1.RunStrategyHalted, v1.RunStrategyOnce:
		return s
	}
	c.block(spec.at("runStrategy"), fmt.Sprintf("%q: podvirt's run strategies are Always, RerunOnFailure, Manual, Halted and Once", strategy))
	return ""
}

// diskTemplate maps a dataVolumeTemplate: its PVC spec, and its source as
// the disk.podvirt.io/source annotation (registry, http), a dataSource
// (pvc clone, snapshot) or nothing (blank). ok is false when the source
// cannot be mapped: a disk without its data is no use, so the template and
// the volumes that use it are left out.
func (c *conversion) diskTemplate(f *fields) (t v1.DiskTemplate, ok bool) {
	f.ignore("apiVersion", "kind", "status")
	meta := f.object("metadata")
	t.ObjectMeta.Name = meta.str("name")
	if t.ObjectMeta.Name == "" {
		c.block(meta.at("name"), "a dataVolumeTemplate needs a name: it is the name of its PVC")
	}
	t.ObjectMeta.Labels = meta.stringMap("labels")
	t.ObjectMeta.Annotations = c.annotations(meta, "annotations")
	meta.ignore("creationTimestamp")
	meta.done()

	spec := f.object("spec")
	switch {
	case spec.has("storage"):
		t.Spec = c.claimSpec(spec.object("storage"))
		spec.drop("pvc", "set storage or pvc, not both")
	case spec.has("pvc"):
		t.Spec = c.claimSpec(spec.object("pvc"))
	default:
		c.block(spec.at("storage"), "a dataVolumeTemplate needs spec.storage (or spec.pvc) with its size")
	}
	if ct := spec.str("contentType"); ct != "" && ct != "kubevirt" {
		c.drop(spec.at("contentType"), fmt.Sprintf("%q: podvirt imports disk images only", ct))
	}
	ok = c.diskSource(spec.object("source"), &t)
	spec.done()
	f.done()
	if !ok {
		c.droppedClaims[t.ObjectMeta.Name] = true
		c.drop(f.path, fmt.Sprintf("dataVolumeTemplate %q is left out, with the volumes that use it: podvirt cannot fill it (see its source)", t.ObjectMeta.Name))
		return t, false
	}
	return t, true
}

const credentialsWhy = "podvirt's StorageClass holds registry and HTTP credentials (parameter registrySecretName), not each disk" //nolint:gosec // an explanation for users, not a credential

func (c *conversion) diskSource(src *fields, t *v1.DiskTemplate) bool {
	annotate := func(source string) {
		if t.ObjectMeta.Annotations == nil {
			t.ObjectMeta.Annotations = map[string]string{}
		}
		t.ObjectMeta.Annotations[v1.DiskSourceAnnotation] = source
	}
	ok := false
	switch {
	case src.has("registry"):
		r := src.object("registry")
		url := r.str("url")
		if strings.HasPrefix(url, "docker://") && len(url) > len("docker://") {
			annotate(url)
			ok = true
		} else {
			c.drop(r.at("url"), fmt.Sprintf("%q: podvirt imports docker://REGISTRY/REPO:TAG images only", url))
		}
		r.ignore("pullMethod") // podvirt's CSI driver pulls the image itself either way
		r.drop("secretRef", credentialsWhy)
		r.done()
	case src.has("http"):
		h := src.object("http")
		url := h.str("url")
		if strings.HasPrefix(url, "https://") || strings.HasPrefix(url, "http://") {
			annotate(url)
			ok = true
		} else {
			c.drop(h.at("url"), fmt.Sprintf("%q: podvirt imports https:// and http:// URLs", url))
		}
		h.drop("secretRef", credentialsWhy)
		h.done()
	case src.has("blank"):
		src.object("blank").done()
		ok = true
	case src.has("pvc"), src.has("snapshot"):
		kind, key, group := "PersistentVolumeClaim", "pvc", ""
		if !src.has("pvc") {
			kind, key, group = "VolumeSnapshot", "snapshot", "snapshot.storage.k8s.io"
		}
		p := src.object(key)
		ns, name := p.str("namespace"), p.str("name")
		if ns != "" && ns != c.namespace {
			c.drop(p.at("namespace"), fmt.Sprintf("podvirt clones and restores within the VM's namespace only; %s %s/%s is in another", kind, ns, name))
		} else if name != "" {
			t.Spec.DataSource = &corev1.TypedLocalObjectReference{Kind: kind, Name: name}
			if group != "" {
				t.Spec.DataSource.APIGroup = &group
			}
			ok = true
		}
		p.done()
	}
	src.done()
	return ok
}

// claimSpec maps a DataVolume's storage or pvc: the PVC spec podvirt's
// CSI driver can serve.
func (c *conversion) claimSpec(f *fields) corev1.PersistentVolumeClaimSpec {
	var spec corev1.PersistentVolumeClaimSpec
	if v, ok := f.get("accessModes"); ok {
		modes, _ := v.([]any)
		for i, m := range modes {
			switch mode := corev1.PersistentVolumeAccessMode(fmt.Sprint(m)); mode {
			case corev1.ReadWriteOnce, corev1.ReadWriteOncePod:
				spec.AccessModes = append(spec.AccessModes, mode)
			default:
				c.drop(fmt.Sprintf("%s[%d]", f.at("accessModes"), i), fmt.Sprintf("%s: podvirt's disks live on one node (ReadWriteOnce)", mode))
			}
		}
	}
	if len(spec.AccessModes) == 0 {
		spec.AccessModes = []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce}
	}
	res := f.object("resources")
	req := res.object("requests")
	if size := req.quantity("storage"); size != nil {
		spec.Resources.Requests = corev1.ResourceList{corev1.ResourceStorage: *size}
	} else {
		c.block(req.at("storage"), "the disk needs a size: at least the image's virtual size")
	}
	req.done()
	res.done()
	if class := f.str("storageClassName"); class != "" {
		spec.StorageClassName = &class
	}
	switch mode := corev1.PersistentVolumeMode(f.str("volumeMode")); mode {
	case "":
	case corev1.PersistentVolumeFilesystem, corev1.PersistentVolumeBlock:
		spec.VolumeMode = &mode
	default:
		c.block(f.at("volumeMode"), fmt.Sprintf("%q: want Filesystem or Block", mode))
	}
	f.done()
	return spec
}

func (c *conversion) vmiSpec(s *fields, out *v1.VirtualMachineInstanceSpec) {
	autoattachPod := c.domain(s.object("domain"), &out.Domain)

	// Volumes and networks left out: their disks and interfaces go too.
	droppedVolumes, droppedNetworks := map[string]bool{}, map[string]bool{}
	for _, vf := range s.list("volumes") {
		if name, _ := vf.m["name"].(string); c.droppedDisks[name] {
			c.drop(vf.path, fmt.Sprintf("volume %q is left out with its disk", name))
			continue
		}
		if vol, ok := c.volume(vf); ok {
			out.Volumes = append(out.Volumes, vol)
		} else {
			droppedVolumes[vol.Name] = true
		}
	}
	networks := map[string]v1.Network{}
	for _, nf := range s.list("networks") {
		if n, ok := c.network(nf); ok {
			out.Networks = append(out.Networks, n)
			networks[n.Name] = n
		} else {
			droppedNetworks[n.Name] = true
		}
	}
	// Interfaces are read after the networks: their binding depends on
	// whether their network is the pod network or a Multus one.
	for _, ifc := range c.ifaces {
		if droppedNetworks[ifc.name] {
			c.drop(ifc.path, fmt.Sprintf("interface %q is left out with its network", ifc.name))
			continue
		}
		nw, found := networks[ifc.name]
		if !found {
			c.block(ifc.path, fmt.Sprintf("interface %q has no network of the same name in %s", ifc.name, s.at("networks")))
			continue
		}
		if i, ok := c.iface(ifc.f, nw); ok {
			out.Domain.Devices.Interfaces = append(out.Domain.Devices.Interfaces, i)
		} else {
			delete(networks, ifc.name)
		}
	}
	var keep []v1.Network
	for _, n := range out.Networks {
		if _, ok := networks[n.Name]; ok {
			keep = append(keep, n)
		}
	}
	out.Networks = keep
	if len(c.ifaces) == 0 && len(out.Networks) == 0 && autoattachPod {
		// KubeVirt gives a VM without interfaces one on the pod network.
		out.Networks = []v1.Network{{Name: v1.DefaultPodNetwork, NetworkSource: v1.NetworkSource{Pod: &v1.PodNetwork{}}}}
		out.Domain.Devices.Interfaces = []v1.Interface{{Name: v1.DefaultPodNetwork, Binding: v1.InterfaceBindingUser}}
	}

	var disks []v1.Disk
	for i, d := range out.Domain.Devices.Disks {
		if droppedVolumes[d.Name] {
			c.drop(fmt.Sprintf("%s.domain.devices.disks[%d]", s.path, i), fmt.Sprintf("disk %q is left out with its volume", d.Name))
			continue
		}
		disks = append(disks, d)
	}
	// KubeVirt gives every volume without a disk one (virtio).
	for _, vol := range out.Volumes {
		if !slices.ContainsFunc(disks, func(d v1.Disk) bool { return d.Name == vol.Name }) {
			disks = append(disks, v1.Disk{Name: vol.Name})
		}
	}
	out.Domain.Devices.Disks = disks

	out.NodeSelector = s.stringMap("nodeSelector")
	c.decodeInto(s, "affinity", &out.Affinity)
	c.decodeInto(s, "tolerations", &out.Tolerations)
	if g, ok := s.integer("terminationGracePeriodSeconds", 0, 86400); ok {
		out.TerminationGracePeriodSeconds = &g
	}
	switch e := s.str("evictionStrategy"); e {
	case "":
	case string(v1.EvictionStrategyLiveMigrate), string(v1.EvictionStrategyNone):
		strategy := v1.EvictionStrategy(e)
		out.EvictionStrategy = &strategy
	default:
		c.drop(s.at("evictionStrategy"), fmt.Sprintf("podvirt's eviction strategies are LiveMigrate and None, not %s: the chart's default applies", e))
	}
	for _, ac := range s.list("accessCredentials") {
		if cred, ok := c.accessCredential(ac); ok {
			out.AccessCredentials = append(out.AccessCredentials, cred)
		}
	}
	s.done()
}

// accessCredential maps an SSH key Secret propagated through NoCloud, the
// one way podvirt puts credentials into a guest.
func (c *conversion) accessCredential(f *fields) (v1.AccessCredential, bool) {
	f.drop("userPassword", "podvirt has no user passwords through the guest agent: set the password in the cloud-init user-data")
	defer f.done()
	if !f.has("sshPublicKey") {
		return v1.AccessCredential{}, false
	}
	key := f.object("sshPublicKey")
	defer key.done()
	src := key.object("source")
	secret := src.object("secret")
	name := secret.str("secretName")
	secret.done()
	src.done()
	pm := key.object("propagationMethod")
	defer pm.done()
	for _, m := range []string{"qemuGuestAgent", "configDrive"} {
		pm.drop(m, "podvirt puts SSH keys into the guest through NoCloud only: add a cloudInitNoCloud volume")
	}
	pm.ignore("noCloud")
	if name == "" || !pm.has("noCloud") {
		if name == "" {
			c.block(src.at("secret.secretName"), "an SSH key credential needs its Secret's name")
		}
		return v1.AccessCredential{}, false
	}
	return v1.AccessCredential{SSHPublicKey: &v1.SSHPublicKeyAccessCredential{
		Source:            v1.SSHPublicKeyAccessCredentialSource{Secret: &v1.AccessCredentialSecretSource{SecretName: name}},
		PropagationMethod: v1.SSHPublicKeyAccessCredentialPropagationMethod{NoCloud: &v1.NoCloudPropagation{}},
	}}, true
}

// decodeInto reads key, a Kubernetes type podvirt takes as it is
// (affinity, tolerations), into out, refusing fields the type lacks.
func (c *conversion) decodeInto(f *fields, key string, out any) {
	v, ok := f.get(key)
	if !ok {
		return
	}
	b, err := json.Marshal(v)
	if err == nil {
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(out)
	}
	if err != nil {
		c.block(f.at(key), fmt.Sprintf("not a valid %s: %v", key, err))
	}
}

// pendingIface is an interface read after the networks.
type pendingIface struct {
	name, path string
	f          *fields
}

// domain maps the virtual hardware; it returns whether KubeVirt would
// attach the pod network to a VM without interfaces.
func (c *conversion) domain(d *fields, out *v1.DomainSpec) (autoattachPod bool) {
	if d.has("cpu") {
		cpu := d.object("cpu")
		out.CPU = &v1.CPU{
			Sockets: cpu.count("sockets", 64),
			Cores:   cpu.count("cores", 256),
			Threads: cpu.count("threads", 8),
			Model:   cpu.str("model"),
		}
		if *out.CPU == (v1.CPU{}) {
			out.CPU = nil
		}
		cpu.done()
	}
	c.memory(d, out)
	if d.has("machine") {
		m := d.object("machine")
		if t := m.str("type"); strings.Contains(t, "rhel") {
			c.drop(m.at("type"), fmt.Sprintf("%q is a machine type of RHEL's QEMU: podvirt uses q35", t))
		} else if t != "" {
			out.Machine = &v1.Machine{Type: t}
		}
		m.done()
	}
	if d.has("firmware") {
		out.Firmware = c.firmware(d.object("firmware"))
	}

	dev := d.object("devices")
	for _, df := range dev.list("disks") {
		if disk, ok := c.disk(df); ok {
			out.Devices.Disks = append(out.Devices.Disks, disk)
		}
	}
	for _, f := range dev.list("interfaces") {
		name, _ := f.m["name"].(string)
		c.ifaces = append(c.ifaces, pendingIface{name: name, path: f.path, f: f})
	}
	out.Devices.AutoattachSerialConsole = dev.boolean("autoattachSerialConsole")
	// KubeVirt attaches a graphics device (VNC) unless told not to;
	// podvirt only when asked.
	if g := dev.boolean("autoattachGraphicsDevice"); g == nil || *g {
		vnc := true
		out.Devices.VNC = &vnc
	}
	out.Devices.AutoattachMemBalloon = dev.boolean("autoattachMemBalloon")
	pod := dev.boolean("autoattachPodInterface")
	out.Devices.AutoattachPodInterface = pod
	dev.done()
	d.done()
	return pod == nil || *pod
}

// memory maps memory.guest, or resources.requests.memory, which KubeVirt
// takes as the guest's memory when there is no memory.guest.
func (c *conversion) memory(d *fields, out *v1.DomainSpec) {
	mem := d.object("memory")
	guest := mem.quantity("guest")
	mem.done()
	res := d.object("resources")
	req := res.object("requests")
	requested := req.quantity("memory")
	const sized = "podvirt's VMs have no resource requests: the controller sizes the launcher pod from the vCPUs and memory.guest"
	req.drop("cpu", sized+" (give the guest vCPUs with domain.cpu)")
	req.done()
	res.drop("limits", sized)
	res.drop("overcommitGuestOverhead", sized)
	res.done()
	switch {
	case guest != nil:
		out.Memory.Guest = *guest
		if requested != nil && requested.Cmp(*guest) != 0 {
			c.drop(req.at("memory"), sized)
		}
	case requested != nil:
		out.Memory.Guest = *requested
	default:
		c.block(d.at("memory.guest"), "the VM has no memory: set domain.memory.guest or domain.resources.requests.memory (podvirt has no instance types)")
		return
	}
	if out.Memory.Guest.Cmp(resource.MustParse(v1.MinGuestMemory)) < 0 {
		c.block(d.at("memory.guest"), fmt.Sprintf("%s is less than podvirt's minimum of %s", out.Memory.Guest.String(), v1.MinGuestMemory))
	}
}

func (c *conversion) firmware(fw *fields) *v1.Firmware {
	out := &v1.Firmware{Serial: fw.str("serial")}
	bl := fw.object("bootloader")
	switch {
	case bl.has("efi"):
		efi := bl.object("efi")
		if sb := efi.boolean("secureBoot"); sb == nil || *sb {
			c.drop(efi.at("secureBoot"), "podvirt's UEFI firmware has no Secure Boot (KubeVirt's efi has it unless secureBoot: false): the guest boots UEFI without it")
		}
		efi.drop("persistent", "podvirt has no persistent UEFI variables")
		efi.done()
		out.Bootloader = v1.BootloaderUEFI
	case bl.has("bios"):
		bios := bl.object("bios")
		bios.drop("useSerial", "podvirt's BIOS has no serial output setting")
		bios.done()
		out.Bootloader = v1.BootloaderBIOS
	}
	bl.done()
	fw.done()
	if *out == (v1.Firmware{}) {
		return nil
	}
	return out
}

// disk maps a disk; ok is false for a device that is not a disk (CD-ROM,
// LUN, floppy): it is left out, and its volume with it.
func (c *conversion) disk(f *fields) (out v1.Disk, ok bool) {
	out.Name = f.str("name")
	for _, device := range []string{"cdrom", "lun", "floppy"} {
		if f.has(device) {
			c.drop(f.at(device), noEquivalent[device]+"; the disk and its volume are left out")
			c.droppedDisks[out.Name] = true
			return out, false
		}
	}
	if f.has("disk") {
		d := f.object("disk")
		switch bus := d.str("bus"); bus {
		case "", "virtio", "sata", "scsi":
			out.Bus = v1.DiskBus(bus)
		default:
			c.drop(d.at("bus"), fmt.Sprintf("podvirt's disk buses are virtio, sata and scsi, not %q: the disk is attached to virtio", bus))
		}
		if ro := d.boolean("readonly"); ro != nil {
			out.ReadOnly = *ro
		}
		d.done()
	}
	if n, ok := f.integer("bootOrder", 1, 64); ok {
		order := uint(n)
		out.BootOrder = &order
	}
	out.Serial = f.str("serial")
	f.done()
	return out, true
}

// volume maps a volume; ok is false when its source cannot be mapped (the
// volume's name is set even then).
func (c *conversion) volume(f *fields) (out v1.Volume, ok bool) {
	out.Name = f.str("name")
	const hotplug = "podvirt has no volume hotplug: the volume is attached at start"
	switch {
	case f.has("containerDisk"):
		cd := f.object("containerDisk")
		if img := cd.str("image"); img != "" {
			out.ContainerDisk = &v1.ContainerDiskSource{Image: img}
		} else {
			c.block(cd.at("image"), "a containerDisk needs an image")
		}
		cd.drop("imagePullPolicy", "podvirt's CSI driver imports the image once into the node's cache: there is no pull policy")
		cd.drop("imagePullSecret", credentialsWhy)
		cd.drop("path", "podvirt takes the one image file under /disk/ of a containerDisk")
		cd.done()
	case f.has("persistentVolumeClaim"):
		p := f.object("persistentVolumeClaim")
		out.PersistentVolumeClaim = &v1.PersistentVolumeClaimVolumeSource{ClaimName: p.str("claimName")}
		if ro := p.boolean("readOnly"); ro != nil {
			out.PersistentVolumeClaim.ReadOnly = *ro
		}
		p.drop("hotpluggable", hotplug)
		p.done()
	case f.has("dataVolume"):
		// A DataVolume's PVC has its name: a template's is a disk
		// template of podvirt's VM, any other an existing PVC.
		dv := f.object("dataVolume")
		name := dv.str("name")
		dv.drop("hotpluggable", hotplug)
		dv.done()
		if c.droppedClaims[name] {
			c.drop(f.path, fmt.Sprintf("volume %q is left out with dataVolumeTemplate %q", out.Name, name))
			f.done()
			return out, false
		}
		out.PersistentVolumeClaim = &v1.PersistentVolumeClaimVolumeSource{ClaimName: name}
	case f.has("cloudInitNoCloud"):
		out.CloudInitNoCloud = c.cloudInit(f.object("cloudInitNoCloud"))
		if out.CloudInitNoCloud == nil {
			c.drop(f.path, fmt.Sprintf("volume %q is left out: it has no data", out.Name))
			f.done()
			return out, false
		}
	}
	f.done()
	if out.VolumeSource == (v1.VolumeSource{}) {
		c.drop(f.path, fmt.Sprintf("volume %q is left out: podvirt's volumes are containerDisk, persistentVolumeClaim, dataVolume (its PVC) and cloudInitNoCloud", out.Name))
		return out, false
	}
	return out, true
}

// cloudInit maps cloudInitNoCloud, decoding the base64 forms: podvirt
// keeps user-data and network-data as text. It is nil when nothing is
// inline.
func (c *conversion) cloudInit(ci *fields) *v1.CloudInitNoCloudSource {
	text := func(plain, encoded string) string {
		s := ci.str(plain)
		b64 := ci.str(encoded)
		if b64 == "" {
			return s
		}
		if s != "" {
			c.block(ci.at(encoded), fmt.Sprintf("set %s or %s, not both", plain, encoded))
			return s
		}
		b, err := base64.StdEncoding.DecodeString(b64)
		switch {
		case err != nil:
			c.block(ci.at(encoded), fmt.Sprintf("not base64: %v", err))
		case !utf8.Valid(b):
			c.block(ci.at(encoded), "decodes to binary data (gzip?): podvirt's cloud-init data is text; decompress it into "+plain)
		default:
			return string(b)
		}
		return ""
	}
	out := &v1.CloudInitNoCloudSource{UserData: text("userData", "userDataBase64"), NetworkData: text("networkData", "networkDataBase64")}
	for key, data := range map[string]string{"userData": out.UserData, "networkData": out.NetworkData} {
		if len(data) > 65536 {
			c.block(ci.at(key), fmt.Sprintf("%d bytes: podvirt takes at most 65536", len(data)))
		}
	}
	out.UserDataSecretRef = secretRef(ci, "secretRef")
	out.NetworkDataSecretRef = secretRef(ci, "networkDataSecretRef")
	ci.done()
	if *out == (v1.CloudInitNoCloudSource{}) {
		return nil
	}
	return out
}

// secretRef reads key as a reference to a Secret by name, or nil.
func secretRef(f *fields, key string) *corev1.LocalObjectReference {
	if !f.has(key) {
		return nil
	}
	ref := f.object(key)
	defer ref.done()
	if name := ref.str("name"); name != "" {
		return &corev1.LocalObjectReference{Name: name}
	}
	return nil
}

func (c *conversion) network(f *fields) (out v1.Network, ok bool) {
	out.Name = f.str("name")
	switch {
	case f.has("pod"):
		p := f.object("pod")
		out.Pod = &v1.PodNetwork{VMNetworkCIDR: p.str("vmNetworkCIDR")}
		p.drop("vmIPv6NetworkCIDR", "podvirt's user-mode networking has no IPv6 guest subnet setting")
		p.done()
	case f.has("multus"):
		m := f.object("multus")
		out.Multus = &v1.MultusNetwork{NetworkName: m.str("networkName")}
		if def := m.boolean("default"); def != nil && *def {
			c.drop(m.at("default"), "a Multus network cannot replace the launcher pod's own network in podvirt: it is attached as a secondary network")
		}
		m.done()
	}
	f.done()
	if out.NetworkSource == (v1.NetworkSource{}) {
		c.drop(f.path, fmt.Sprintf("network %q is left out: podvirt's networks are pod and multus", out.Name))
		return out, false
	}
	return out, true
}

// Interface bindings KubeVirt has, in the order they are looked for.
var bindings = []string{"masquerade", "bridge", "macvtap", "passt", "slirp", "binding", "sriov"}

// iface maps an interface on network nw. ok is false when the interface
// cannot be kept (SR-IOV): its network then goes too.
func (c *conversion) iface(f *fields, nw v1.Network) (out v1.Interface, ok bool) {
	out.Name = f.str("name")
	switch model := f.str("model"); model {
	case "", "virtio", "e1000", "e1000e", "rtl8139":
		out.Model = v1.InterfaceModel(model)
	default:
		c.drop(f.at("model"), fmt.Sprintf("podvirt's NIC models are virtio, e1000, e1000e and rtl8139, not %q: the NIC is virtio", model))
	}
	out.MACAddress = f.str("macAddress")
	f.drop("bootOrder", "podvirt does not boot from the network (PXE)")
	binding := ""
	for _, b := range bindings {
		if f.has(b) {
			if binding != "" {
				c.block(f.at(b), fmt.Sprintf("an interface has one binding: it has %s already", binding))
				continue
			}
			binding = b
		}
	}
	pod := nw.Pod != nil
	out.Binding = v1.InterfaceBindingTap
	if pod {
		out.Binding = v1.InterfaceBindingUser
	}
	ok = true
	switch {
	case binding == "sriov":
		c.drop(f.at("sriov"), noEquivalent["sriov"]+"; the interface and its network are left out")
		ok = false
	case binding == "binding":
		plugin := f.object("binding")
		name := plugin.str("name")
		plugin.done()
		if name != "passt" || !pod {
			c.drop(f.at("binding"), fmt.Sprintf("podvirt has no network binding plugins (%q): the NIC gets podvirt's binding for its network, %s", name, out.Binding))
		}
	case binding == "bridge" && pod:
		c.drop(f.at("bridge"), "podvirt reaches the pod network through passt: the guest has the pod's IP, but only interfaces[].ports come in (every port where the launcher may open that many sockets)")
	case binding == "masquerade" && !pod, (binding == "passt" || binding == "slirp") && !pod, binding == "macvtap" && pod:
		c.drop(f.at(binding), fmt.Sprintf("KubeVirt's %s binding does not go with this network; podvirt attaches it with binding %s", binding, out.Binding))
	}
	// Otherwise masquerade, passt and slirp on the pod network are user;
	// bridge and macvtap on a Multus network are tap (the NAD, which must
	// be a podvirt-l2 one, decides bridge or macvlan).
	if binding != "" && binding != "sriov" && binding != "binding" {
		f.object(binding).done()
	}
	for _, pf := range f.list("ports") {
		if !pod {
			c.drop(pf.path, "ports are forwarded on the pod network only; on a Multus network the guest has its own address")
			pf.ignore("name", "port", "protocol")
			pf.done()
			continue
		}
		port := v1.Port{Name: pf.str("name"), Protocol: corev1.Protocol(strings.ToUpper(pf.str("protocol")))}
		if port.Protocol != "" && port.Protocol != corev1.ProtocolTCP && port.Protocol != corev1.ProtocolUDP {
			c.drop(pf.path, fmt.Sprintf("podvirt forwards TCP and UDP ports, not %s", port.Protocol))
			pf.ignore("port")
			pf.done()
			continue
		}
		if n, ok := pf.integer("port", 1, 65535); ok {
			port.Port = int32(n)
			out.Ports = append(out.Ports, port)
		}
		pf.done()
	}
	f.ignore(bindings...)
	f.done()
	return out, ok
}
