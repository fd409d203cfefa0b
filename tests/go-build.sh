#!/usr/bin/env bash
# Builds upstream Go binaries of the test bed from Go modules, with the
# machine's Go, into a cache directory keyed by version. Called by
# tests/install.sh; usable by hand:
#
#   bash tests/go-build.sh kubernetes 1.37.2 OUT_DIR
#   bash tests/go-build.sh etcd 3.7.3 OUT_DIR
#   bash tests/go-build.sh prometheus v0.316.0 OUT_DIR
#   bash tests/go-build.sh coredns v1.15.0 OUT_DIR
#
# Why a generated module: `go install k8s.io/kubernetes/cmd/...@vX` is refused
# because k8s.io/kubernetes's go.mod replaces its staging modules
# (k8s.io/api, k8s.io/client-go, ...) with local paths. A throwaway module that
# requires k8s.io/kubernetes and replaces every staging module with its
# published v0.Y.Z builds the same code. The same holds for etcd's server
# module (it replaces its sibling modules with ../api etc.).
#
# Binaries land in OUT_DIR only when all of them built (written to a temp dir,
# then moved), so an interrupted build never leaves a half-filled cache.
set -euo pipefail

what="$1"
version="$2"
out="$3"
work="$(mktemp -d "${TMPDIR:-/tmp}/zmq-proxy-go-build.XXXXXX")"
trap 'rm -rf "$work"' EXIT
export GOFLAGS="-buildvcs=false -mod=mod"
export CGO_ENABLED=0

# staging_replaces MODULE@VERSION: one `replace` line per module that
# MODULE's own go.mod maps to a local path, pointing at the published
# version given by the callback's $1 (printed by map_version).
staging_replaces() {
    local gomod="$1"
    # Lines of the form `	k8s.io/api => ./staging/src/k8s.io/api` or
    # `go.etcd.io/etcd/api/v3 => ../api`.
    grep -E '^[[:space:]]*(replace[[:space:]]+)?[^[:space:]]+[[:space:]]+=>[[:space:]]+\.\.?/' "$gomod" \
        | sed -E 's/^[[:space:]]*(replace[[:space:]]+)?//' \
        | awk '{print $1}'
}

gomod_of() {
    (cd "$work" && go mod download -json "$1" | sed -n 's/.*"GoMod": "\(.*\)",/\1/p')
}

cd "$work"
case "$what" in
kubernetes)
    minor="$(echo "$version" | cut -d. -f2)"
    staging_version="v0.${version#1.}"
    mod="$(gomod_of "k8s.io/kubernetes@v$version")"
    {
        echo "module zmqproxy.io/testbed-build"
        echo
        echo "go $(sed -n 's/^go //p' "$mod")"
        echo
        echo "require k8s.io/kubernetes v$version"
        echo
        for m in $(staging_replaces "$mod"); do
            echo "replace $m => $m $staging_version"
        done
    } >go.mod
    pkgs=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
    {
        echo "//go:build tools"
        echo "package tools"
        echo "import ("
        for p in "${pkgs[@]}"; do echo "	_ \"k8s.io/kubernetes/cmd/$p\""; done
        echo ")"
    } >tools.go
    go mod tidy
    ldflags="-s -w"
    for kv in "gitVersion=v$version" "gitMajor=1" "gitMinor=$minor" \
              "gitTreeState=clean" "buildDate=1970-01-01T00:00:00Z"; do
        ldflags="$ldflags -X k8s.io/component-base/version.$kv -X k8s.io/client-go/pkg/version.$kv"
    done
    mkdir -p bin
    args=()
    for p in "${pkgs[@]}"; do args+=("k8s.io/kubernetes/cmd/$p"); done
    go build -trimpath -ldflags "$ldflags" -o bin/ "${args[@]}"
    ;;
etcd)
    mod="$(gomod_of "go.etcd.io/etcd/server/v3@v$version")"
    {
        echo "module zmqproxy.io/testbed-build"
        echo
        echo "go $(sed -n 's/^go //p' "$mod")"
        echo
        echo "require go.etcd.io/etcd/server/v3 v$version"
        echo
        for m in $(staging_replaces "$mod"); do
            echo "replace $m => $m v$version"
        done
    } >go.mod
    printf '//go:build tools\npackage tools\nimport _ "go.etcd.io/etcd/server/v3"\n' >tools.go
    go mod tidy
    mkdir -p bin
    go build -trimpath -ldflags "-s -w" -o bin/etcd go.etcd.io/etcd/server/v3
    ;;
prometheus)
    # Prometheus v3.x is published as module versions v0.3xx.y
    # (github.com/prometheus/prometheus has no /v3 path).
    {
        echo "module zmqproxy.io/testbed-build"
        echo
        echo "go 1.24"
        echo
        echo "require github.com/prometheus/prometheus $version"
    } >go.mod
    printf '//go:build tools\npackage tools\nimport (\n_ "github.com/prometheus/prometheus/cmd/prometheus"\n_ "github.com/prometheus/prometheus/cmd/promtool"\n)\n' >tools.go
    go mod tidy
    mkdir -p bin
    # Only the service discovery the tests use (kubernetes_sd_configs);
    # the others are build-tag plugins that add minutes to the build.
    # Module v0.3MM.P is Prometheus 3.MM.P; stamp it as `prometheus --version`
    # and /api/v1/status/buildinfo report it.
    release="$(echo "$version" | sed -E 's/^v0\.3([0-9]{2})\.([0-9]+)$/3.\1.\2/; s/^3\.0([0-9])/3.\1/')"
    pv=github.com/prometheus/common/version
    go build -trimpath -tags "remove_all_sd,enable_kubernetes_sd" \
        -ldflags "-s -w -X $pv.Version=$release -X $pv.Branch=HEAD -X $pv.Revision=$version" \
        -o bin/ github.com/prometheus/prometheus/cmd/prometheus \
        github.com/prometheus/prometheus/cmd/promtool
    ;;
coredns)
    # The real node's cluster DNS. CoreDNS's own main imports every plugin
    # (cloud DNS providers and their SDKs: minutes of build); this main
    # imports only what a cluster's DNS needs, the way CoreDNS documents
    # building with a chosen plugin set.
    {
        echo "module zmqproxy.io/testbed-build"
        echo
        echo "go $(sed -n 's/^go //p' "$(gomod_of "github.com/coredns/coredns@$version")")"
        echo
        echo "require github.com/coredns/coredns $version"
    } >go.mod
    cat >main.go <<'GO'
package main

import (
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/ready"

	"github.com/coredns/coredns/coremain"
)

func main() { coremain.Run() }
GO
    go mod tidy
    mkdir -p bin
    go build -trimpath -ldflags "-s -w -X github.com/coredns/coredns/coremain.GitCommit=$version" \
        -o bin/coredns .
    ;;
*)
    echo "go-build.sh: unknown target $what" >&2
    exit 2
    ;;
esac

mkdir -p "$out"
for b in bin/*; do
    install -m 0755 "$b" "$out/$(basename "$b").tmp"
    mv "$out/$(basename "$b").tmp" "$out/$(basename "$b")"
done
