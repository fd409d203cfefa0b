#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): dependencies, formatting,
# lints, then every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

# System dependencies (idempotent; the full installer also provides the
# Kubernetes control plane binaries for the end-to-end suites).
if [ -f tests/install.sh ]; then
    bash tests/install.sh
else
    missing=()
    for p in libzmq3-dev pkg-config; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
    fi
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Binaries first, so tests that start them find them built.
cargo build --workspace --bins
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --no-fail-fast
    cargo test --workspace --doc
else
    cargo test --workspace --no-fail-fast
fi
