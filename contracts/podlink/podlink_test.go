package podlink

import (
	"fmt"
	"testing"
)

func TestInterfaceName(t *testing.T) {
	seen := map[string]string{}
	for i := range 100 {
		net := fmt.Sprintf("net-%d", i)
		name := InterfaceName(net)
		if len(name) > maxLen {
			t.Fatalf("%s → %s: longer than IFNAMSIZ-1", net, name)
		}
		if other, ok := seen[name]; ok {
			t.Fatalf("%s and %s share %s", net, other, name)
		}
		seen[name] = net
	}
	first, again := InterfaceName("a"), InterfaceName("a")
	if first != again {
		t.Fatalf("InterfaceName is not stable: %s, then %s", first, again)
	}
}

func TestDerivedNames(t *testing.T) {
	if got := TapName("net1"); got != "tapnet1" {
		t.Errorf("TapName(net1) = %q", got)
	}
	if got := BridgeName("net1"); got != "brnet1" {
		t.Errorf("BridgeName(net1) = %q", got)
	}
	long := "abcdefghijklmno" // 15, the longest link name
	for _, n := range []string{TapName(long), BridgeName(long), TapForNetwork("a-rather-long-network-name")} {
		if len(n) > maxLen {
			t.Errorf("derived name %q is longer than a link name may be", n)
		}
	}
	if TapName(long) == TapName("abcdefghijklmnp") {
		t.Error("different pod links share a tap name")
	}
}
