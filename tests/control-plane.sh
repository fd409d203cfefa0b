#!/usr/bin/env bash
# A local Kubernetes control plane for people: the same etcd +
# kube-apiserver + kube-controller-manager + kube-scheduler the tests start
# (built by tests/install.sh), optionally with the real node (containerd,
# kubelet, kube-proxy, CoreDNS; pods are containers of our images).
#
#   bash tests/control-plane.sh up [--node]    start (prints the env to use)
#   bash tests/control-plane.sh env            print `export KUBECONFIG=...`
#   bash tests/control-plane.sh status         running or not
#   bash tests/control-plane.sh down           stop everything
#
#   eval "$(bash tests/control-plane.sh env)"; kubectl get nodes
#
# --node builds the images (tests/images.sh build) and starts a real node
# with them imported (needs root; one per machine). `down` deletes its pods
# and stops it.
# State (PID, env, log) lives in ${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}/control-plane.
set -euo pipefail
cd "$(dirname "$0")/.."
CACHE="${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}"
STATE="$CACHE/control-plane"
K8S_BIN="$CACHE/k8s-$(sed -n 's/^K8S_VERSION=//p' tests/install.sh)/bin"
BIN="${ZMQ_PROXY_BIN_DIR:-$PWD/target/debug}"
mkdir -p "$STATE"

running() {
    [ -f "$STATE/pid" ] && kill -0 "$(cat "$STATE/pid")" 2>/dev/null
}

print_env() {
    cat "$STATE/env"
    echo "export PATH=\"$K8S_BIN:$CACHE/venv/bin:\$PATH\""
}

case "${1:-}" in
up)
    if running; then
        echo "already running (PID $(cat "$STATE/pid"))" >&2
        print_env
        exit 0
    fi
    bash tests/install.sh
    cargo build -q -p zmq-proxy-tests --bin zmq-proxy-control-plane
    args=(--env-file "$STATE/env")
    if [ "${2:-}" = "--node" ]; then
        bash tests/images.sh build
        args+=(--node)
    fi
    rm -f "$STATE/env"
    # setsid: a Ctrl-C in this terminal must not reach the plane.
    setsid "$BIN/zmq-proxy-control-plane" "${args[@]}" >"$STATE/log" 2>&1 </dev/null &
    echo $! >"$STATE/pid"
    # Up to 300 s: a real node imports images and waits for the kubelet.
    for _ in $(seq 1 1500); do
        if [ -s "$STATE/env" ]; then
            print_env
            exit 0
        fi
        if ! running; then
            echo "control plane failed to start; log:" >&2
            tail -n 40 "$STATE/log" >&2
            exit 1
        fi
        sleep 0.2
    done
    echo "control plane not ready after 300 s; log: $STATE/log" >&2
    exit 1
    ;;
env)
    running || { echo "not running (bash tests/control-plane.sh up)" >&2; exit 1; }
    print_env
    ;;
status)
    if running; then echo "running (PID $(cat "$STATE/pid"))"; else echo "not running"; exit 1; fi
    ;;
down)
    if running; then
        pid="$(cat "$STATE/pid")"
        kill -TERM "$pid"
        # A real node deletes its pods and waits for their containers first.
        for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
        if kill -0 "$pid" 2>/dev/null; then kill -KILL "$pid"; fi
    fi
    rm -f "$STATE/pid" "$STATE/env"
    ;;
*)
    sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
    ;;
esac
