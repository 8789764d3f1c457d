package dhcp

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"sync"
	"syscall"

	"github.com/containernetworking/plugins/pkg/ns"
	"golang.org/x/sys/unix"
)

// Config says what a server serves and where.
type Config struct {
	// Interface is the link the guest's frames arrive on: its tap (in
	// both podvirt-l2 modes the tap leads to the guest alone, so replies
	// never reach the rest of the network).
	Interface string
	// NetNS is the path of the network namespace Interface is in; empty
	// means the caller's (a launcher runs in its pod's netns).
	NetNS string
	Lease Lease
	// ServerID is the server identifier (option 54); the zero Addr means
	// DefaultServerID.
	ServerID netip.Addr
	// Log gets one line per reply; nil means slog.Default().
	Log *slog.Logger
}

// fallbackServerMAC is the replies' source MAC when the interface has
// none of its own that differs from the guest's (in macvlan mode the tap
// carries the guest's MAC).
var fallbackServerMAC = net.HardwareAddr{0x02, 0x70, 0x76, 0x00, 0x00, 0x01}

// Server serves one lease on one interface.
type Server struct {
	cfg     Config
	mac     net.HardwareAddr
	ifindex int
	file    *os.File
	rc      syscall.RawConn
	log     *slog.Logger

	mu      sync.Mutex
	replies map[MessageType]int
	closed  bool
}

// Listen opens an AF_PACKET socket on cfg.Interface (in cfg.NetNS) that
// receives only IPv4 UDP frames to port 67. It needs CAP_NET_RAW in the
// interface's netns. Serve the socket with Serve.
func Listen(cfg Config) (*Server, error) {
	if err := cfg.Lease.Validate(); err != nil {
		return nil, err
	}
	if !cfg.ServerID.IsValid() {
		cfg.ServerID = DefaultServerID
	}
	if !cfg.ServerID.Is4() {
		return nil, fmt.Errorf("dhcp: server ID %s is not IPv4", cfg.ServerID)
	}
	s := &Server{cfg: cfg, log: cfg.Log, replies: map[MessageType]int{}}
	if s.log == nil {
		s.log = slog.Default()
	}
	s.log = s.log.With("interface", cfg.Interface, "mac", cfg.Lease.MAC.String())
	var fd int
	open := func(ns.NetNS) error {
		ifc, err := net.InterfaceByName(cfg.Interface)
		if err != nil {
			return fmt.Errorf("dhcp: interface %q: %w", cfg.Interface, err)
		}
		s.mac = fallbackServerMAC
		if len(ifc.HardwareAddr) == 6 && !bytes.Equal(ifc.HardwareAddr, cfg.Lease.MAC) {
			s.mac = ifc.HardwareAddr
		}
		s.ifindex = ifc.Index
		fd, err = openPacketSocket(ifc.Index)
		return err
	}
	var err error
	if cfg.NetNS == "" {
		err = open(nil)
	} else {
		err = ns.WithNetNSPath(cfg.NetNS, open)
	}
	if err != nil {
		return nil, err
	}
	s.file = os.NewFile(uintptr(fd), "dhcp:"+cfg.Interface)
	if s.rc, err = s.file.SyscallConn(); err != nil {
		_ = s.file.Close()
		return nil, err
	}
	return s, nil
}

// filter is "udp dst port 67" for Ethernet frames, as classic BPF.
var filter = []unix.SockFilter{
	{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 12},                        // 0: ethertype
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 8, K: etherTypeIPv4},     // 1: → drop
	{Code: unix.BPF_LD | unix.BPF_B | unix.BPF_ABS, K: 23},                        // 2: IP protocol
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jf: 6, K: protoUDP},          // 3: → drop
	{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_ABS, K: 20},                        // 4: fragment offset
	{Code: unix.BPF_JMP | unix.BPF_JSET | unix.BPF_K, Jt: 4, K: 0x1fff},           // 5: → drop
	{Code: unix.BPF_LDX | unix.BPF_B | unix.BPF_MSH, K: ethHeaderLen},             // 6: X = IP header length
	{Code: unix.BPF_LD | unix.BPF_H | unix.BPF_IND, K: ethHeaderLen + 2},          // 7: UDP destination port
	{Code: unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K, Jt: 0, Jf: 1, K: ServerPort}, // 8
	{Code: unix.BPF_RET | unix.BPF_K, K: 0x40000},                                 // 9: accept
	{Code: unix.BPF_RET | unix.BPF_K, K: 0},                                       // 10: drop
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// openPacketSocket opens a non-blocking AF_PACKET socket bound to
// ifindex, filtered before it receives anything: it is made with protocol
// 0 (no frames) and only bound once the filter is on. It is bound to
// ETH_P_ALL, not ETH_P_IP: the kernel hands frames to protocol-specific
// packet sockets only after the device's rx handler and tc ingress, and
// on a bridge port (bridge mode) or a tap whose ingress is redirected
// (macvlan mode) those take every frame first.
func openPacketSocket(ifindex int) (int, error) {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return -1, fmt.Errorf("dhcp: AF_PACKET socket (needs CAP_NET_RAW): %w", err)
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	if err := unix.SetsockoptSockFprog(fd, unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("dhcp: attaching socket filter: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_ALL), Ifindex: ifindex}); err != nil {
		_ = unix.Close(fd)
		return -1, fmt.Errorf("dhcp: binding to ifindex %d: %w", ifindex, err)
	}
	return fd, nil
}

// Serve answers requests until Close; it then returns nil.
func (s *Server) Serve() error {
	buf := make([]byte, 65536)
	for {
		var (
			n    int
			from unix.Sockaddr
			rerr error
		)
		err := s.rc.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		if err == nil {
			err = rerr
		}
		if err != nil {
			if s.isClosed() || errors.Is(err, os.ErrClosed) {
				return nil
			}
			if errors.Is(err, unix.EINTR) || errors.Is(err, unix.ENETDOWN) {
				continue
			}
			return fmt.Errorf("dhcp: reading from %s: %w", s.cfg.Interface, err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // something the host sends towards the guest
		}
		if err := s.handle(buf[:n]); err != nil {
			if s.isClosed() {
				return nil
			}
			s.log.Warn("dhcp reply", "err", err)
		}
	}
}

func (s *Server) handle(b []byte) error {
	f, err := ParseFrame(b)
	if err != nil || f.DstPort != ServerPort {
		return nil
	}
	req, err := Parse(f.Payload)
	if err != nil {
		s.log.Debug("dhcp: bad message", "from", f.SrcMAC.String(), "err", err)
		return nil
	}
	resp := Reply(&s.cfg.Lease, s.cfg.ServerID, req)
	if resp == nil {
		if req.Op == OpRequest {
			s.log.Debug("dhcp: not answering", "type", req.Type().String(), "client", req.ClientMAC().String())
		}
		return nil
	}
	dstMAC, dstIP := replyAddressing(req, resp)
	out := &Frame{
		DstMAC: dstMAC, SrcMAC: s.mac,
		SrcIP: s.cfg.ServerID, DstIP: dstIP,
		SrcPort: ServerPort, DstPort: ClientPort,
		Payload: resp.Marshal(),
	}
	if err := s.send(out.Marshal(), dstMAC); err != nil {
		return err
	}
	s.mu.Lock()
	s.replies[resp.Type()]++
	s.mu.Unlock()
	s.log.Info("dhcp", "request", req.Type().String(), "reply", resp.Type().String(), "ip", s.cfg.Lease.Addr.String())
	return nil
}

func (s *Server) send(frame []byte, dst net.HardwareAddr) error {
	to := &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: s.ifindex, Halen: 6}
	copy(to.Addr[:], dst)
	var serr error
	err := s.rc.Write(func(fd uintptr) bool {
		serr = unix.Sendto(int(fd), frame, 0, to)
		return serr != unix.EAGAIN
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return fmt.Errorf("dhcp: sending on %s: %w", s.cfg.Interface, err)
	}
	return nil
}

// Replies returns how many replies of each type were sent.
func (s *Server) Replies() map[MessageType]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[MessageType]int, len(s.replies))
	for k, v := range s.replies {
		out[k] = v
	}
	return out
}

func (s *Server) isClosed() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closed
}

// Close stops Serve and closes the socket.
func (s *Server) Close() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()
	return s.file.Close()
}
