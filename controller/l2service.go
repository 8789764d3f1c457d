package controller

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	"github.com/podvirt/podvirt/api/v1alpha1"
)

// L2 Services: a Service annotated with podvirt.io/l2-network (a NAD) and
// podvirt.io/l2-selector (a label selector over VMIs) gets EndpointSlices
// holding the VMIs' addresses on that network, so clients on the L2 reach
// the VMs through the Service's name (headless) or its ClusterIP.
//
// The Service has no spec.selector: with one, Kubernetes' own EndpointSlice
// controller would keep slices for it too, holding the addresses of the
// launcher pods (which carry the VMI's labels) on the pod network. Without
// one, Kubernetes leaves its slices to others; ours say so with the
// endpointslice.kubernetes.io/managed-by label.

// Reasons of the events on a Service the L2 Service reconciler cannot serve.
const (
	ReasonL2ServiceInvalid  = "InvalidL2Service"
	ReasonL2SelectorClash   = "SelectorConflict"
	ReasonL2SliceNameInUse  = "EndpointSliceNameInUse"
	l2SliceSuffix           = "-l2"
	l2SliceSuffixIPv6       = "-l2-ipv6"
	l2SliceNameInUseRecheck = 30 * time.Second
)

// L2ServiceReconciler keeps the EndpointSlices of L2 Services.
type L2ServiceReconciler struct {
	Client client.Client
	// APIReader reads slices the cache does not hold: those not managed
	// by podvirt.
	APIReader client.Reader
	Recorder  eventRecorder
}

// isL2Service says whether obj (a Service) carries the L2 network
// annotation.
func isL2Service(obj client.Object) bool {
	_, ok := obj.GetAnnotations()[v1alpha1.L2NetworkAnnotation]
	return ok
}

// SetupWithManager registers the reconciler with mgr.
func (r *L2ServiceReconciler) SetupWithManager(mgr ctrl.Manager) error {
	// A Service that loses the annotation is still seen, so its slices go.
	annotated := predicate.Funcs{
		CreateFunc:  func(e event.CreateEvent) bool { return isL2Service(e.Object) },
		UpdateFunc:  func(e event.UpdateEvent) bool { return isL2Service(e.ObjectOld) || isL2Service(e.ObjectNew) },
		DeleteFunc:  func(e event.DeleteEvent) bool { return isL2Service(e.Object) },
		GenericFunc: func(e event.GenericEvent) bool { return isL2Service(e.Object) },
	}
	return ctrl.NewControllerManagedBy(mgr).
		Named("l2service").
		For(&corev1.Service{}, builder.WithPredicates(annotated)).
		Owns(&discoveryv1.EndpointSlice{}).
		// On an update the map runs for the old and the new VMI, so a
		// VMI whose labels stop matching leaves the Service's slice.
		Watches(&v1alpha1.VirtualMachineInstance{}, handler.EnqueueRequestsFromMapFunc(r.servicesOf)).
		Complete(r)
}

// servicesOf maps a VMI to the L2 Services in its namespace whose selector
// matches its labels.
func (r *L2ServiceReconciler) servicesOf(ctx context.Context, vmi client.Object) []reconcile.Request {
	svcs := &corev1.ServiceList{}
	if err := r.Client.List(ctx, svcs, client.InNamespace(vmi.GetNamespace())); err != nil {
		log.FromContext(ctx).Error(err, "list Services to update their L2 endpoints", "vmi", client.ObjectKeyFromObject(vmi))
		return nil
	}
	var out []reconcile.Request
	for i := range svcs.Items {
		svc := &svcs.Items[i]
		if !isL2Service(svc) {
			continue
		}
		if sel, err := l2Selector(svc); err == nil && sel.Matches(labels.Set(vmi.GetLabels())) {
			out = append(out, reconcile.Request{NamespacedName: client.ObjectKeyFromObject(svc)})
		}
	}
	return out
}

// l2Selector is the VMI selector of an L2 Service.
func l2Selector(svc *corev1.Service) (labels.Selector, error) {
	s := strings.TrimSpace(svc.Annotations[v1alpha1.L2SelectorAnnotation])
	if s == "" {
		// Like a Service without a selector: it selects nothing, rather
		// than every VMI of the namespace.
		return nil, fmt.Errorf("it has no %s annotation: add one, e.g. %s: app=web, to pick the VMIs it serves", v1alpha1.L2SelectorAnnotation, v1alpha1.L2SelectorAnnotation)
	}
	sel, err := labels.Parse(s)
	if err != nil {
		return nil, fmt.Errorf("annotation %s: %q is not a label selector (%w): write it like app=web,tier in (front)", v1alpha1.L2SelectorAnnotation, s, err)
	}
	return sel, nil
}

// l2Network is "namespace/name" of an L2 Service's NAD.
func l2Network(svc *corev1.Service) (string, error) {
	v := strings.TrimSpace(svc.Annotations[v1alpha1.L2NetworkAnnotation])
	nad := qualifiedNAD(svc.Namespace, v)
	ns, name, _ := strings.Cut(nad, "/")
	if len(validation.IsDNS1123Subdomain(name)) > 0 || len(validation.IsDNS1123Label(ns)) > 0 {
		return "", fmt.Errorf("annotation %s: %q is not a NetworkAttachmentDefinition: write namespace/name, or name for one in the Service's namespace", v1alpha1.L2NetworkAnnotation, v)
	}
	return nad, nil
}

// Reconcile makes the Service's slices hold what its VMIs say, and deletes
// the slices of a Service that is no longer an L2 Service.
func (r *L2ServiceReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	svc := &corev1.Service{}
	if err := r.Client.Get(ctx, req.NamespacedName, svc); apierrors.IsNotFound(err) {
		// The garbage collector deletes the slices too (they are owned),
		// but only where one runs.
		svc = nil
	} else if err != nil {
		return ctrl.Result{}, err
	}

	var want []*discoveryv1.EndpointSlice
	if svc != nil && svc.DeletionTimestamp == nil && isL2Service(svc) {
		var err error
		if want, err = r.desiredSlices(ctx, svc); err != nil {
			return ctrl.Result{}, err
		}
	}

	have := &discoveryv1.EndpointSliceList{}
	if err := r.Client.List(ctx, have, client.InNamespace(req.Namespace), client.MatchingLabels{
		discoveryv1.LabelServiceName: req.Name,
		discoveryv1.LabelManagedBy:   v1alpha1.EndpointSliceManagedBy,
	}); err != nil {
		return ctrl.Result{}, fmt.Errorf("list EndpointSlices of Service %s: %w", req, err)
	}
	var result ctrl.Result
	for _, w := range want {
		i := slices.IndexFunc(have.Items, func(s discoveryv1.EndpointSlice) bool { return s.Name == w.Name })
		if i < 0 {
			res, err := r.createSlice(ctx, svc, w)
			if err != nil {
				return res, err
			}
			result = res
			continue
		}
		cur := &have.Items[i]
		if sameSlice(cur, w) {
			continue
		}
		// A slice's name fixes its address type (-l2 IPv4, -l2-ipv6 IPv6),
		// which is immutable; the rest is ours to set.
		next := cur.DeepCopy()
		next.Labels, next.OwnerReferences = w.Labels, w.OwnerReferences
		next.Endpoints, next.Ports = w.Endpoints, w.Ports
		if err := r.Client.Update(ctx, next); err != nil {
			return requeueOnConflict(fmt.Errorf("update EndpointSlice %s/%s: %w", cur.Namespace, cur.Name, err))
		}
	}
	for i := range have.Items {
		s := &have.Items[i]
		if slices.ContainsFunc(want, func(w *discoveryv1.EndpointSlice) bool { return w.Name == s.Name }) {
			continue
		}
		if err := r.Client.Delete(ctx, s, client.Preconditions{UID: &s.UID}); client.IgnoreNotFound(err) != nil {
			return ctrl.Result{}, fmt.Errorf("delete EndpointSlice %s/%s of Service %s: %w", s.Namespace, s.Name, req, err)
		}
	}
	return result, nil
}

// createSlice creates w; a name taken by a slice podvirt does not manage
// is reported on the Service and looked at again later.
func (r *L2ServiceReconciler) createSlice(ctx context.Context, svc *corev1.Service, w *discoveryv1.EndpointSlice) (ctrl.Result, error) {
	err := r.Client.Create(ctx, w)
	if !apierrors.IsAlreadyExists(err) {
		if err != nil {
			return ctrl.Result{}, fmt.Errorf("create EndpointSlice %s/%s: %w", w.Namespace, w.Name, err)
		}
		return ctrl.Result{}, nil
	}
	other := &discoveryv1.EndpointSlice{}
	if err := r.APIReader.Get(ctx, client.ObjectKeyFromObject(w), other); err != nil {
		return ctrl.Result{}, fmt.Errorf("read EndpointSlice %s/%s: %w", w.Namespace, w.Name, err)
	}
	if other.Labels[discoveryv1.LabelManagedBy] == v1alpha1.EndpointSliceManagedBy {
		// Ours, not in the cache yet.
		return ctrl.Result{RequeueAfter: 50 * time.Millisecond}, nil
	}
	r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, ReasonL2SliceNameInUse, "UpdateEndpoints",
		"EndpointSlice %s exists and is managed by %q, not %s: delete or rename it so the L2 endpoints can be published",
		w.Name, other.Labels[discoveryv1.LabelManagedBy], v1alpha1.EndpointSliceManagedBy)
	return ctrl.Result{RequeueAfter: l2SliceNameInUseRecheck}, nil
}

// sameSlice says whether cur already is w, as far as the reconciler sets.
func sameSlice(cur, w *discoveryv1.EndpointSlice) bool {
	for k, v := range w.Labels {
		if cur.Labels[k] != v {
			return false
		}
	}
	return cur.AddressType == w.AddressType &&
		equality.Semantic.DeepEqual(cur.OwnerReferences, w.OwnerReferences) &&
		equality.Semantic.DeepEqual(cur.Endpoints, w.Endpoints) &&
		equality.Semantic.DeepEqual(cur.Ports, w.Ports)
}

// desiredSlices are the slices of L2 Service svc: an IPv4 one always (empty
// when no VMI has an address, as Kubernetes keeps one), and an IPv6 one
// when a VMI has an IPv6 address. A Service this reconciler cannot serve
// gets none, and an event saying why.
//
// A slice holds at most 1000 endpoints (the API's limit); an L2 Service
// over more VMIs than that is not served yet.
func (r *L2ServiceReconciler) desiredSlices(ctx context.Context, svc *corev1.Service) ([]*discoveryv1.EndpointSlice, error) {
	nad, err := l2Network(svc)
	if err == nil && svc.Spec.Type == corev1.ServiceTypeExternalName {
		err = fmt.Errorf("it is of type ExternalName, which has no endpoints: make it ClusterIP, or headless (clusterIP: None)")
	}
	var sel labels.Selector
	if err == nil {
		sel, err = l2Selector(svc)
	}
	if err != nil {
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, ReasonL2ServiceInvalid, "UpdateEndpoints", "Service is not served on its L2 network: %v", err)
		return nil, nil
	}
	if len(svc.Spec.Selector) > 0 {
		r.Recorder.Eventf(svc, nil, corev1.EventTypeWarning, ReasonL2SelectorClash, "UpdateEndpoints",
			"Service has spec.selector, so Kubernetes also publishes the matching pods' addresses for it: remove spec.selector, %s picks the VMIs", v1alpha1.L2SelectorAnnotation)
	}

	vmis := &v1alpha1.VirtualMachineInstanceList{}
	if err := r.Client.List(ctx, vmis, client.InNamespace(svc.Namespace), client.MatchingLabelsSelector{Selector: sel}); err != nil {
		return nil, fmt.Errorf("list VMIs of Service %s/%s: %w", svc.Namespace, svc.Name, err)
	}
	var v4, v6 []discoveryv1.Endpoint
	for i := range vmis.Items {
		vmi := &vmis.Items[i]
		if vmi.Status.Phase.IsFinal() {
			continue // its guest is gone; its address may be another's soon
		}
		for _, a := range l2Addresses(vmi, nad) {
			if a.Is4() {
				v4 = append(v4, l2Endpoint(vmi, a))
			} else {
				v6 = append(v6, l2Endpoint(vmi, a))
			}
		}
	}
	// The cache lists in no fixed order; the slice must not change with it.
	byName := func(a, b discoveryv1.Endpoint) int {
		return strings.Compare(a.TargetRef.Name, b.TargetRef.Name)
	}
	slices.SortFunc(v4, byName)
	slices.SortFunc(v6, byName)
	var out []*discoveryv1.EndpointSlice
	for _, f := range []struct {
		suffix    string
		typ       discoveryv1.AddressType
		endpoints []discoveryv1.Endpoint
	}{{l2SliceSuffix, discoveryv1.AddressTypeIPv4, v4}, {l2SliceSuffixIPv6, discoveryv1.AddressTypeIPv6, v6}} {
		if f.typ == discoveryv1.AddressTypeIPv6 && len(f.endpoints) == 0 {
			continue
		}
		s := &discoveryv1.EndpointSlice{
			ObjectMeta: metav1.ObjectMeta{
				Name:      svc.Name + f.suffix,
				Namespace: svc.Namespace,
				Labels: map[string]string{
					discoveryv1.LabelServiceName: svc.Name,
					discoveryv1.LabelManagedBy:   v1alpha1.EndpointSliceManagedBy,
				},
			},
			AddressType: f.typ,
			Endpoints:   f.endpoints,
			Ports:       slicePorts(svc),
		}
		if err := controllerutil.SetControllerReference(svc, s, r.Client.Scheme()); err != nil {
			return nil, fmt.Errorf("own EndpointSlice %s/%s by its Service: %w", s.Namespace, s.Name, err)
		}
		out = append(out, s)
	}
	return out, nil
}

// l2Addresses are vmi's addresses on network nad ("namespace/name"), at
// most one per family: those the node daemon reports for the interface on
// nad, else the one reserved in the spec (before the guest reports any).
func l2Addresses(vmi *v1alpha1.VirtualMachineInstance, nad string) []netip.Addr {
	for _, ifc := range vmi.Spec.Domain.Devices.Interfaces {
		if specNetwork(vmi.Namespace, &vmi.Spec, ifc.Name) != nad {
			continue
		}
		var reported []string
		for _, st := range vmi.Status.Interfaces {
			if st.Name != ifc.Name {
				continue
			}
			reported = st.IPs
			if len(reported) == 0 && st.IP != "" {
				reported = []string{st.IP}
			}
		}
		if out := onePerFamily(reported); len(out) > 0 {
			return out
		}
		if ifc.IPAddress != "" {
			return onePerFamily([]string{ifc.IPAddress})
		}
		return nil
	}
	return nil
}

// onePerFamily is the first usable IPv4 and IPv6 address of addrs (bare or
// with a prefix). Link-local addresses are not usable: the guest has one on
// every link, and a client cannot tell which.
func onePerFamily(addrs []string) []netip.Addr {
	var out []netip.Addr
	var have4, have6 bool
	for _, s := range addrs {
		a, err := addressOf(s)
		if err != nil {
			continue
		}
		a = a.Unmap()
		if a.IsLinkLocalUnicast() || a.IsLoopback() || a.IsUnspecified() {
			continue
		}
		if a.Is4() && !have4 {
			out, have4 = append(out, a), true
		} else if a.Is6() && !have6 {
			out, have6 = append(out, a), true
		}
	}
	return out
}

// l2Endpoint is vmi's endpoint at address a. Ready and serving follow the
// VMI's Ready condition (false while the guest is paused); a VMI being
// deleted is terminating and, as the API asks, not ready.
func l2Endpoint(vmi *v1alpha1.VirtualMachineInstance, a netip.Addr) discoveryv1.Endpoint {
	serving := meta.IsStatusConditionTrue(vmi.Status.Conditions, ConditionReady)
	terminating := vmi.DeletionTimestamp != nil
	e := discoveryv1.Endpoint{
		Addresses: []string{a.String()},
		Conditions: discoveryv1.EndpointConditions{
			Ready:       ptr.To(serving && !terminating),
			Serving:     ptr.To(serving),
			Terminating: ptr.To(terminating),
		},
		TargetRef: &corev1.ObjectReference{
			APIVersion: v1alpha1.GroupVersion.String(),
			Kind:       "VirtualMachineInstance",
			Namespace:  vmi.Namespace,
			Name:       vmi.Name,
			UID:        vmi.UID,
		},
	}
	// A headless Service's DNS names the endpoint <hostname>.<service>,
	// and a hostname must be a DNS label.
	if len(validation.IsDNS1123Label(vmi.Name)) == 0 {
		e.Hostname = ptr.To(vmi.Name)
	}
	if vmi.Status.NodeName != "" {
		e.NodeName = ptr.To(vmi.Status.NodeName)
	}
	return e
}

// slicePorts are svc's ports as the VMs serve them: the target port when
// it is a number, else the Service's port (a VM has no named ports).
func slicePorts(svc *corev1.Service) []discoveryv1.EndpointPort {
	var out []discoveryv1.EndpointPort
	for _, p := range svc.Spec.Ports {
		port := p.Port
		if p.TargetPort.Type == intstr.Int && p.TargetPort.IntVal != 0 {
			port = p.TargetPort.IntVal
		}
		protocol := p.Protocol
		if protocol == "" {
			protocol = corev1.ProtocolTCP
		}
		out = append(out, discoveryv1.EndpointPort{
			Name: ptr.To(p.Name), Protocol: ptr.To(protocol), Port: ptr.To(port), AppProtocol: p.AppProtocol,
		})
	}
	return out
}
