// Package handler is the node daemon's VMI sync: for every VMI whose
// launcher pod runs on this node it connects to the launcher's command
// socket (through the kubelet's directory of the pod's socket emptyDir),
// sends the launcher the VMI and the CNI results of the pod's L2
// attachments (Start), follows the domain (Watch), and writes what it
// sees to the VMI: status.domain and status.interfaces, with a merge
// patch of just those fields, and events. The controller derives the
// VMI's phase and its Ready and Paused conditions from that and from the
// pod (controller/phase.go): Running or Paused → Running, Shutdown →
// Succeeded, Crashed → Failed. A launcher that goes away before its
// domain ended is reported as a Crashed domain, so the VMI fails and the
// run strategy acts. The podvirt.io/paused annotation pauses and resumes
// the guest.
package handler

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/event"
	crhandler "sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/source"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/vmimetrics"
)

// NetworkResults gives the CNI results of a launcher pod's L2
// attachments: for each of the VMI's tap-bound (Multus) networks, the
// podvirt-l2 ADD result of the pod interface podlink.InterfaceName(network).
type NetworkResults interface {
	PodNetworks(ctx context.Context, pod *corev1.Pod, vmi *v1.VirtualMachineInstance) (*launchercmd.Networks, error)
	// HandOver gives pod the guest's L2 identity (lease, MAC) its
	// attachments took over from a same-node migration's source, once the
	// VM runs in it; a pod with nothing to take over is left alone.
	HandOver(pod *corev1.Pod) error
}

// Config is what the handler needs beyond the API server.
type Config struct {
	// NodeName is this node: only launcher pods bound to it are handled.
	NodeName string
	// KubeletRoot is the kubelet's root dir (/var/lib/kubelet), under
	// which it keeps each pod's emptyDirs.
	KubeletRoot string
	// Networks gives the CNI results; nil means no VMI on this node may
	// have a Multus network.
	Networks NetworkResults
	// SocketRetry is how often a launcher pod whose socket is not there
	// yet is looked at again (default 1s).
	SocketRetry time.Duration
	// Registerer takes the handler's metrics and the VMIs' domain stats
	// (runtime/vmimetrics); nil leaves them unregistered.
	Registerer prometheus.Registerer
	// Migration is how migrations from this node run.
	Migration MigrationConfig
}

// Event reasons the handler writes on VMIs.
const (
	ReasonStarted       = "Started"
	ReasonStartFailed   = "StartFailed"
	ReasonNetworkFailed = "NetworkResultsFailed"
	ReasonPaused        = "Paused"
	ReasonResumed       = "Resumed"
	ReasonPauseFailed   = "PauseFailed"
	ReasonDomainState   = "DomainStateChanged"
	ReasonLauncherLost  = "LauncherLost"
	ReasonDomainCrashed = "DomainCrashed"
	ReasonShutdown      = "Shutdown"
	// ReasonDegraded: the domain runs, but with less than its VMI asked
	// (the launcher's warnings, e.g. a pod network without passt).
	ReasonDegraded = "Degraded"
)

// CacheOptions limits the manager's cache: of all pods, only launcher
// pods bound to node; VMIs are watched cluster-wide (a VMI carries no
// field a server-side selector could match its node by) and filtered here.
func CacheOptions(node string) cache.Options {
	return cache.Options{
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Pod{}: {
				Label: labels.SelectorFromSet(labels.Set{v1.AppLabel: v1.AppLauncher}),
				Field: fields.OneTermEqualSelector("spec.nodeName", node),
			},
		},
	}
}

// eventRecorder is the part of the events API the handler uses.
type eventRecorder interface {
	Eventf(regarding, related runtime.Object, eventtype, reason, action, note string, args ...any)
}

// Reconciler keeps the VMIs of this node and their launchers in sync.
type Reconciler struct {
	Client   client.Client
	Recorder eventRecorder
	Config   Config

	sessions   sessions
	migrations migrations
	metrics    *metrics
	wake       chan event.TypedGenericEvent[*v1.VirtualMachineInstance]
	stop       chan struct{}
	sockets    *socketWatch
}

// Setup registers the handler's reconciler with mgr; sessions close when
// mgr stops.
func Setup(mgr manager.Manager, cfg Config) (*Reconciler, error) {
	if cfg.NodeName == "" {
		return nil, errors.New("handler: no node name (set --node-name or $NODE_NAME)")
	}
	if cfg.KubeletRoot == "" {
		cfg.KubeletRoot = "/var/lib/kubelet"
	}
	if cfg.SocketRetry == 0 {
		cfg.SocketRetry = time.Second
	}
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("handler metrics: %w", err)
	}
	sockets, err := newSocketWatch()
	if err != nil {
		return nil, fmt.Errorf("handler: watch launcher sockets: %w", err)
	}
	r := &Reconciler{
		sockets:  sockets,
		sessions: sessions{gauge: m.openSessions},
		metrics:  m,
		Client:   mgr.GetClient(),
		Recorder: mgr.GetEventRecorder("podvirt-handler"),
		Config:   cfg,
		wake:     make(chan event.TypedGenericEvent[*v1.VirtualMachineInstance], 64),
		stop:     make(chan struct{}),
	}
	if cfg.Registerer != nil {
		stats := vmimetrics.New(&r.sessions, vmimetrics.Options{Node: cfg.NodeName, Log: mgr.GetLogger().WithName("vmimetrics")})
		if err := cfg.Registerer.Register(stats); err != nil {
			return nil, fmt.Errorf("handler metrics: %w", err)
		}
	}
	err = ctrl.NewControllerManagedBy(mgr).
		Named("handler").
		For(&v1.VirtualMachineInstance{}).
		Watches(&corev1.Pod{}, crhandler.EnqueueRequestsFromMapFunc(podToVMI)).
		WatchesRawSource(source.Channel(r.wake, &crhandler.TypedEnqueueRequestForObject[*v1.VirtualMachineInstance]{})).
		Complete(r)
	if err != nil {
		return nil, fmt.Errorf("set up handler: %w", err)
	}
	if err := mgr.Add(manager.RunnableFunc(sockets.run)); err != nil {
		return nil, err
	}
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		<-ctx.Done()
		close(r.stop)
		r.sessions.closeAll()
		return nil
	})); err != nil {
		return nil, err
	}
	return r, nil
}

// podToVMI maps a launcher pod to its VMI.
func podToVMI(_ context.Context, o client.Object) []ctrl.Request {
	name := o.GetLabels()[v1.VMINameLabel]
	if name == "" {
		return nil
	}
	return []ctrl.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: name}}}
}

// notifier returns the function a session calls when the launcher's
// status changes: it queues the VMI.
func (r *Reconciler) notifier(key types.NamespacedName) func() {
	return func() {
		obj := &v1.VirtualMachineInstance{}
		obj.Namespace, obj.Name = key.Namespace, key.Name
		select {
		case r.wake <- event.TypedGenericEvent[*v1.VirtualMachineInstance]{Object: obj}:
		case <-r.stop:
		}
	}
}

// SocketPath is where the node sees the command socket of vmi in its
// launcher pod: the pod's socket emptyDir in the kubelet's pod directory.
func SocketPath(kubeletRoot string, pod *corev1.Pod, vmi *v1.VirtualMachineInstance) string {
	return launchercmd.SocketPath(filepath.Join(kubeletRoot, "pods", string(pod.UID), "volumes", "kubernetes.io~empty-dir", v1.SocketVolumeName), string(vmi.UID))
}

// Reconcile brings one VMI's launchers and status in step: its launcher
// pod on this node, and the target pod of its migration when that is here
// (on the same node too).
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	key := req.NamespacedName.String()
	vmi := &v1.VirtualMachineInstance{}
	if err := r.Client.Get(ctx, req.NamespacedName, vmi); err != nil {
		if apierrors.IsNotFound(err) {
			r.sessions.dropVMI(key, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	pods, err := r.launcherPods(ctx, vmi)
	if err != nil {
		return ctrl.Result{}, err
	}
	keep := map[string]bool{}
	for _, pod := range pods {
		keep[SocketPath(r.Config.KubeletRoot, pod, vmi)] = true
	}
	// Sessions of another VMI of the same name, or of pods the VMI left.
	r.sessions.dropVMI(key, keep)
	var result ctrl.Result
	for _, pod := range pods {
		res, err := r.syncPod(ctx, req, vmi, pod)
		if err != nil {
			return ctrl.Result{}, err
		}
		if res.RequeueAfter > 0 && (result.RequeueAfter == 0 || res.RequeueAfter < result.RequeueAfter) {
			result = res
		}
	}
	return result, nil
}

// syncPod brings one launcher pod of vmi in step, as its part says: the
// VMI's launcher, or a migration's source or target.
func (r *Reconciler) syncPod(ctx context.Context, req ctrl.Request, vmi *v1.VirtualMachineInstance, pod *corev1.Pod) (ctrl.Result, error) {
	sock := SocketPath(r.Config.KubeletRoot, pod, vmi)
	sess := r.sessions.get(sock)
	if vmi.Status.Phase.IsFinal() {
		// Over: the controller takes it from here.
		if sess != nil && sess.ended() {
			r.sessions.drop(sock)
		}
		return ctrl.Result{}, nil
	}
	if sess == nil {
		if pod.Status.Phase != corev1.PodRunning || pod.DeletionTimestamp != nil {
			return ctrl.Result{}, nil // the pod's next update wakes us
		}
		if _, err := os.Stat(sock); err != nil {
			log.FromContext(ctx).V(1).Info("waiting for the launcher's socket", "socket", sock)
			// Woken when it appears; the retry is for a watch that failed.
			if err := r.sockets.await(sock, r.notifier(req.NamespacedName)); err != nil {
				log.FromContext(ctx).Info("cannot watch for the launcher's socket; looking again later", "socket", sock, "err", err)
			}
			return ctrl.Result{RequeueAfter: r.Config.SocketRetry}, nil
		}
		var err error
		sess, err = openSession(log.FromContext(ctx), req.NamespacedName.String(), string(vmi.UID), sock, r.notifier(req.NamespacedName))
		if err != nil {
			log.FromContext(ctx).Info("launcher not answering yet", "socket", sock, "err", err)
			return ctrl.Result{RequeueAfter: r.Config.SocketRetry}, nil
		}
		r.sessions.put(sess)
	}

	ms := vmi.MigrationInFlight()
	switch {
	case vmi.Status.LauncherPod != "" && pod.Name != vmi.Status.LauncherPod:
		// The target of a migration: it receives the domain; the VMI is
		// still the source's.
		if ms != nil && pod.Name == ms.TargetPod && ms.TargetAddress == "" {
			return ctrl.Result{}, r.prepareTarget(ctx, sess, vmi, pod, ms)
		}
		return ctrl.Result{}, nil
	case ms != nil && pod.Name == ms.SourcePod:
		return ctrl.Result{}, r.syncSource(ctx, sess, vmi, pod, ms)
	case vmi.Status.MigrationState != nil && vmi.Status.MigrationState.Completed && pod.Name == vmi.Status.MigrationState.SourcePod:
		return ctrl.Result{}, nil // gone elsewhere; the controller switches the VMI to its new pod
	}
	if err := r.handOver(vmi, pod); err != nil {
		return ctrl.Result{}, err
	}
	last, lost := sess.snapshot()
	if lost == "" && last.GetState() == "" {
		if err := r.start(ctx, sess, vmi, pod); err != nil {
			return ctrl.Result{}, err
		}
		last, lost = sess.snapshot()
	}
	if lost == "" {
		if err := r.syncPause(ctx, sess, vmi, last); err != nil {
			return ctrl.Result{}, err
		}
		if err := r.syncSnapshot(ctx, sess, vmi, last); err != nil {
			return ctrl.Result{}, err
		}
	}
	return ctrl.Result{}, r.writeStatus(ctx, vmi, observe(last, lost, vmi.Status.Domain, metav1.Now()))
}

// launcherPods returns vmi's launcher pods on this node (the cache holds no
// other): the pod the VMI names, and the target pod of its migration in
// flight. A pod the VMI has left behind is not its.
func (r *Reconciler) launcherPods(ctx context.Context, vmi *v1.VirtualMachineInstance) ([]*corev1.Pod, error) {
	pods := &corev1.PodList{}
	if err := r.Client.List(ctx, pods, client.InNamespace(vmi.Namespace), client.MatchingLabels{v1.CreatedByLabel: string(vmi.UID)}); err != nil {
		return nil, fmt.Errorf("list launcher pods of VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
	}
	ms := vmi.MigrationInFlight()
	var out []*corev1.Pod
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName != r.Config.NodeName || !metav1.IsControlledBy(p, vmi) {
			continue
		}
		if vmi.Status.LauncherPod == "" || p.Name == vmi.Status.LauncherPod || (ms != nil && p.Name == ms.TargetPod) {
			out = append(out, p)
		}
	}
	return out, nil
}

// start sends the launcher its VMI and the pod's network results.
func (r *Reconciler) start(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, pod *corev1.Pod) error {
	sess.mu.Lock()
	sent := sess.startSent
	sess.mu.Unlock()
	if sent {
		return nil
	}
	nets, err := r.networksOf(ctx, vmi, pod, "Start")
	if err != nil {
		return err
	}
	spec, err := json.Marshal(vmi)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	r.metrics.startsTotal.Inc()
	resp, err := sess.client.Start(ctx, &launchercmd.StartRequest{Vmi: spec, Networks: nets})
	if err != nil {
		r.metrics.startFailures.Inc()
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonStartFailed, "Start", "launcher %s could not start the domain: %v", pod.Name, status.Convert(err).Message())
		if status.Code(err) == codes.Internal {
			// Rendering or starting the domain failed: that VMI will not
			// run, so it fails and its run strategy acts.
			return r.writeStatus(ctx, vmi, observed{Domain: &v1.DomainStatus{
				State: v1.DomainCrashed, Reason: ReasonStartFailed, Message: status.Convert(err).Message(), LastTransitionTime: metav1.Now(),
			}})
		}
		return fmt.Errorf("start VMI %s/%s in pod %s: %w", vmi.Namespace, vmi.Name, pod.Name, err)
	}
	sess.mu.Lock()
	sess.startSent = true
	if sess.last.GetState() == "" {
		sess.last = resp
	}
	sess.mu.Unlock()
	r.Recorder.Eventf(vmi, pod, corev1.EventTypeNormal, ReasonStarted, "Start", "launcher %s started domain %s", pod.Name, resp.GetDomain())
	if err := r.recordStartup(ctx, vmi, pod, sess.opened, resp.GetStartup()); err != nil {
		log.FromContext(ctx).Info("startup steps not written", "err", err)
	}
	for _, w := range resp.GetWarnings() {
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonDegraded, "Start", "%s", w)
	}
	return nil
}

// networksOf is the CNI results of pod's L2 attachments as JSON, nil when
// vmi has none.
func (r *Reconciler) networksOf(ctx context.Context, vmi *v1.VirtualMachineInstance, pod *corev1.Pod, action string) ([]byte, error) {
	if !needsNetworks(vmi) {
		return nil, nil
	}
	if r.Config.Networks == nil {
		err := fmt.Errorf("VMI %s/%s has Multus networks, but this node daemon has no CNI results store (--cni-results-dir)", vmi.Namespace, vmi.Name)
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonNetworkFailed, action, "%v", err)
		return nil, err
	}
	st, err := r.Config.Networks.PodNetworks(ctx, pod, vmi)
	if err != nil {
		r.Recorder.Eventf(vmi, pod, corev1.EventTypeWarning, ReasonNetworkFailed, action, "CNI results of pod %s: %v", pod.Name, err)
		return nil, fmt.Errorf("VMI %s/%s: CNI results of pod %s: %w", vmi.Namespace, vmi.Name, pod.Name, err)
	}
	return json.Marshal(st)
}

// needsNetworks reports whether vmi has a network reached through a tap.
func needsNetworks(vmi *v1.VirtualMachineInstance) bool {
	for _, n := range vmi.Spec.Networks {
		if n.Multus != nil {
			return true
		}
	}
	return false
}

// syncPause pauses or resumes the guest as the VMI's annotation says.
func (r *Reconciler) syncPause(ctx context.Context, sess *session, vmi *v1.VirtualMachineInstance, last *launchercmd.StatusResponse) error {
	want := vmi.Annotations[v1.PausedAnnotation] == "true"
	state := last.DomainState()
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	switch {
	case want && state == v1.DomainRunning:
		if _, err := sess.client.Pause(ctx, &launchercmd.PauseRequest{}); status.Code(err) == codes.FailedPrecondition {
			return nil // the state changed meanwhile; the watch brings it
		} else if err != nil {
			r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonPauseFailed, "Pause", "pause: %v", status.Convert(err).Message())
			return fmt.Errorf("pause VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
		}
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonPaused, "Pause", "the guest is paused")
	case !want && state == v1.DomainPaused:
		if _, err := sess.client.Resume(ctx, &launchercmd.ResumeRequest{}); status.Code(err) == codes.FailedPrecondition {
			return nil
		} else if err != nil {
			r.Recorder.Eventf(vmi, nil, corev1.EventTypeWarning, ReasonPauseFailed, "Resume", "resume: %v", status.Convert(err).Message())
			return fmt.Errorf("resume VMI %s/%s: %w", vmi.Namespace, vmi.Name, err)
		}
		r.Recorder.Eventf(vmi, nil, corev1.EventTypeNormal, ReasonResumed, "Resume", "the guest runs again")
	}
	return nil
}
