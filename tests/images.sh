#!/usr/bin/env bash
# Container images without a registry, built with Debian's buildah (no
# daemon):
#
#   bash tests/images.sh base    Debian bookworm minbase + libzmq5 +
#                                ca-certificates (debootstrap), imported as
#                                localhost/zmq-proxy-base:bookworm, the FROM
#                                of proxy/Dockerfile and operator/Dockerfile
#   bash tests/images.sh pause   the pod sandbox image, Kubernetes'
#                                build/pause/linux/pause.c compiled statically
#   bash tests/images.sh build   cargo build --profile image, then the
#                                repository's Dockerfiles, saved as
#                                docker-archives in <target>/images/
#
# `base` and `pause` are cached by version under
# ${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy} (tests/install.sh runs them);
# `build` is per checkout (tests/run.sh runs it after the workspace build).
# The real node (tests/src/real_node.rs) imports the archives into its
# containerd. buildah keeps its storage in the cache too, not in
# /var/lib/containers.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${ZMQ_PROXY_CACHE:-$HOME/.cache/zmq-proxy}"
K8S_VERSION="$(sed -n 's/^K8S_VERSION=//p' tests/install.sh)"
# Keep in step with tests/src/real_node.rs.
BASE_IMAGE=localhost/zmq-proxy-base:bookworm
PAUSE_IMAGE=localhost/zmq-proxy/pause:3.10
# What the base carries beyond minbase; part of its cache key, so a change
# here builds a new base.
BASE_PACKAGES=libzmq5,ca-certificates
BASE_KEY="bookworm-$(echo "$BASE_PACKAGES" | sha256sum | cut -c1-8)"
TARGET="${CARGO_TARGET_DIR:-$PWD/target}"
APP_VERSION="$(sed -n 's/^appVersion: *"\(.*\)"/\1/p' charts/zmq-proxy-operator/Chart.yaml)"

buildah_() {
    buildah --root "$CACHE/buildah/root" --runroot "$CACHE/buildah/run" \
        --storage-driver overlay "$@"
}

has_image() {
    buildah_ inspect --type image "$1" >/dev/null 2>&1
}

# The base image: debootstrap once (a minute or two), then trimmed the way
# debian:bookworm-slim is (no apt lists, caches, man pages, locales).
base() {
    local dir="$CACHE/base-$BASE_KEY" tar
    tar="$dir/rootfs.tar"
    if [ ! -s "$tar" ]; then
        echo "images.sh: debootstrap bookworm (minbase + $BASE_PACKAGES), once"
        local t0=$SECONDS work
        work="$(mktemp -d "${TMPDIR:-/tmp}/zmq-proxy-base.XXXXXX")"
        # The trap outlives this function, so it names the directory itself.
        trap "rm -rf '$work'" EXIT
        debootstrap --variant=minbase --include="$BASE_PACKAGES" bookworm \
            "$work/rootfs" http://deb.debian.org/debian >"$work/debootstrap.log" 2>&1 || {
            tail -n 30 "$work/debootstrap.log" >&2
            exit 1
        }
        local r="$work/rootfs"
        rm -rf "$r"/var/cache/apt/* "$r"/var/lib/apt/lists/* "$r"/usr/share/man/* \
            "$r"/usr/share/info/* "$r"/var/log/*
        find "$r/usr/share/locale" -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} +
        find "$r/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
        mkdir -p "$dir"
        tar --numeric-owner -C "$r" -cf "$tar.tmp" .
        mv "$tar.tmp" "$tar"
        rm -rf "$work"
        echo "images.sh: base root filesystem made in $((SECONDS - t0)) s"
    fi
    if ! has_image "$BASE_IMAGE"; then
        local c
        c="$(buildah_ from scratch)"
        buildah_ add "$c" "$tar" / >/dev/null
        buildah_ config --cmd /bin/sh "$c"
        buildah_ commit -q --rm "$c" "$BASE_IMAGE" >/dev/null
    fi
}

# The sandbox ("pause") image. No registry is reachable, so registry.k8s.io's
# image cannot be pulled; its source ships in the k8s.io/kubernetes module
# the control plane is built from.
pause() {
    local dir="$CACHE/pause-$K8S_VERSION"
    [ -s "$dir/pause.tar" ] && return 0
    local src
    src="$(cd /tmp && GOFLAGS=-mod=mod go mod download -json "k8s.io/kubernetes@v$K8S_VERSION" \
        | sed -n 's/.*"Dir": "\(.*\)",/\1/p')"
    mkdir -p "$dir"
    gcc -Os -static -DVERSION="v$K8S_VERSION" -o "$dir/pause" "$src/build/pause/linux/pause.c"
    strip "$dir/pause"
    local c
    c="$(buildah_ from scratch)"
    buildah_ copy "$c" "$dir/pause" /pause >/dev/null
    buildah_ config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah_ commit -q --rm "$c" "$PAUSE_IMAGE" >/dev/null
    rm -f "$dir/pause.tar.tmp"
    buildah_ push -q "$PAUSE_IMAGE" "docker-archive:$dir/pause.tar.tmp:$PAUSE_IMAGE"
    mv "$dir/pause.tar.tmp" "$dir/pause.tar"
}

# One image from its Dockerfile. The context is a staging directory holding
# only target/image/<binaries> (the paths the Dockerfile copies), so it is
# the same whatever CARGO_TARGET_DIR is, and tiny.
image() {
    local dockerfile="$1" name="$2"; shift 2
    local stage="$TARGET/images/context-$name"
    rm -rf "$stage"
    mkdir -p "$stage/target/image/examples"
    local b
    for b in "$@"; do cp "$TARGET/image/$b" "$stage/target/image/$b"; done
    buildah_ bud -q --pull-never --layers=false -f "$dockerfile" \
        -t "ghcr.io/zmq-proxy/$name:$APP_VERSION" "$stage" >/dev/null
    rm -f "$TARGET/images/$name.tar"
    buildah_ push -q "ghcr.io/zmq-proxy/$name:$APP_VERSION" \
        "docker-archive:$TARGET/images/$name.tar:ghcr.io/zmq-proxy/$name:$APP_VERSION"
    rm -rf "$stage"
    echo "images.sh: ghcr.io/zmq-proxy/$name:$APP_VERSION, archive $(du -h "$TARGET/images/$name.tar" | cut -f1)"
}

build() {
    base
    local t0=$SECONDS
    cargo build -q --profile image --locked -p zmq-proxy --bin zmq-proxy --bin zmq-proxy-rpc \
        -p zmq-proxy-operator --bin zmq-proxy-operator
    echo "images.sh: binaries built in $((SECONDS - t0)) s"
    mkdir -p "$TARGET/images"
    image proxy/Dockerfile zmq-proxy zmq-proxy zmq-proxy-rpc
    image operator/Dockerfile zmq-proxy-operator zmq-proxy-operator
}

if [ "$#" -eq 0 ]; then
    sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'
    exit 2
fi
for what in "$@"; do
    case "$what" in
    base) base ;;
    pause) pause ;;
    build) build ;;
    *) echo "images.sh: unknown step $what" >&2; exit 2 ;;
    esac
done
