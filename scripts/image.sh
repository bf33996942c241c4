#!/usr/bin/env bash
# Builds Porchlight's container image on this machine: FROM scratch around
# a statically linked (musl) release binary built here, since the engine
# has no base images and no registry. The top-level Dockerfile builds the
# same image where base images can be pulled; both end in
# docker/runtime.Dockerfile's stage. Prints the image's size.
#   usage: scripts/image.sh [TAG]        (default: porchlight:dev)
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-porchlight:dev}
target=x86_64-unknown-linux-musl

command -v docker >/dev/null || { echo "image.sh: docker is needed" >&2; exit 1; }
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
if ! command -v musl-gcc >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq musl-tools >/dev/null
fi

# A release build without debug info, stripped; its own target directory,
# so it neither waits on nor invalidates the workspace's.
PORCHLIGHT_GIT_COMMIT=$(git rev-parse --short=12 HEAD 2>/dev/null || echo unknown) \
CARGO_PROFILE_RELEASE_DEBUG=0 CARGO_PROFILE_RELEASE_STRIP=symbols \
CARGO_TARGET_DIR=target/image \
  cargo build --release --locked --target "$target" -p porchlight-broker --bin porchlight
bin=target/image/$target/release/porchlight
# Statically linked, or it cannot run FROM scratch.
if ldd "$bin" 2>&1 | grep -q '=>'; then
  echo "image.sh: $bin is dynamically linked" >&2
  exit 1
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
mkdir -p "$ctx/etc" "$ctx/data"
cp "$bin" "$ctx/porchlight"
echo 'porchlight:x:65532:65532:porchlight:/data:/sbin/nologin' > "$ctx/etc/passwd"
echo 'porchlight:x:65532:' > "$ctx/etc/group"
cp docker/runtime.Dockerfile "$ctx/Dockerfile"
docker build -q -t "$tag" "$ctx" >/dev/null
size=$(docker image inspect "$tag" --format '{{.Size}}')
echo "$tag: $((size / 1024 / 1024)) MiB ($size bytes)"
