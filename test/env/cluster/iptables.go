package cluster

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// kubeletChains are the iptables chains every kubelet creates (a canary
// that tells it when the tables were flushed, and a rule that blocks
// connections to 127/8 from outside). They are shared by all kubelets on a
// machine, so they go only when no other kubelet is left.
var kubeletChains = []string{"KUBE-FIREWALL", "KUBE-KUBELET-CANARY"}

func otherKubeletRunning() bool {
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == "kubelet" {
			return true
		}
	}
	return false
}

// removeKubeletChains deletes the kubelet's chains, and the rules that jump
// to them, from every iptables flavour installed (nft and legacy, v4 and v6).
func removeKubeletChains() error {
	if otherKubeletRunning() {
		return nil
	}
	var errs []string
	for _, tool := range []string{"iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, err := exec.Command(path, "-w", "-t", table, "-S").Output()
			if err != nil {
				continue // table not present in this flavour
			}
			for line := range strings.Lines(string(out)) {
				args := strings.Fields(line)
				if len(args) < 2 || args[0] != "-A" || slices.Contains(kubeletChains, args[1]) || !jumpsToKubeletChain(args) {
					continue
				}
				args[0] = "-D"
				if b, err := exec.Command(path, append([]string{"-w", "-t", table}, args...)...).CombinedOutput(); err != nil {
					errs = append(errs, fmt.Sprintf("%s -t %s %s: %s", tool, table, strings.Join(args, " "), strings.TrimSpace(string(b))))
				}
			}
			for _, chain := range kubeletChains {
				if !strings.Contains(string(out), "-N "+chain+"\n") {
					continue
				}
				for _, op := range []string{"-F", "-X"} {
					if b, err := exec.Command(path, "-w", "-t", table, op, chain).CombinedOutput(); err != nil {
						errs = append(errs, fmt.Sprintf("%s -t %s %s %s: %s", tool, table, op, chain, strings.TrimSpace(string(b))))
					}
				}
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("remove the kubelet's iptables chains: %s", strings.Join(errs, "; "))
	}
	return nil
}

func jumpsToKubeletChain(args []string) bool {
	i := slices.Index(args, "-j")
	return i >= 0 && i+1 < len(args) && slices.Contains(kubeletChains, args[i+1])
}

// kubeletChainsLeft lists the kubelet chains still present in iptables.
func kubeletChainsLeft() []string {
	var left []string
	for _, tool := range []string{"iptables", "ip6tables", "iptables-legacy", "ip6tables-legacy"} {
		path, err := exec.LookPath(tool)
		if err != nil {
			continue
		}
		for _, table := range []string{"filter", "nat", "mangle"} {
			out, _ := exec.Command(path, "-w", "-t", table, "-S").Output()
			for _, chain := range kubeletChains {
				if strings.Contains(string(out), "-N "+chain+"\n") {
					left = append(left, fmt.Sprintf("iptables chain %s/%s (%s)", table, chain, tool))
				}
			}
		}
	}
	return left
}
