package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// exposeFlags are `expose`'s options.
type exposeFlags struct {
	name, protocol, serviceType, l2Network string
	port, targetPort                       int32
}

// exposeCommand is `expose vm|vmi NAME --port P`: it creates a Service in
// front of the VM, as virtctl expose does: on the pod network (passt
// forwards the port into the guest), or with --l2-network an L2 Service
// whose endpoints are the VM's addresses on that NAD.
func (o *options) exposeCommand() *cobra.Command {
	var f exposeFlags
	cmd := &cobra.Command{
		Use:   "expose (vm|vmi) NAME --port PORT",
		Short: "Create a Service in front of a VM: on the pod network, or on an L2 network with --l2-network",
		Example: fmt.Sprintf(`  %[1]s expose vm web --port 80 --target-port 8080 --type NodePort
  %[1]s expose vm web --name web-l2 --port 80 --l2-network podvirt-system/l2-bridge`, o.name),
		ValidArgs: []string{"vm", "vmi"},
		Args:      kindAndName,
		RunE: o.report(func(ctx context.Context, s *session, args []string) (string, error) {
			return s.expose(ctx, args[0], args[1], f)
		}),
	}
	fl := cmd.Flags()
	fl.StringVar(&f.name, "name", "", "the Service's name (default: the VM's)")
	fl.Int32Var(&f.port, "port", 0, "the Service's port (required)")
	fl.Int32Var(&f.targetPort, "target-port", 0, "the guest's port (default: --port)")
	fl.StringVar(&f.protocol, "protocol", string(corev1.ProtocolTCP), "TCP or UDP")
	fl.StringVar(&f.serviceType, "type", string(corev1.ServiceTypeClusterIP), "ClusterIP, NodePort or LoadBalancer (an L2 Service is ClusterIP)")
	fl.StringVar(&f.l2Network, "l2-network", "", "a NetworkAttachmentDefinition, NAMESPACE/NAME: the Service's endpoints are the VM's addresses on it")
	return cmd
}

func (s *session) expose(ctx context.Context, kind, name string, f exposeFlags) (string, error) {
	svc, err := s.exposedService(ctx, kind, name, f)
	if err != nil {
		return "", err
	}
	if err := s.c.Create(ctx, svc); err != nil {
		if apierrors.IsAlreadyExists(err) {
			return "", fmt.Errorf("service %s exists in namespace %s already: choose another with --name", svc.Name, s.ns)
		}
		return "", s.apiError(err, "create", "services", svc.Name)
	}
	where := "on the pod network"
	if f.l2Network != "" {
		where = "on " + f.l2Network
	}
	return fmt.Sprintf("service/%s created: port %d → %s %s port %s %s", svc.Name, f.port, kind, name, svc.Spec.Ports[0].TargetPort.String(), where), nil
}

// exposedService checks the flags against the VM and builds the Service.
func (s *session) exposedService(ctx context.Context, kind, name string, f exposeFlags) (*corev1.Service, error) {
	if f.port < 1 || f.port > 65535 {
		return nil, fmt.Errorf("--port %d: want the Service's port, 1 to 65535, like --port 80", f.port)
	}
	if f.targetPort == 0 {
		f.targetPort = f.port
	}
	if f.targetPort < 1 || f.targetPort > 65535 {
		return nil, fmt.Errorf("--target-port %d: want the guest's port, 1 to 65535", f.targetPort)
	}
	protocol := corev1.Protocol(strings.ToUpper(f.protocol))
	if protocol != corev1.ProtocolTCP && protocol != corev1.ProtocolUDP {
		return nil, fmt.Errorf("--protocol %q: want TCP or UDP", f.protocol)
	}
	serviceType := corev1.ServiceType(f.serviceType)
	if !slices.Contains([]corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer}, serviceType) {
		return nil, fmt.Errorf("--type %q: want ClusterIP, NodePort or LoadBalancer", f.serviceType)
	}
	if f.name == "" {
		f.name = name
	}
	if msgs := validation.IsDNS1035Label(f.name); len(msgs) > 0 {
		return nil, fmt.Errorf("service name %q: %s (set --name)", f.name, strings.Join(msgs, "; "))
	}

	// The VMI spec the Service fronts, and the label that picks the VM's
	// VMIs (and their launcher pods).
	var spec *v1.VirtualMachineInstanceSpec
	selector := map[string]string{}
	switch kind {
	case "vm":
		vm, err := s.getVM(ctx, name)
		if err != nil {
			return nil, err
		}
		spec, selector[v1.VMNameLabel] = &vm.Spec.Template.Spec, name
	default:
		vmi, err := s.getVMI(ctx, name)
		if err != nil {
			return nil, err
		}
		if vmi == nil {
			return nil, s.notFound(ctx, "vmi", name)
		}
		spec, selector[v1.VMINameLabel] = &vmi.Spec, name
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: f.name, Namespace: s.ns},
		Spec: corev1.ServiceSpec{
			Type:  serviceType,
			Ports: []corev1.ServicePort{{Protocol: protocol, Port: f.port, TargetPort: intstr.FromInt32(f.targetPort)}},
		},
	}
	if f.l2Network != "" {
		return s.l2Service(svc, kind, name, spec, f.l2Network, selector)
	}
	if err := forwarded(kind, name, spec, protocol, f.targetPort); err != nil {
		return nil, fmt.Errorf("%w; or expose it on its L2 network with --l2-network NAMESPACE/NAD", err)
	}
	svc.Spec.Selector = selector
	return svc, nil
}

// l2Service makes svc an L2 Service: no selector, the NAD and the VMIs in
// annotations, which podvirt's controller turns into EndpointSlices.
func (s *session) l2Service(svc *corev1.Service, kind, name string, spec *v1.VirtualMachineInstanceSpec, nad string, selector map[string]string) (*corev1.Service, error) {
	if svc.Spec.Type != corev1.ServiceTypeClusterIP {
		return nil, fmt.Errorf("--l2-network with --type %s: an L2 Service is ClusterIP (its endpoints are addresses on the L2, not pods)", svc.Spec.Type)
	}
	if !nadRef.MatchString(nad) {
		return nil, fmt.Errorf("--l2-network %q: want a NetworkAttachmentDefinition as NAMESPACE/NAME or NAME", nad)
	}
	nadName := nad[strings.LastIndex(nad, "/")+1:]
	if !slices.ContainsFunc(spec.Networks, func(n v1.Network) bool {
		return n.Multus != nil && n.Multus.NetworkName[strings.LastIndex(n.Multus.NetworkName, "/")+1:] == nadName
	}) {
		return nil, fmt.Errorf("%s %s has no interface on NAD %s: pick one of its Multus networks for --l2-network", kind, name, nad)
	}
	if kind == "vmi" {
		// The L2 selector picks VMIs by label; a VMI knows its own name
		// only when a VM made it.
		return nil, fmt.Errorf("--l2-network picks VMIs by their VM's name: expose vm NAME instead")
	}
	svc.Annotations = map[string]string{v1.L2NetworkAnnotation: nad, v1.L2SelectorAnnotation: v1.VMNameLabel + "=" + selector[v1.VMNameLabel]}
	return svc, nil
}

// forwarded checks that the pod network carries protocol port into the
// guest of spec: it has a pod-network interface that forwards it.
func forwarded(kind, name string, spec *v1.VirtualMachineInstanceSpec, protocol corev1.Protocol, port int32) error {
	ifc := spec.PodInterface()
	if ifc == nil {
		return fmt.Errorf("%s %s has no interface on the pod network, so nothing reaches its guest through a pod", kind, name)
	}
	if len(ifc.Ports) > 0 && !slices.ContainsFunc(ifc.Ports, func(p v1.Port) bool {
		return p.Port == port && (p.Protocol == protocol || (p.Protocol == "" && protocol == corev1.ProtocolTCP))
	}) {
		return fmt.Errorf("%s %s forwards only its listed ports on the pod network, and %s %d is not one: add it to interfaces[%q].ports (the VM restarts to apply it)",
			kind, name, protocol, port, ifc.Name)
	}
	return nil
}
