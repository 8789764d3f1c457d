#!/usr/bin/env bash
# deps.sh installs what podvirt's builds and tests need, idempotently:
# Debian packages through apt-get, and tools built from the Go module proxy at
# pinned versions into $PODVIRT_CACHE/bin/<tool>-<version>/.
#
#   test/deps/deps.sh            everything `make test` needs
#   test/deps/deps.sh lint       golangci-lint only
#   test/deps/deps.sh path TOOL  print TOOL's cached bin dir (builds it if missing)
set -euo pipefail

CACHE=${PODVIRT_CACHE:-$HOME/.cache/podvirt}

# shellcheck source=versions.env
. "$(dirname "$0")/versions.env"

APT_PACKAGES=(
	# the local cluster
	etcd-server containerd runc containernetworking-plugins iptables iproute2 ca-certificates
	# VMs: QEMU + libvirt (cgo bindings need libvirt-dev and pkg-config)
	qemu-system-x86 qemu-utils ovmf libvirt-daemon-system libvirt-clients libvirt-dev pkg-config
	# the pod network's user-mode NIC, forwarding ports into the guest
	passt
	# the test guest: busybox, a bootloader, FAT and ext4 tools; the ssh
	# server and guest agent it runs (the host's binaries and libraries)
	busybox-static syslinux syslinux-common extlinux dosfstools mtools e2fsprogs dropbear-bin qemu-guest-agent
	# podvirtctl ssh's tests: the user's ssh client
	openssh-client
	# the CSI importer's tests: a real registry process (TLS + htpasswd)
	docker-registry
)

log() { printf '[deps %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# apt_lists_current: the test guest downloads its kernel with apt-get, which
# needs package lists even when every package above is installed.
apt_lists_current() {
	compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null && return 0
	log "apt-get update (no package lists yet)"
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
}

apt_install() {
	local missing=() p
	for p in "$@"; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "installing Debian packages: ${missing[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "deps: installing ${missing[*]} needs root; run 'sudo make deps'" >&2
		return 1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# build_wrapped NAME VERSION MODULE LDFLAGS REPLACES PKG...
# Builds commands that `go install` cannot (replace directives, or a proxy
# that refuses the version list) through a throwaway wrapper module. The
# binaries are moved into place only after the build succeeds, so a
# half-built tool is never mistaken for a cached one.
build_wrapped() {
	local name=$1 version=$2 module=$3 ldflags=$4 replaces=$5
	shift 5
	local out=$CACHE/bin/$name-$version
	[ -d "$out" ] && return 0
	# Two `make` runs at once must not build into the same $out.tmp: the
	# second waits for the first, then finds the tool cached.
	mkdir -p "$CACHE/bin"
	local lock
	exec {lock}>"$CACHE/bin/.$name-$version.lock"
	flock "$lock"
	if [ -d "$out" ]; then exec {lock}>&-; return 0; fi
	local src=$CACHE/src/$name-$version
	log "building $name $version from the module proxy (slow the first time; cached in $out)"
	rm -rf "$src" "$out.tmp"
	mkdir -p "$src" "$out.tmp"
	{
		echo "module podvirt.local/wrap/$name"
		echo
		echo "go 1.26.0"
		echo
		# MODULE may carry its own version (module@version) when the
		# cache dir's VERSION names more than one module.
		if [[ $module == *@* ]]; then echo "require ${module%@*} ${module#*@}"; else echo "require $module $version"; fi
		# WRAP_REQUIRES="mod@version ...": more modules built in the same
		# compile (several tools sharing one set of k8s.io packages).
		local r
		for r in ${WRAP_REQUIRES:-}; do echo "require ${r%@*} ${r#*@}"; done
		[ -n "$replaces" ] && printf '\nreplace (\n%s\n)\n' "$replaces"
	} >"$src/go.mod"
	local targets=("$@")
	if [ -n "${WRAP_MAIN:-}" ]; then
		# WRAP_MAIN=FN: `FN PKG...` prints a main package of our own
		# that imports the PKGs; it is built as the binary NAME.
		mkdir -p "$src/$name"
		"$WRAP_MAIN" "$@" | gofmt >"$src/$name/main.go"
		targets=("./$name")
	else
		{
			echo '//go:build tools'
			echo
			echo 'package tools'
			echo
			echo 'import ('
			local p
			for p in "$@"; do echo "	_ \"$p\""; done
			echo ')'
		} >"$src/tools.go"
	fi
	(cd "$src" && GOFLAGS=-mod=mod go mod tidy)
	(cd "$src" && CGO_ENABLED=0 go build -trimpath -ldflags "$ldflags" -o "$out.tmp/" "${targets[@]}")
	# WRAP_POST=FN: `FN SRC OUT` finishes OUT before it moves into place
	# (renames a binary, copies files out of the module source).
	[ -z "${WRAP_POST:-}" ] || (cd "$src" && "$WRAP_POST" "$src" "$out.tmp")
	mv "$out.tmp" "$out"
	exec {lock}>&-
}

# upstream_replaces MODULE VERSION PATTERN: the module's own replace lines
# that point into its tree (./staging/...), rewritten to the published
# module at REPL_VERSION.
staging_replaces() {
	local module=$1 version=$2 repl_version=$3
	local modfile
	modfile=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$module@$version" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	sed -n 's#^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*#\1#p' "$modfile" |
		grep -v -x -e k8s.io/sample-cli-plugin -e k8s.io/sample-controller |
		while read -r m; do echo "	$m => $m $repl_version"; done
}

kubernetes() {
	local v=$KUBERNETES_VERSION minor
	minor=${v#v1.}
	minor=${minor%%.*}
	[ -d "$CACHE/bin/kubernetes-$v" ] && return 0
	local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
	ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$v -X k8s.io/client-go/pkg/version.gitMajor=1 -X k8s.io/client-go/pkg/version.gitMinor=$minor"
	build_wrapped kubernetes "$v" k8s.io/kubernetes "$ldflags" "$(staging_replaces k8s.io/kubernetes "$v" "v0.${v#v1.}")" \
		k8s.io/kubernetes/cmd/kube-apiserver \
		k8s.io/kubernetes/cmd/kube-controller-manager \
		k8s.io/kubernetes/cmd/kube-scheduler \
		k8s.io/kubernetes/cmd/kubelet \
		k8s.io/kubernetes/cmd/kube-proxy \
		k8s.io/kubernetes/cmd/kubectl
}

# cni_plugins: the upstream reference plugins (our tests' IPAM delegates and
# the benchmark's peers) and cnitool, which drives a plugin like a runtime.
cni_plugins() {
	local p=github.com/containernetworking/plugins/plugins
	build_wrapped cni-plugins "$CNI_PLUGINS_VERSION" github.com/containernetworking/plugins "-s -w" "" \
		$p/main/bridge $p/main/macvlan $p/main/loopback \
		$p/ipam/host-local $p/ipam/static $p/ipam/dhcp
	build_wrapped cnitool "$CNITOOL_VERSION" github.com/containernetworking/cni "-s -w" "" \
		github.com/containernetworking/cni/cnitool
}

multus() {
	local m=gopkg.in/k8snetworkplumbingwg/multus-cni.v4
	build_wrapped multus "$MULTUS_VERSION" $m "-s -w -X $m/pkg/multus.version=$MULTUS_VERSION" "" $m/cmd/multus
}

# whereabouts: the cluster-wide IPAM of the chart's "-pods" NADs. Its main
# package is .../cmd, so the binary is renamed from "cmd"; its CRDs (only
# published in the module source) land next to it.
whereabouts() {
	local w=github.com/k8snetworkplumbingwg/whereabouts
	WRAP_POST=whereabouts_post build_wrapped whereabouts "$WHEREABOUTS_VERSION" $w \
		"-s -w -X $w/pkg/version.Version=$WHEREABOUTS_VERSION -X $w/pkg/version.ReleaseStatus=released" \
		"$(module_replaces $w "$WHEREABOUTS_VERSION")" $w/cmd
}

whereabouts_post() {
	local dir
	dir=$(cd "$1" && go list -m -f '{{.Dir}}' github.com/k8snetworkplumbingwg/whereabouts)
	mv "$2/cmd" "$2/whereabouts"
	cp "$dir"/doc/crds/whereabouts.cni.cncf.io_*.yaml "$2/"
	chmod 644 "$2"/*.yaml
}

# coredns: the local cluster's DNS, built with only the plugins its
# Corefile uses (test/env/cluster/dns.go): CoreDNS's own main links every
# plugin, cloud SDKs and all, which would add minutes to a cold build. No
# forward plugin, so it cannot send a query off the machine.
COREDNS_PLUGINS=(bind ready errors log cache kubernetes)

coredns() {
	local c=github.com/coredns/coredns
	WRAP_MAIN=coredns_main build_wrapped coredns "$COREDNS_VERSION" $c "-s -w -X $c/coremain.GitCommit=$COREDNS_VERSION" "" \
		"${COREDNS_PLUGINS[@]/#/$c/plugin/}"
}

# coredns_main PLUGIN_PKG...: CoreDNS's own main with its plugin list cut
# to these (run in the order given: that of CoreDNS's plugin.cfg).
coredns_main() {
	local c=github.com/coredns/coredns
	cat <<EOF
package main

import (
	"$c/core/dnsserver"
	"$c/coremain"

$(printf '\t_ "%s"\n' "$@")
)

func main() {
	if err := dnsserver.SetDirectives([]string{$(printf '"%s", ' "${@##*/}")}); err != nil {
		panic(err)
	}
	coremain.Run()
}
EOF
}

controller_gen() {
	build_wrapped controller-gen "$CONTROLLER_GEN_VERSION" sigs.k8s.io/controller-tools "-s -w" "" \
		sigs.k8s.io/controller-tools/cmd/controller-gen
}

golangci_lint() {
	build_wrapped golangci-lint "$GOLANGCI_LINT_VERSION" github.com/golangci/golangci-lint/v2 "-s -w" "" \
		github.com/golangci/golangci-lint/v2/cmd/golangci-lint
}

# module_replaces MODULE VERSION: the module's own replace lines, minus
# those pointing into its tree (./...), which a wrapper cannot resolve.
module_replaces() {
	local modfile
	modfile=$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "$1@$2" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
	sed -n 's#^[[:space:]]*replace[[:space:]]*\(.* => [^.].*\)#\1#p' "$modfile" | grep -v ' => \./' | sed 's/^/\t/'
}

# csi_sidecars: external-provisioner, external-snapshotter (sidecar and
# snapshot-controller) and external-resizer, in ONE wrapper module and ONE
# `go build`, so their shared k8s.io packages compile once. All of them
# use the newest set of k8s.io versions among them, the snapshotter's
# replaces (k8s.io 0.34.0): with the provisioner's older set (0.33.0), the
# snapshotter's newer kube-openapi, gnostic and yaml modules do not
# compile. (The provisioner requires k8s.io/kubernetes only for its e2e
# tests; its binary does not compile any of it.) The provisioner's
# gateway-api v1.3.0 is built for the older set: v1.4.0 is the one for
# k8s.io 0.34. The
# VolumeSnapshot CRDs (only published in the snapshotter's client module)
# land next to the binaries, in crd/.
csi_sidecars() {
	local want="provisioner-$CSI_PROVISIONER_VERSION-snapshotter-$CSI_SNAPSHOTTER_VERSION-resizer-$CSI_RESIZER_VERSION"
	if [ "$CSI_SIDECARS_VERSION" != "$want" ]; then
		echo "deps: versions.env: CSI_SIDECARS_VERSION=$CSI_SIDECARS_VERSION, want $want (it names the sidecars' shared cache dir)" >&2
		return 1
	fi
	local p=github.com/kubernetes-csi/external-provisioner/v5 s=github.com/kubernetes-csi/external-snapshotter/v8
	local r=github.com/kubernetes-csi/external-resizer c=github.com/kubernetes-csi/external-snapshotter/client/v8
	WRAP_REQUIRES="$s@$CSI_SNAPSHOTTER_VERSION $r@$CSI_RESIZER_VERSION $c@$CSI_SNAPSHOTTER_VERSION" \
		build_wrapped csi-sidecars "$CSI_SIDECARS_VERSION" "$p@$CSI_PROVISIONER_VERSION" \
		"-s -w -X main.version=$CSI_SIDECARS_VERSION" "$(module_replaces $s "$CSI_SNAPSHOTTER_VERSION")
	sigs.k8s.io/gateway-api => sigs.k8s.io/gateway-api v1.4.0" \
		$p/cmd/csi-provisioner $s/cmd/csi-snapshotter $s/cmd/snapshot-controller $r/cmd/csi-resizer
	local out=$CACHE/bin/csi-sidecars-$CSI_SIDECARS_VERSION
	[ -d "$out/crd" ] && return 0
	local dir
	dir=$(cd "$CACHE/src/csi-sidecars-$CSI_SIDECARS_VERSION" && go list -m -f '{{.Dir}}' $c)
	mkdir -p "$out/crd.tmp"
	cp "$dir"/config/crd/snapshot.storage.k8s.io_*.yaml "$out/crd.tmp/"
	chmod 644 "$out"/crd.tmp/*
	mv "$out/crd.tmp" "$out/crd"
}

# helm: like helm's Makefile, stamp the Kubernetes version of its client-go
# (v0.37 → 1.37) as the default for `helm template`/`lint` (1.20 otherwise,
# which a chart's kubeVersion constraint rejects).
helm() {
	local h=helm.sh/helm/v3 kube=1.37
	build_wrapped helm "$HELM_VERSION" $h "-s -w -X $h/internal/version.version=$HELM_VERSION -X $h/pkg/chartutil.k8sVersionMajor=${kube%.*} -X $h/pkg/chartutil.k8sVersionMinor=${kube#*.} -X $h/pkg/lint/rules.k8sVersionMajor=${kube%.*} -X $h/pkg/lint/rules.k8sVersionMinor=${kube#*.}" "" \
		$h/cmd/helm
}

# build TOOL: build one tool by its name in versions.env.
build() {
	case "$1" in
	kubernetes) kubernetes ;;
	cni-plugins | cnitool) cni_plugins ;;
	multus) multus ;;
	whereabouts) whereabouts ;;
	coredns) coredns ;;
	controller-gen) controller_gen ;;
	golangci-lint | lint) golangci_lint ;;
	helm) helm ;;
	csi-sidecars) csi_sidecars ;;
	*)
		echo "deps: unknown tool '$1' (want: kubernetes, cni-plugins, cnitool, multus, whereabouts, coredns, controller-gen, golangci-lint, helm, csi-sidecars)" >&2
		exit 2
		;;
	esac
}

main() {
	mkdir -p "$CACHE/bin"
	case "${1:-all}" in
	all)
		apt_install "${APT_PACKAGES[@]}"
		apt_lists_current
		cni_plugins
		multus
		whereabouts
		coredns
		controller_gen
		kubernetes
		helm
		csi_sidecars
		;;
	path)
		[ $# -eq 2 ] || { echo "usage: deps.sh path TOOL" >&2; exit 2; }
		build "$2" >&2
		local var
		var=$(echo "$2" | tr 'a-z-' 'A-Z_')_VERSION
		echo "$CACHE/bin/$2-${!var}"
		;;
	*) build "$1" ;;
	esac
}

main "$@"
