package driver

import (
	"path/filepath"
	"testing"

	"github.com/kubernetes-csi/csi-test/v5/pkg/sanity"
	. "github.com/onsi/ginkgo/v2"
	"github.com/onsi/ginkgo/v2/types"
	. "github.com/onsi/gomega"
)

// TestSanity runs kubernetes-csi's csi-sanity against a driver for Filesystem
// (mount) volumes and one for Block volumes, on real qemu-img, loop devices
// and bind mounts, in one Ginkgo suite (Ginkgo runs one per process).
func TestSanity(t *testing.T) {
	configs := map[string]*sanity.TestConfig{}
	for _, access := range []string{"mount", "block"} {
		root := t.TempDir()
		td := startDriver(t, filepath.Join(root, "state"), Options{})
		cfg := sanity.NewTestConfig()
		cfg.Address = td.endpoint
		cfg.TargetPath = filepath.Join(root, "target")
		cfg.StagingPath = filepath.Join(root, "staging")
		cfg.TestVolumeAccessType = access
		cfg.TestVolumeSize = 64 << 20
		cfg.TestVolumeExpandSize = 128 << 20
		cfg.IdempotentCount = 3
		configs[access] = &cfg
		t.Cleanup(func() {
			// Sanity deletes what it made: no loop device may remain.
			if loops := loopsOf(t, td.dir); len(loops) > 0 {
				t.Errorf("%s: loop devices left attached after csi-sanity: %v", access, loops)
			}
		})
	}
	for _, access := range []string{"mount", "block"} {
		Describe("access type "+access, func() { sanity.GinkgoTest(configs[access]) })
	}
	var passed, skipped, failed int
	ReportAfterSuite("counts", func(r Report) {
		for _, s := range r.SpecReports {
			if s.LeafNodeType != types.NodeTypeIt {
				continue
			}
			switch {
			case s.State == types.SpecStatePassed:
				passed++
			case s.State == types.SpecStateSkipped || s.State == types.SpecStatePending:
				skipped++
			case s.State.Is(types.SpecStateFailureStates):
				failed++
			}
		}
	})
	RegisterFailHandler(Fail)
	suite, reporter := GinkgoConfiguration()
	suite.Timeout = 0
	RunSpecs(t, "disk.podvirt.io csi-sanity", suite, reporter)
	t.Logf("csi-sanity (mount and block, IdempotentCount 3): %d passed, %d skipped, %d failed", passed, skipped, failed)
	if passed == 0 {
		t.Error("csi-sanity ran no spec")
	}
}
