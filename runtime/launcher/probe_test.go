package launcher

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/containernetworking/plugins/pkg/ns"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
	"github.com/podvirt/podvirt/runtime/cmdserver"
	"github.com/podvirt/podvirt/test/harness/netnstest"
	"github.com/podvirt/podvirt/test/images/guest"
)

// TestProbes boots the test guest on the pod network (passt) serving HTTP,
// with a readiness probe on that server and a liveness probe run through
// QEMU's guest agent, as the launcher runs them in a pod. Ready follows
// the server; each kind of check passes and fails for the right reason;
// a failing liveness probe stops the guest as LivenessProbeFailed.
func TestProbes(t *testing.T) {
	pod, client := netnstest.New(t), netnstest.New(t)
	linkPodNetwork(t, pod, client)
	d := startDaemonIn(t, pod)
	const closed = guestWeb + 2 // forwarded, nothing listens
	vmi := podNetVMI(t, []v1.Port{{Name: "web", Port: guestWeb}, {Name: "closed", Port: closed}})
	vmi.Spec.ReadinessProbe = &v1.Probe{
		HTTPGet:       &corev1.HTTPGetAction{Path: "/index.html", Port: intstr.FromString("web")},
		PeriodSeconds: 1, FailureThreshold: 2,
	}
	vmi.Spec.LivenessProbe = &v1.Probe{
		Exec:          &corev1.ExecAction{Command: []string{"/bin/sh", "-c", "test ! -e /tmp/dead"}},
		PeriodSeconds: 1, FailureThreshold: 2, TimeoutSeconds: 5,
	}
	socket, _ := passtIn(t, pod, vmi)
	vm := podNetVM(t, vmi, socket)
	l := startVM(t, d, vm)
	// The launcher runs in the pod's network namespace; this test does
	// not, so its probes dial from a thread in there.
	l.dialGuest = func(ctx context.Context, network, address string) (net.Conn, error) {
		var c net.Conn
		err := pod.Do(func(ns.NetNS) error {
			var err error
			c, err = (&net.Dialer{}).DialContext(ctx, network, address)
			return err
		})
		return c, err
	}
	// Probes start once the guest is up, as its initialDelaySeconds would
	// have them do, without guessing how long a TCG boot takes.
	waitConsole(t, vm.console, 0, guest.CloudInitMarker, bootLimit)
	waitAgent(t, l)
	l.startProbes(vmi, true)
	if h := l.Health(); h.Readiness != launchercmd.NotReady {
		t.Errorf("before the first probe, readiness is %q, want %s", h.Readiness, launchercmd.NotReady)
	}
	waitHealth(t, l, time.Minute, "the readiness probe passes", func(h cmdserver.Health) bool { return h.Readiness == launchercmd.Ready })

	// Each check on its own, against the running guest.
	checks := []struct {
		name  string
		probe v1.Probe
		fails string // "" when it passes
	}{
		{"tcp open", v1.Probe{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(guestWeb)}}, ""},
		{"tcp refused", v1.Probe{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromString("closed")}}, "refused"},
		{"tcp not forwarded", v1.Probe{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(22)}}, "not forwarded"},
		{"http missing page", v1.Probe{HTTPGet: &corev1.HTTPGetAction{Path: "/nothing", Port: intstr.FromInt32(guestWeb)}}, "404"},
		{"agent ping", v1.Probe{GuestAgentPing: &v1.GuestAgentPing{}}, ""},
		{"exec fails", v1.Probe{Exec: &corev1.ExecAction{Command: []string{"/bin/sh", "-c", "echo broken >&2; exit 3"}}}, "exit status 3: broken"},
	}
	for _, c := range checks {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		err := l.probeCheck(vmi, &c.probe, true)(ctx)
		cancel()
		switch {
		case c.fails == "" && err != nil:
			t.Errorf("%s: %v, want it to pass", c.name, err)
		case c.fails != "" && (err == nil || !strings.Contains(err.Error(), c.fails)):
			t.Errorf("%s: %v, want an error saying %q", c.name, err, c.fails)
		}
	}

	// The guest's server stops: not ready, saying why.
	exec := func(cmd string) {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.guestExec(ctx, []string{"/bin/sh", "-c", cmd}); err != nil {
			t.Fatalf("guest-exec %q: %v", cmd, err)
		}
	}
	exec("killall httpd")
	waitHealth(t, l, time.Minute, "readiness turns NotReady", func(h cmdserver.Health) bool {
		return h.Readiness == launchercmd.NotReady && strings.Contains(h.ReadinessMessage, "GET /index.html")
	})
	if st, _ := l.State(); st != v1.DomainRunning {
		t.Fatalf("a failing readiness probe left the domain %s, want Running", st)
	}

	// The liveness probe's command fails: the launcher stops the guest.
	exec("touch /tmp/dead")
	select {
	case <-l.Done():
	case <-time.After(time.Minute):
		t.Fatal("the domain still runs a minute after its liveness probe began to fail")
	}
	st, reason := l.State()
	if h := l.Health(); st != v1.DomainCrashed || reason != ReasonLivenessProbeFailed || !strings.Contains(h.Message, "liveness probe: /bin/sh -c test ! -e /tmp/dead: exit status 1") {
		t.Errorf("after the liveness probe failed: %s (%s) %q, want %s (%s) with the probe's error", st, reason, h.Message, v1.DomainCrashed, ReasonLivenessProbeFailed)
	}
}

// waitAgent waits for the guest agent to answer.
func waitAgent(t testing.TB, l *Launcher) {
	t.Helper()
	deadline := time.Now().Add(bootLimit)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := l.agentCommand(ctx, map[string]any{"execute": "guest-ping"})
		cancel()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the guest agent did not answer within %s: %v", bootLimit, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// waitHealth waits until ok holds for the launcher's readiness.
func waitHealth(t *testing.T, l *Launcher, timeout time.Duration, what string, ok func(cmdserver.Health) bool) {
	t.Helper()
	deadline := time.After(timeout)
	for {
		ch := l.Changed()
		h := l.Health()
		if ok(h) {
			return
		}
		select {
		case <-ch:
		case <-deadline:
			t.Fatalf("%s: not within %s; readiness %q: %s", what, timeout, h.Readiness, h.ReadinessMessage)
		}
	}
}
