// Package apiserver gives a package's integration tests a real etcd and
// kube-apiserver (the binaries `make deps` installs), through
// controller-runtime's envtest, so controllers are tested against the real
// API machinery (validation, CEL, admission, watch) and not a fake clientset.
//
// Start one per test binary from TestMain. To run against an existing
// cluster instead (e.g. `make up`), set PODVIRT_TEST_KUBECONFIG.
package apiserver

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/podvirt/podvirt/test/deps"
)

// Server is a running API server for tests.
type Server struct {
	// Config reaches the server as a cluster admin.
	Config *rest.Config
	env    *envtest.Environment
	assets string
}

// Options says what the server starts with.
type Options struct {
	// CRDDirs are directories of CRD YAML files installed before Start
	// returns (e.g. charts/podvirt/crds).
	CRDDirs []string
	// CRDs are CRD objects installed before Start returns.
	CRDs []*apiextensionsv1.CustomResourceDefinition
}

// Start starts etcd and kube-apiserver, or connects to the cluster named by
// PODVIRT_TEST_KUBECONFIG, and installs the CRDs in opts.
func Start(opts Options) (*Server, error) {
	env := &envtest.Environment{
		CRDDirectoryPaths:     opts.CRDDirs,
		CRDs:                  opts.CRDs,
		ErrorIfCRDPathMissing: true,
		// envtest's default of 20 s is met on an idle machine (4–12 s)
		// but not on a loaded one, where the test would fail for no fault
		// of the code; a real fault still fails, only later.
		ControlPlaneStartTimeout: 3 * time.Minute,
		ControlPlaneStopTimeout:  time.Minute,
	}
	s := &Server{env: env}
	if kubeconfig := os.Getenv("PODVIRT_TEST_KUBECONFIG"); kubeconfig != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("PODVIRT_TEST_KUBECONFIG=%s: %w", kubeconfig, err)
		}
		env.UseExistingCluster = new(true)
		env.Config = cfg
	} else {
		assets, err := assetsDir()
		if err != nil {
			return nil, err
		}
		s.assets = assets
		env.BinaryAssetsDirectory = assets
	}
	cfg, err := env.Start()
	if err != nil {
		// envtest returns errors after the control plane is up (installing
		// CRDs, say) without stopping it.
		_ = env.Stop()
		s.cleanAssets()
		return nil, fmt.Errorf("start etcd + kube-apiserver for tests: %w", err)
	}
	s.Config = cfg
	return s, nil
}

// Stop stops what Start started.
func (s *Server) Stop() error {
	defer s.cleanAssets()
	return s.env.Stop()
}

func (s *Server) cleanAssets() {
	if s.assets != "" {
		os.RemoveAll(s.assets)
	}
}

// assetsDir makes the directory envtest expects, holding `etcd` and
// `kube-apiserver`, out of links to the pinned binaries.
func assetsDir() (string, error) {
	etcd, err := deps.System("etcd")
	if err != nil {
		return "", err
	}
	apiserver, err := deps.Binary("kubernetes", "kube-apiserver")
	if err != nil {
		return "", err
	}
	dir, err := os.MkdirTemp("", "podvirt-envtest-")
	if err != nil {
		return "", err
	}
	for name, target := range map[string]string{"etcd": etcd, "kube-apiserver": apiserver} {
		if err := os.Symlink(target, filepath.Join(dir, name)); err != nil {
			os.RemoveAll(dir)
			return "", err
		}
	}
	return dir, nil
}
