#!/usr/bin/env bash
# The whole test suite, as CI runs it (.ci/run): dependencies (tests/install.sh:
# Debian packages; Kubernetes, etcd and Prometheus built from Go modules;
# helm; cargo-nextest), formatting, lints, then every test of the workspace.
# Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."

bash tests/install.sh

# The suites find kubectl and helm here (tests/install.sh put them there;
# the harness finds the other binaries in the cache by version itself).
CACHE="${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}"
export ZMQ_PROXY_CACHE="$CACHE"
K8S_VERSION="$(sed -n 's/^K8S_VERSION=//p' tests/install.sh)"
export PATH="$CACHE/k8s-$K8S_VERSION/bin:$CACHE/venv/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# Binaries first, so tests that start them find them built; then the
# container images the real node runs (tests/images.sh: release binaries,
# the repository's Dockerfiles, buildah).
cargo build --workspace --bins
bash tests/images.sh build
if cargo nextest --version >/dev/null 2>&1; then
    # One process per test (each end-to-end test gets its own control
    # plane); tests/nextest.toml kills a test hung for 5 minutes.
    # Doc tests first (nextest does not run them), so that the closing line
    # of the run is nextest's summary of every test.
    cargo test --workspace --doc
    cargo nextest run --workspace --no-fail-fast --config-file tests/nextest.toml
else
    # Without nextest the tests of one binary share a process and its
    # control plane; run them one at a time so outage tests cannot disturb
    # their neighbours.
    cargo test --workspace --no-fail-fast -- --test-threads=1
fi
