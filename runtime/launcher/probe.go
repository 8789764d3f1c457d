package launcher

import (
	"context"
	"crypto/tls"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
	"github.com/podvirt/podvirt/contracts/launchercmd"
)

// ReasonLivenessProbeFailed is the domain's reason when the launcher
// stopped a guest that failed its liveness probe.
const ReasonLivenessProbeFailed = "LivenessProbeFailed"

// probeOutputLimit bounds what a probe keeps of the guest's answer (an
// HTTP body, a command's output) for its message.
const probeOutputLimit = 1024

// check runs a probe once; nil means it passed.
type check func(ctx context.Context) error

// startProbes runs vmi's readiness and liveness probes for as long as the
// domain lives, each only while the guest runs (not while it starts,
// arrives by migration, or is paused). passt says whether the pod
// network's ports reach the guest.
func (l *Launcher) startProbes(vmi *v1.VirtualMachineInstance, passt bool) {
	if p := vmi.Spec.ReadinessProbe; p != nil {
		l.setReadiness(launchercmd.NotReady, "the readiness probe has not passed yet")
		go l.runProbe("readiness", p, l.probeCheck(vmi, p, passt), func(ok bool, err error) {
			if ok {
				l.setReadiness(launchercmd.Ready, "")
			} else {
				l.setReadiness(launchercmd.NotReady, "readiness probe: "+err.Error())
			}
		})
	}
	if p := vmi.Spec.LivenessProbe; p != nil {
		go l.runProbe("liveness", p, l.probeCheck(vmi, p, passt), func(ok bool, err error) {
			if !ok {
				l.stopFailed(ReasonLivenessProbeFailed, "liveness probe: "+err.Error())
			}
		})
	}
}

// runProbe calls verdict when the probe turns (the first time, and after
// the thresholds of passes or failures in a row), and with the newest
// reason while it keeps failing, until the domain is gone.
func (l *Launcher) runProbe(kind string, p *v1.Probe, c check, verdict func(ok bool, err error)) {
	timeout := seconds(p.TimeoutSeconds, v1.DefaultProbeTimeoutSeconds)
	period := seconds(p.PeriodSeconds, v1.DefaultProbePeriodSeconds)
	needOK := max(p.SuccessThreshold, 1)
	needFail := p.FailureThreshold
	if needFail <= 0 {
		needFail = v1.DefaultProbeFailureThreshold
	}
	if err := l.waitRunning(); err != nil {
		return
	}
	if !l.sleep(time.Duration(p.InitialDelaySeconds) * time.Second) {
		return
	}
	var passing *bool
	var okRun, failRun int32
	for {
		if st, _ := l.State(); st == v1.DomainRunning {
			ctx, cancel := context.WithTimeout(context.Background(), timeout)
			err := c(ctx)
			cancel()
			if err == nil {
				okRun, failRun = okRun+1, 0
			} else {
				okRun, failRun = 0, failRun+1
			}
			switch {
			case err == nil && okRun >= needOK && (passing == nil || !*passing):
				passing = new(true)
				verdict(true, nil)
			case err != nil && failRun >= needFail && (passing == nil || *passing):
				slog.Warn("probe failed", "probe", kind, "times", failRun, "err", err)
				passing = new(false)
				verdict(false, err)
			case err != nil && passing != nil && !*passing:
				verdict(false, err) // still failing: the newest reason
			}
		}
		if !l.sleep(period) {
			return
		}
	}
}

func seconds(n, def int32) time.Duration {
	if n <= 0 {
		n = def
	}
	return time.Duration(n) * time.Second
}

// waitRunning waits for the guest to run the first time; an error when
// the domain went away first.
func (l *Launcher) waitRunning() error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-l.done:
			cancel()
		case <-ctx.Done():
		}
	}()
	return l.WaitState(ctx, v1.DomainRunning)
}

// sleep waits d, false when the domain went away meanwhile.
func (l *Launcher) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-l.done:
		return false
	case <-t.C:
		return true
	}
}

// probeCheck is the check of probe p of vmi. A probe that cannot work
// (its port is not forwarded, there is no passt) fails every time, saying
// why.
func (l *Launcher) probeCheck(vmi *v1.VirtualMachineInstance, p *v1.Probe, passt bool) check {
	fail := func(err error) check { return func(context.Context) error { return err } }
	switch {
	case p.TCPSocket != nil:
		port, err := guestPort(vmi, p.TCPSocket.Port, passt)
		if err != nil {
			return fail(err)
		}
		return func(ctx context.Context) error { return probeTCP(ctx, l.guestDial, port) }
	case p.HTTPGet != nil:
		port, err := guestPort(vmi, p.HTTPGet.Port, passt)
		if err != nil {
			return fail(err)
		}
		return func(ctx context.Context) error { return probeHTTP(ctx, l.guestDial, p.HTTPGet, port) }
	case p.Exec != nil:
		if len(p.Exec.Command) == 0 {
			return fail(errors.New("exec has no command"))
		}
		return func(ctx context.Context) error { return l.guestExec(ctx, p.Exec.Command) }
	case p.GuestAgentPing != nil:
		return func(ctx context.Context) error {
			_, err := l.agentCommand(ctx, map[string]any{"execute": "guest-ping"})
			return err
		}
	}
	return fail(errors.New("the probe names no check (exec, httpGet, tcpSocket or guestAgentPing)"))
}

// guestPort resolves a probe's port (a number, or the name of one of the
// pod interface's ports) to one passt forwards into the guest.
func guestPort(vmi *v1.VirtualMachineInstance, port intstr.IntOrString, passt bool) (int32, error) {
	ifc := vmi.Spec.PodInterface()
	if ifc == nil || !passt {
		return 0, errors.New("tcpSocket and httpGet probes reach the guest through the pod network's forwarded ports, and this pod has none (no pod network, or no passt in the launcher image)")
	}
	if port.Type == intstr.String {
		for _, p := range ifc.Ports {
			if p.Name == port.StrVal && (p.Protocol == "" || p.Protocol == "TCP") {
				return p.Port, nil
			}
		}
		return 0, fmt.Errorf("port %q is none of interface %s's TCP ports' names", port.StrVal, ifc.Name)
	}
	n := port.IntVal
	if n < 1 || n > 65535 {
		return 0, fmt.Errorf("port %d is not a TCP port", n)
	}
	if len(ifc.Ports) == 0 {
		return n, nil // every port is forwarded
	}
	for _, p := range ifc.Ports {
		if p.Port == n && (p.Protocol == "" || p.Protocol == "TCP") {
			return n, nil
		}
	}
	return 0, fmt.Errorf("port %d is not forwarded into the guest: add it to interface %s's ports", n, ifc.Name)
}

// guestAddress is where a forwarded guest port is reached from the
// launcher: passt listens on it in the pod's network namespace.
func guestAddress(port int32) string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port))) }

// dialFunc dials a guest port's address; tests dial inside a pod's
// network namespace.
type dialFunc func(ctx context.Context, network, address string) (net.Conn, error)

func (l *Launcher) guestDial(ctx context.Context, network, address string) (net.Conn, error) {
	if l.dialGuest != nil {
		return l.dialGuest(ctx, network, address)
	}
	var d net.Dialer
	return d.DialContext(ctx, network, address)
}

// probeTCP connects to the guest port. passt accepts the connection
// before the guest has answered and drops it when the guest refuses, so
// the probe passes only when the connection is still open (or the guest
// spoke) when its time is up.
func probeTCP(ctx context.Context, dial dialFunc, port int32) error {
	conn, err := dial(ctx, "tcp", guestAddress(port))
	if err != nil {
		return fmt.Errorf("connect to guest port %d: %w", port, err)
	}
	defer conn.Close()
	deadline, _ := ctx.Deadline()
	_ = conn.SetReadDeadline(deadline.Add(-10 * time.Millisecond))
	_, err = conn.Read(make([]byte, 1))
	var ne net.Error
	if err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		return nil
	}
	return fmt.Errorf("guest port %d refused the connection: %w", port, err)
}

// probeHTTP GETs the probe's path from the guest port, as the kubelet
// would: any status from 200 to 399 passes, redirects are not followed,
// TLS is not verified.
func probeHTTP(ctx context.Context, dial dialFunc, get *corev1.HTTPGetAction, port int32) error {
	scheme := strings.ToLower(string(get.Scheme))
	if scheme == "" {
		scheme = "http"
	}
	path := get.Path
	if !strings.HasPrefix(path, "/") {
		path = "/" + path
	}
	u := &url.URL{Scheme: scheme, Host: guestAddress(port)}
	u, err := u.Parse(path)
	if err != nil {
		return fmt.Errorf("path %q: %w", get.Path, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return err
	}
	req.Header.Set("User-Agent", "podvirt-probe")
	for _, h := range get.HTTPHeaders {
		if strings.EqualFold(h.Name, "Host") {
			req.Host = h.Value
			continue
		}
		req.Header.Add(h.Name, h.Value)
	}
	client := &http.Client{
		Transport: &http.Transport{
			// The guest is here, never behind $HTTP_PROXY.
			DialContext:       dial,
			Proxy:             nil,
			TLSClientConfig:   &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // as the kubelet's probes: guests serve self-signed certificates
			DisableKeepAlives: true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("GET %s on guest port %d: %w", path, port, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, probeOutputLimit))
	if resp.StatusCode < 200 || resp.StatusCode >= 400 {
		return fmt.Errorf("GET %s on guest port %d: %s: %s", path, port, resp.Status, strings.TrimSpace(string(body)))
	}
	return nil
}

// agentCommand sends one command to QEMU's guest agent and returns its
// "return" member.
func (l *Launcher) agentCommand(ctx context.Context, cmd map[string]any) (json.RawMessage, error) {
	d, err := l.domain()
	if err != nil {
		return nil, err
	}
	b, err := json.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	wait := libvirt.DomainQemuAgentCommandTimeout(1)
	if deadline, ok := ctx.Deadline(); ok {
		wait = libvirt.DomainQemuAgentCommandTimeout(max(1, int(time.Until(deadline).Round(time.Second)/time.Second)))
	}
	out, err := d.QemuAgentCommand(string(b), wait, 0)
	if err != nil {
		var lerr libvirt.Error
		if errors.As(err, &lerr) && (lerr.Code == libvirt.ERR_AGENT_UNRESPONSIVE || lerr.Code == libvirt.ERR_AGENT_COMMAND_TIMEOUT) {
			return nil, fmt.Errorf("the guest agent does not answer (does the guest run qemu-guest-agent?): %s", lerr.Message)
		}
		return nil, fmt.Errorf("guest agent %s: %w", cmd["execute"], err)
	}
	var resp struct {
		Return json.RawMessage `json:"return"`
	}
	if err := json.Unmarshal([]byte(out), &resp); err != nil {
		return nil, fmt.Errorf("guest agent %s: %w", cmd["execute"], err)
	}
	return resp.Return, nil
}

// guestExec runs argv in the guest through the agent and waits for it:
// exit status 0 passes.
func (l *Launcher) guestExec(ctx context.Context, argv []string) error {
	ret, err := l.agentCommand(ctx, map[string]any{"execute": "guest-exec", "arguments": map[string]any{
		"path": argv[0], "arg": argv[1:], "capture-output": true,
	}})
	if err != nil {
		return err
	}
	var started struct {
		PID int `json:"pid"`
	}
	if err := json.Unmarshal(ret, &started); err != nil {
		return fmt.Errorf("guest-exec: %w", err)
	}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		ret, err := l.agentCommand(ctx, map[string]any{"execute": "guest-exec-status", "arguments": map[string]any{"pid": started.PID}})
		if err != nil {
			return err
		}
		var st struct {
			Exited   bool   `json:"exited"`
			ExitCode int    `json:"exitcode"`
			Signal   int    `json:"signal"`
			Out      string `json:"out-data"`
			Err      string `json:"err-data"`
		}
		if err := json.Unmarshal(ret, &st); err != nil {
			return fmt.Errorf("guest-exec-status: %w", err)
		}
		if st.Exited {
			if st.ExitCode == 0 && st.Signal == 0 {
				return nil
			}
			status := fmt.Sprintf("exit status %d", st.ExitCode)
			if st.Signal != 0 {
				status = fmt.Sprintf("killed by signal %d", st.Signal)
			}
			return fmt.Errorf("%s: %s: %s", strings.Join(argv, " "), status, execOutput(st.Err, st.Out))
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: still running after the probe's timeout", strings.Join(argv, " "))
		case <-tick.C:
		}
	}
}

// execOutput is what a failed command printed (its errors, else its
// output), bounded.
func execOutput(stderr, stdout string) string {
	for _, s := range []string{stderr, stdout} {
		b, err := base64.StdEncoding.DecodeString(s)
		if err == nil && len(strings.TrimSpace(string(b))) > 0 {
			if len(b) > probeOutputLimit {
				b = b[:probeOutputLimit]
			}
			return strings.TrimSpace(string(b))
		}
	}
	return "no output"
}
