# podvirt — see README.md. Every target installs what it needs through
# `make deps` (idempotent; cached under $(PODVIRT_CACHE)).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c

export PODVIRT_CACHE ?= $(HOME)/.cache/podvirt
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/podvirt/podvirt/cmd/internal/version.Version=$(VERSION)
DEPS := test/deps/deps.sh
CLUSTER := go run ./test/cmd/podvirt-cluster
# `make up NODES=2` (or PODVIRT_NODES=2): nodes of the local cluster; unset
# keeps as many as it has (1 for a new one).
ifdef NODES
export PODVIRT_NODES := $(NODES)
endif

# Packages that bring up a whole cluster run after the rest, one at a
# time: not for correctness (each cluster has its own node paths and runs
# beside any other, the demo's included) but because their TCG guests and
# kubelets would share 2 cores.
E2E_DIRS := test/env/cluster test/env/chart test/suites/noderuntime runtime/deviceplugin test/suites/e2e
E2E_PKGS := $(patsubst %,./%/...,$(E2E_DIRS))

.PHONY: all deps build images test unit e2e bench lint generate up down demo kubectl-path clean

all: build

deps:
	@$(DEPS) all

# Static binaries, except the launcher, which links libvirt through cgo.
build:
	CGO_ENABLED=0 go build -trimpath -ldflags '$(LDFLAGS)' -o bin/ $$(go list ./cmd/... | grep -v -e /podvirt-launcher -e /internal/)
	go build -trimpath -ldflags '$(LDFLAGS)' -o bin/ ./cmd/podvirt-launcher

# Every component image (and the CSI sidecars), built without Docker and
# imported into the running `make up` cluster's containerd; unchanged
# images are skipped (test/images/components).
images: deps
	go run ./test/cmd/podvirt-images --version $(VERSION) import

# The README's test command: every package's tests on real parts, then e2e
# even when a package failed, so one run reports every failure.
test: deps
	@status=0; \
	go test -count=1 -timeout 30m $$(go list ./... | grep -v $(patsubst %,-e /%,$(E2E_DIRS))) || status=1; \
	$(MAKE) --no-print-directory e2e || status=1; \
	exit $$status

e2e: deps
	go test -count=1 -timeout 60m -p 1 $(E2E_PKGS)

# Each benchmark prints its ratio against the reference named in its issue;
# BENCHMARKS.md records the results.
bench: deps
	go test -run '^$$' -bench . -benchtime 30x ./cni/
	go test -run '^$$' -bench Density -benchtime 1x -timeout 60m ./controller/density/
	go test -run '^$$' -bench . -benchtime 3x -timeout 30m ./csi/importer/
	go test -run '^$$' -bench CreateFromCache -benchtime 20x ./csi/driver/
	go test -run '^$$' -bench BootVsVirsh -benchtime 5x -timeout 60m ./runtime/launcher/
	go test -run '^$$' -bench MigrateVsVirsh -benchtime 3x -timeout 60m ./runtime/launcher/
	go test -run '^$$' -bench SnapshotOnline -benchtime 5x -timeout 60m ./runtime/launcher/
	go test -run '^$$' -bench ImagePush -benchtime 3x -timeout 30m ./cmd/podvirtctl/internal/cli/
	go test -run '^$$' -bench . -benchtime 1x -timeout 90m ./test/suites/e2e/

lint:
	@$(DEPS) lint
	@out=$$(gofmt -l $$(git ls-files -co --exclude-standard '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	$$($(DEPS) path golangci-lint)/golangci-lint run ./...

generate:
	$$($(DEPS) path controller-gen)/controller-gen object crd:generateEmbeddedObjectMeta=true paths=./api/... output:crd:artifacts:config=charts/podvirt/crds

up: deps
	$(CLUSTER) up

down:
	$(CLUSTER) down

# The README's main command.
demo: deps
	$(CLUSTER) demo

kubectl-path:
	@echo $(PODVIRT_CACHE)/bin/kubernetes-$$(. test/deps/versions.env; echo $$KUBERNETES_VERSION)/kubectl

clean:
	rm -rf bin/
