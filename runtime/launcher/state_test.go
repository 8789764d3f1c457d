package launcher

import (
	"slices"
	"testing"

	"libvirt.org/go/libvirt"

	v1 "github.com/podvirt/podvirt/api/v1alpha1"
)

// TestStatesAreVMIStates: whatever libvirt says, the launcher reports one
// of the domain states the VMI status accepts (the protocol carries it
// unchanged, see contracts/launchercmd).
func TestStatesAreVMIStates(t *testing.T) {
	for s := libvirt.DOMAIN_NOSTATE; s <= libvirt.DOMAIN_PMSUSPENDED; s++ {
		if got := stateOf(s); !slices.Contains(v1.DomainStates, got) {
			t.Errorf("libvirt state %d → %q, not a v1alpha1.DomainState", s, got)
		}
	}
}
