#!/usr/bin/env bash
# Runs the zmq-proxy on this machine with the embedded (static) matchmaker:
# installs the build dependencies if missing (Debian/Ubuntu: libzmq3-dev,
# pkg-config, a C toolchain; Rust via rustup if cargo is absent), then
# `cargo run --release --bin zmq-proxy`. Extra arguments go to the proxy,
# e.g. `bash proxy/run.sh --pubsub -f 0 -b 0 -p 0`.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for p in libzmq3-dev pkg-config build-essential; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    echo "run.sh: installing ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi
if ! command -v cargo >/dev/null 2>&1; then
    [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal
    export PATH="$HOME/.cargo/bin:$PATH"
fi

exec cargo run --release --bin zmq-proxy -- --matchmaker static "$@"
