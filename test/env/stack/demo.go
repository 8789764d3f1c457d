package stack

import (
	"context"
	"fmt"
	"io"
	"net"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/podvirt/podvirt/api/scheme"
	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/test/env/chart"
	"github.com/podvirt/podvirt/test/env/cluster"
)

// The demo's names.
const (
	Release        = "podvirt"
	Namespace      = "podvirt-system"
	VMNetwork      = "l2-bridge"  // the chart's bridge-mode NAD, for VMs (guest: tap)
	MacvlanNetwork = "l2-macvlan" // the chart's macvlan NAD, for VMs (guest: tap)
	VMPort         = 8080         // the guests serve HTTP here (busybox httpd)
)

// PodNetwork names the NAD for plain pods on the same L2 as the VMs on
// nad, sharing its IPAM store.
func PodNetwork(nad string) string { return nad + "-pods" }

// Options configure Install and the demo.
type Options struct {
	// Dir holds the registries, helm's state and the CSI driver's state
	// (host paths); the demo puts it under the cluster dir so `make down`
	// removes it.
	Dir string
	// Detach keeps the registries running after this process exits.
	Detach   bool
	Progress io.Writer
	// Set are more chart values (helm --set), after the stack's own.
	Set []string
}

func (o Options) say(format string, args ...any) {
	if o.Progress != nil {
		fmt.Fprintf(o.Progress, "[demo] "+format+"\n", args...)
	}
}

// Stack is podvirt installed on a cluster with its registry pair.
type Stack struct {
	Cluster *cluster.Cluster
	Client  client.Client
	Mirrors *Mirrors
	Helm    *chart.Helm
	opts    Options
}

// Install starts the registry pair on the node's address, then builds and
// imports the images and installs the chart with a StorageClass naming
// both mirrors (the stopped one first) and the bridge-mode NAD.
func Install(ctx context.Context, c *cluster.Cluster, opts Options) (*Stack, error) {
	cfg, err := c.RESTConfig()
	if err != nil {
		return nil, err
	}
	sch, err := scheme.New()
	if err != nil {
		return nil, err
	}
	cl, err := client.New(cfg, client.Options{Scheme: sch})
	if err != nil {
		return nil, err
	}
	opts.say("building the test guest and pushing it to a registry pair on %s (the first mirror is then stopped)", c.NodeIP())
	m, err := StartMirrors(ctx, filepath.Join(opts.Dir, "registries"), c.NodeIP().String(), opts.Detach)
	if err != nil {
		return nil, err
	}
	opts.say("mirrors: %s (down), %s (up); image %s@%s", m.Down.Addr, m.Up.Addr, GuestSource, m.Digest)
	h, err := chart.NewHelm(filepath.Join(opts.Dir, "helm"), c.Kubeconfig())
	if err != nil {
		m.Stop()
		return nil, err
	}
	seg := c.Segment()
	opts.say("NADs: %s (bridge %s-l2, uplink %s) and %s (macvlan on %s), both on the L2 segment every node has; each with a -pods twin for plain pods (whereabouts)",
		VMNetwork, c.NodeName(), seg.BridgeUplink, MacvlanNetwork, seg.MacvlanMaster)
	if err := dropUnmanagedPodNetworks(ctx, cl); err != nil {
		m.Stop()
		return nil, err
	}
	hosts := strings.Join(m.Hosts(), ",")
	err = chart.Install(ctx, c, h, chart.InstallOptions{
		Release: Release, Namespace: Namespace,
		Set: append([]string{
			"storageClass.registries={" + hosts + "}",
			"storageClass.insecureRegistries={" + hosts + "}",
			// Imports may not reach the cluster's pods and Services; the
			// mirrors listen on the node's address, outside both, so the
			// class needs no allowPrivateSources.
			"csi.podCIDRs={" + c.PodSubnet() + "}",
			"csi.serviceCIDRs={" + c.ServiceSubnet() + "}",
			"storageClass.default=true",
			"networks.bridge.create=true",
			"networks.bridge.pods.create=true",
			"networks.bridge.name=" + VMNetwork,
			// Named after the cluster, so its `down` removes the bridge
			// podvirt-l2 creates on the first node (the others' go with
			// their network namespaces).
			"networks.bridge.bridge=" + c.NodeName() + "-l2",
			"networks.bridge.uplink=" + seg.BridgeUplink,
			"networks.macvlan.create=true",
			"networks.macvlan.pods.create=true",
			"networks.macvlan.name=" + MacvlanNetwork,
			"networks.macvlan.master=" + seg.MacvlanMaster,
			// Plain pods on any node share one address store.
			"networks.bridge.pods.ipam=whereabouts",
			"networks.macvlan.pods.ipam=whereabouts",
			"networks.whereabouts.kubeconfig=" + c.Whereabouts().Kubeconfig,
			"networks.whereabouts.configurationPath=" + c.Whereabouts().ConfigurationPath,
		}, opts.Set...),
		Timeout:  "15m",
		Progress: progressPrefix(opts.Progress),
	})
	if err != nil {
		m.Stop()
		return nil, err
	}
	return &Stack{Cluster: c, Client: cl, Mirrors: m, Helm: h, opts: opts}, nil
}

// dropUnmanagedPodNetworks deletes the -pods twin NADs an earlier demo
// made itself, so the chart, which makes them now, can install them.
func dropUnmanagedPodNetworks(ctx context.Context, cl client.Client) error {
	for _, nad := range []string{VMNetwork, MacvlanNetwork} {
		obj := &unstructured.Unstructured{}
		obj.SetAPIVersion("k8s.cni.cncf.io/v1")
		obj.SetKind("NetworkAttachmentDefinition")
		err := cl.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: PodNetwork(nad)}, obj)
		if apierrors.IsNotFound(err) || meta.IsNoMatchError(err) || err == nil && obj.GetLabels()["app.kubernetes.io/managed-by"] == "Helm" {
			continue
		}
		if err == nil {
			err = cl.Delete(ctx, obj)
		}
		if client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("removing NAD %s/%s of an earlier demo: %w", Namespace, PodNetwork(nad), err)
		}
	}
	return nil
}

func progressPrefix(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// VM is a VM on the bridge L2 with a disk imported from the mirrors; its
// guest sets its hostname and serves HTTP on VMPort through cloud-init.
func VM(name string, strategy v1.RunStrategy) *v1.VirtualMachine {
	return VMOn(name, strategy, VMNetwork)
}

// VMOn is VM with its NIC on the NAD nad.
func VMOn(name string, strategy v1.RunStrategy, nad string) *v1.VirtualMachine {
	fs := corev1.PersistentVolumeFilesystem
	return &v1.VirtualMachine{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace},
		Spec: v1.VirtualMachineSpec{
			RunStrategy: strategy,
			DiskTemplates: []v1.DiskTemplate{{
				ObjectMeta: v1.DiskTemplateMeta{
					Name:        name + "-root",
					Annotations: map[string]string{v1.DiskSourceAnnotation: GuestSource},
				},
				Spec: corev1.PersistentVolumeClaimSpec{
					AccessModes: []corev1.PersistentVolumeAccessMode{corev1.ReadWriteOnce},
					VolumeMode:  &fs,
					Resources: corev1.VolumeResourceRequirements{
						Requests: corev1.ResourceList{corev1.ResourceStorage: resource.MustParse("256Mi")},
					},
				},
			}},
			Template: v1.VirtualMachineInstanceTemplateSpec{Spec: v1.VirtualMachineInstanceSpec{
				Domain: v1.DomainSpec{
					Memory: v1.Memory{Guest: resource.MustParse("256Mi")},
					Devices: v1.Devices{
						Disks:      []v1.Disk{{Name: "root"}, {Name: "cloudinit"}},
						Interfaces: []v1.Interface{{Name: "l2", Binding: v1.InterfaceBindingTap}},
					},
				},
				Networks: []v1.Network{{Name: "l2", NetworkSource: v1.NetworkSource{Multus: &v1.MultusNetwork{NetworkName: nad}}}},
				Volumes: []v1.Volume{
					{Name: "root", VolumeSource: v1.VolumeSource{PersistentVolumeClaim: &v1.PersistentVolumeClaimVolumeSource{ClaimName: name + "-root"}}},
					{Name: "cloudinit", VolumeSource: v1.VolumeSource{CloudInitNoCloud: &v1.CloudInitNoCloudSource{UserData: fmt.Sprintf(
						"#cloud-config\nhostname: %s\nruncmd:\n  - echo hello from %s > /tmp/index.html\n  - httpd -p %d -h /tmp\n", name, name, VMPort)}}},
				},
			}},
		},
	}
}

// SpreadLabel groups VMs that Spread keeps on different nodes.
const SpreadLabel = "podvirt.io/spread"

// Spread labels vm as one of group and, on a cluster of more than one node,
// gives it the required pod anti-affinity a user would write so that no
// two of group share a node.
func (s *Stack) Spread(vm *v1.VirtualMachine, group string) {
	tmpl := &vm.Spec.Template
	if tmpl.ObjectMeta.Labels == nil {
		tmpl.ObjectMeta.Labels = map[string]string{}
	}
	tmpl.ObjectMeta.Labels[SpreadLabel] = group
	if len(s.Cluster.Nodes()) < 2 {
		return
	}
	tmpl.Spec.Affinity = &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{
		RequiredDuringSchedulingIgnoredDuringExecution: []corev1.PodAffinityTerm{{
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{SpreadLabel: group}},
			TopologyKey:   corev1.LabelHostname,
		}},
	}}
}

// OtherNode is a node of the cluster that is not node (node itself on a
// one-node cluster): where a probe shows that something crosses nodes.
func (s *Stack) OtherNode(node string) string {
	for _, n := range s.Cluster.Nodes() {
		if n.Name != node {
			return n.Name
		}
	}
	return node
}

// WaitRunning waits until the VM's VMI is Running with an address on its
// L2 interface, and returns the VMI.
func (s *Stack) WaitRunning(ctx context.Context, name string, timeout time.Duration) (*v1.VirtualMachineInstance, error) {
	var vmi v1.VirtualMachineInstance
	err := Poll(ctx, timeout, func() (bool, error) {
		if err := s.Client.Get(ctx, client.ObjectKey{Namespace: Namespace, Name: name}, &vmi); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		if vmi.Status.Phase == v1.Failed {
			return false, fmt.Errorf("vmi %s Failed: %s %s", name, vmi.Status.Reason, vmi.Status.Message)
		}
		return vmi.Status.Phase == v1.Running && GuestIP(&vmi) != "", nil
	})
	if err != nil {
		return nil, fmt.Errorf("vm %s: not Running with an L2 address after %s (phase %q, interfaces %+v): %w",
			name, timeout, vmi.Status.Phase, vmi.Status.Interfaces, err)
	}
	return &vmi, nil
}

// L2Identity is the MAC and address of the VMI's L2 interface.
func L2Identity(vmi *v1.VirtualMachineInstance) string {
	for _, i := range vmi.Status.Interfaces {
		if i.Name == "l2" {
			return fmt.Sprintf("MAC %s, address %s", i.MAC, i.IP)
		}
	}
	return "interface not reported yet"
}

// RestartKeepsIdentity restarts the VM name (its VMI is replaced, as
// `podvirtctl restart` does) and checks that the new VMI has the MAC and
// the address of the old one.
func (s *Stack) RestartKeepsIdentity(ctx context.Context, name string) error {
	old, err := s.WaitRunning(ctx, name, 10*time.Minute)
	if err != nil {
		return err
	}
	before := L2Identity(old)
	s.opts.say("restarting vm %s (L2 %s)", name, before)
	if err := s.Client.Delete(ctx, old, client.Preconditions{UID: &old.UID}); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("restarting vm %s: %w", name, err)
	}
	var vmi *v1.VirtualMachineInstance
	if err := Poll(ctx, 10*time.Minute, func() (bool, error) {
		v, err := s.WaitRunning(ctx, name, 10*time.Minute)
		vmi = v
		return err == nil && v.UID != old.UID, err
	}); err != nil {
		return fmt.Errorf("vm %s after its restart: %w", name, err)
	}
	if after := L2Identity(vmi); after != before {
		return fmt.Errorf("vm %s changed its L2 identity on restart: before %s, after %s", name, before, after)
	}
	s.opts.say("vm %s restarted: same L2 %s", name, before)
	return nil
}

// GuestIP is the VMI's address on its L2 interface ("" until known).
func GuestIP(vmi *v1.VirtualMachineInstance) string {
	for _, i := range vmi.Status.Interfaces {
		// The stack's VMs name it l2; one made by `podvirtctl create vm`
		// has a single NIC named after its NAD.
		if (i.Name == "l2" || len(vmi.Status.Interfaces) == 1) && i.IP != "" {
			ip, _, _ := strings.Cut(i.IP, "/")
			return ip
		}
	}
	return ""
}

// ensureVM makes want exist: it creates the VM, reuses the one already
// there when it is healthy (a second `make demo`), or deletes and creates
// it again when it is not. Its disks are kept either way. It says which,
// and reports whether the VM is new.
func (s *Stack) ensureVM(ctx context.Context, want *v1.VirtualMachine) (bool, error) {
	var have v1.VirtualMachine
	err := s.Client.Get(ctx, client.ObjectKeyFromObject(want), &have)
	switch {
	case apierrors.IsNotFound(err):
		s.opts.say("creating vm %s (disk from %s, NIC on NAD %s)", want.Name, GuestSource, VMNetwork)
	case err != nil:
		return false, fmt.Errorf("reading vm %s: %w", want.Name, err)
	default:
		why, err := s.unhealthy(ctx, &have, want)
		if err != nil {
			return false, err
		}
		if why == "" {
			s.opts.say("reusing vm %s: it is already here and healthy (%s)", want.Name, have.Status.PrintableStatus)
			return false, nil
		}
		s.opts.say("replacing vm %s: %s (its disks are kept)", want.Name, why)
		if err := s.DeleteVM(ctx, want.Name, 5*time.Minute); err != nil {
			return false, err
		}
	}
	if err := s.Client.Create(ctx, want); err != nil {
		return false, fmt.Errorf("creating vm %s: %w", want.Name, err)
	}
	return true, nil
}

// unhealthy says why the existing VM have cannot stand for want ("" when
// it can): it is being deleted, it no longer runs as want does, or its VMI
// has ended. A VMI still starting is healthy: the demo waits for it.
func (s *Stack) unhealthy(ctx context.Context, have, want *v1.VirtualMachine) (string, error) {
	if have.DeletionTimestamp != nil {
		return "it is being deleted", nil
	}
	if have.Spec.RunStrategy != want.Spec.RunStrategy {
		return fmt.Sprintf("its run strategy is %s, not %s", have.Spec.RunStrategy, want.Spec.RunStrategy), nil
	}
	var vmi v1.VirtualMachineInstance
	err := s.Client.Get(ctx, client.ObjectKeyFromObject(have), &vmi)
	switch {
	case apierrors.IsNotFound(err):
		return "", nil // the controller is about to start it
	case err != nil:
		return "", fmt.Errorf("reading vmi %s: %w", have.Name, err)
	case vmi.Status.Phase == v1.Failed || vmi.Status.Phase == v1.Succeeded:
		return fmt.Sprintf("its VMI is %s (%s %s)", vmi.Status.Phase, vmi.Status.Reason, vmi.Status.Message), nil
	}
	return "", nil
}

// DeleteVM deletes the VM name (its disks stay) and waits until it and its
// VMI are gone.
func (s *Stack) DeleteVM(ctx context.Context, name string, timeout time.Duration) error {
	meta := metav1.ObjectMeta{Namespace: Namespace, Name: name}
	return s.deleteAndWait(ctx, "vm "+name, timeout, &v1.VirtualMachine{ObjectMeta: meta}, &v1.VirtualMachineInstance{ObjectMeta: meta})
}

// deleteAndWait deletes obj (what, in messages) and waits until it, and the
// objects also (a VM's VMI, say), are gone.
func (s *Stack) deleteAndWait(ctx context.Context, what string, timeout time.Duration, obj client.Object, also ...client.Object) error {
	if err := s.Client.Delete(ctx, obj); client.IgnoreNotFound(err) != nil {
		return fmt.Errorf("deleting %s: %w", what, err)
	}
	err := Poll(ctx, timeout, func() (bool, error) {
		for _, o := range append([]client.Object{obj}, also...) {
			if err := s.Client.Get(ctx, client.ObjectKeyFromObject(o), o.DeepCopyObject().(client.Object)); !apierrors.IsNotFound(err) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("%s: it or what goes with it still exists %s after delete: %w", what, timeout, err)
	}
	return nil
}

// nameOnL2 gives the VM vm a DNS name on the L2, as a user would: a
// headless L2 Service of the same name, whose EndpointSlice podvirt's
// controller fills with the VM's L2 address, so the cluster DNS answers
// NAME.NAMESPACE with it. It returns that name.
func (s *Stack) nameOnL2(ctx context.Context, vm string) (string, error) {
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: vm, Namespace: Namespace, Annotations: map[string]string{
			v1.L2NetworkAnnotation:  VMNetwork,
			v1.L2SelectorAnnotation: v1.VMNameLabel + "=" + vm,
		}},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Name: "http", Port: VMPort}}},
	}
	// A second run finds it there.
	if err := s.Client.Create(ctx, svc); err != nil && !apierrors.IsAlreadyExists(err) {
		return "", fmt.Errorf("vm %s: its L2 Service: %w", vm, err)
	}
	name := vm + "." + Namespace
	s.opts.say("vm %s has the name %s.svc.%s (a headless L2 Service on %s)", vm, name, cluster.ClusterDomain, VMNetwork)
	return name, nil
}

// ProbeFromPod runs a plain pod on PodNetwork(vmNAD), on node (any when
// ""), that connects to addr (host:port; host an address or a name the
// cluster DNS answers) and returns its log.
func (s *Stack) ProbeFromPod(ctx context.Context, name, vmNAD, node, addr string, timeout time.Duration) (string, error) {
	if err := s.Cluster.ImportProbe(ctx); err != nil {
		return "", err
	}
	pod := cluster.ProbePod(name, map[string]string{v1.MultusNetworksAnnotation: PodNetwork(vmNAD)})
	pod.Namespace = Namespace
	// One an interrupted run left behind would stand in the way.
	if err := s.deleteAndWait(ctx, "pod "+pod.Namespace+"/"+pod.Name, time.Minute, pod.DeepCopy()); err != nil {
		return "", err
	}
	// A name of a new Service resolves a moment later (CoreDNS, the
	// EndpointSlice); the probe tries for a minute.
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_CONNECT", Value: addr}, {Name: "PROBE_CONNECT_WITHIN", Value: "60s"}}
	pod.Spec.NodeName = node
	_, logs, err := s.Cluster.RunToCompletion(ctx, pod, timeout)
	// Its log is read; the pod would only stand in the way of a rerun or an
	// uninstall.
	_ = s.Client.Delete(ctx, pod)
	if err != nil {
		return "", fmt.Errorf("a pod on NAD %s (node %q) reaching %s: %w", PodNetwork(vmNAD), node, addr, err)
	}
	return logs, nil
}

// WatchFromPod runs a pod on node, on the pod twin of NAD vmNAD, that
// connects to addr every interval for span (podvirt-probe's
// PROBE_CONNECT_EVERY), once it runs; wait returns its summary line.
func (s *Stack) WatchFromPod(ctx context.Context, name, vmNAD, node, addr string, every, span time.Duration) (wait func() (string, error), err error) {
	if err := s.Cluster.ImportProbe(ctx); err != nil {
		return nil, err
	}
	pod := cluster.ProbePod(name, map[string]string{v1.MultusNetworksAnnotation: PodNetwork(vmNAD)})
	pod.Namespace = Namespace
	if err := s.deleteAndWait(ctx, "pod "+pod.Namespace+"/"+pod.Name, time.Minute, pod.DeepCopy()); err != nil {
		return nil, err
	}
	pod.Spec.Containers[0].Env = []corev1.EnvVar{{Name: "PROBE_CONNECT", Value: addr},
		{Name: "PROBE_CONNECT_EVERY", Value: every.String()}, {Name: "PROBE_CONNECT_FOR", Value: span.String()}}
	pod.Spec.NodeName = node
	type result struct {
		logs string
		err  error
	}
	done := make(chan result, 1)
	go func() {
		_, logs, err := s.Cluster.RunToCompletion(ctx, pod, span+3*time.Minute)
		done <- result{logs, err}
	}()
	err = Poll(ctx, 2*time.Minute, func() (bool, error) {
		cur := &corev1.Pod{}
		if err := s.Client.Get(ctx, client.ObjectKeyFromObject(pod), cur); err != nil {
			return false, client.IgnoreNotFound(err)
		}
		return cur.Status.Phase != corev1.PodPending, nil
	})
	if err != nil {
		return nil, fmt.Errorf("pod %s watching %s did not start: %w", name, addr, err)
	}
	return func() (string, error) {
		r := <-done
		_ = s.Client.Delete(context.Background(), pod)
		return r.logs, r.err
	}, nil
}

// Poll calls cond every 250 ms until it returns true or an error, or
// timeout passes (then the error is the context's).
func Poll(ctx context.Context, timeout time.Duration, cond func() (bool, error)) error {
	return wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, timeout, true, func(context.Context) (bool, error) {
		return cond()
	})
}

// PingCommand is a guest shell line that waits (up to a minute) until ip
// answers — the peer may still be getting its DHCP lease — then pings it
// three times; its output ends with busybox's "… % packet loss".
func PingCommand(ip string) string {
	return fmt.Sprintf("for i in $(seq 60); do ping -c 1 -W 1 %s >/dev/null && break; done; ping -c 3 -W 2 %s", ip, ip)
}

// HostPort joins an IP and a port.
func HostPort(ip string, port int) string { return net.JoinHostPort(ip, fmt.Sprint(port)) }

// Demo is `make demo` after the cluster is up: podvirt installed, two VMs
// from the same image on the bridge L2, on different nodes when there are
// two, each reaching the other, a plain pod on the other node reaching
// each.
func Demo(ctx context.Context, c *cluster.Cluster, opts Options) error {
	start := time.Now()
	s, err := Install(ctx, c, opts)
	if err != nil {
		return err
	}
	names := []string{"demo-1", "demo-2"}
	fresh := map[string]bool{}
	for _, n := range names {
		vm := VM(n, v1.RunStrategyAlways)
		s.Spread(vm, "demo")
		if fresh[n], err = s.ensureVM(ctx, vm); err != nil {
			return err
		}
	}
	ips, nodes := map[string]string{}, map[string]string{}
	for _, n := range names {
		vmi, err := s.WaitRunning(ctx, n, 10*time.Minute)
		if err != nil {
			return err
		}
		ips[n], nodes[n] = GuestIP(vmi), vmi.Status.NodeName
		opts.say("vmi %s Running on node %s, L2 %s", n, vmi.Status.NodeName, L2Identity(vmi))
	}
	// A VM is a pet: a new one is restarted once to show it keeps its MAC
	// and address (a second demo run leaves the VMs alone).
	if n := names[1]; fresh[n] {
		if err := s.RestartKeepsIdentity(ctx, n); err != nil {
			return err
		}
	}
	for i, n := range names {
		peer := names[1-i]
		out, err := s.RunInConsole(ctx, n, PingCommand(ips[peer]), 3*time.Minute)
		if err != nil {
			return err
		}
		if !strings.Contains(out, " 0% packet loss") {
			return fmt.Errorf("vm %s could not ping vm %s (%s) over the L2:\n%s", n, peer, ips[peer], out)
		}
		opts.say("vm %s (node %s) pings vm %s (%s, node %s) over the L2: 0%% packet loss", n, nodes[n], peer, ips[peer], nodes[peer])
	}
	for _, n := range names {
		name, err := s.nameOnL2(ctx, n)
		if err != nil {
			return err
		}
		node := s.OtherNode(nodes[n])
		addr := HostPort(name, VMPort)
		logs, err := s.ProbeFromPod(ctx, "demo-probe-"+n, VMNetwork, node, addr, 3*time.Minute)
		if err != nil {
			return err
		}
		opts.say("a plain pod on node %s, NAD %s, reached vm %s by its name %s (%s):\n%s", node, PodNetwork(VMNetwork), n, addr, ips[n], strings.TrimSpace(logs))
	}
	opts.say("done in %s", time.Since(start).Round(time.Second))
	return nil
}
