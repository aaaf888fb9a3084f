#!/usr/bin/env bash
# Builds the exporter's image with Debian's podman on a Debian bookworm + python3 base that it
# makes itself with mmdebstrap, so no container registry is needed (CI has none).
#   scripts/build-image.sh [TAG]          TAG defaults to localhost/lektrico-exporter:dev
# The base tarball is kept in LEKTRICO_IMAGE_CACHE (default ~/.cache/lektrico-exporter) for fast
# local reruns; under CI=true nothing is reused (no base cache, no layer cache): a cold build.
# pip's index (PIP_INDEX_URL or pip's global.index-url) goes in as a build argument of the
# builder stage and its CA bundle (PIP_CERT or pip's global.cert) as the build secret pip-ca:
# neither reaches the final image. Prints "build-image: ..." lines with the times and the size.
set -euo pipefail
cd "$(dirname "$0")/.."
tag=${1:-localhost/lektrico-exporter:dev}
base=localhost/lektrico-base:bookworm
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/scripts/containers.conf}
ulimits=(--ulimit nofile=4096:4096 --ulimit nproc=4096:4096)

bash scripts/install-system-deps.sh

start=$(date +%s)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
if [ -n "${CI:-}" ]; then
  cache=""
else
  cache=${LEKTRICO_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/lektrico-exporter}
fi
# A change to this package list or these options makes a new tarball (its name carries a hash).
mm_args=(--variant=minbase --include=python3,python3-venv,passwd
  --dpkgopt=path-exclude=/usr/share/doc/* --dpkgopt=path-exclude=/usr/share/man/*
  --dpkgopt=path-exclude=/usr/share/locale/* --dpkgopt=path-include=/usr/share/doc/*/copyright
  bookworm)
key=$(printf '%s\n' "${mm_args[@]}" | sha256sum | cut -c1-12)
tarball="$work/base.tar"
[ -n "$cache" ] && tarball="$cache/debian-bookworm-python3-$key.tar"
if [ -n "$cache" ] && [ -s "$tarball" ] && [ -n "$(find "$tarball" -mtime -7)" ]; then
  how="cached $tarball"
else
  [ -n "$cache" ] && mkdir -p "$cache"
  mmdebstrap --quiet --format=tar "${mm_args[@]}" "$tarball.part" http://deb.debian.org/debian </dev/null
  mv "$tarball.part" "$tarball"
  how="mmdebstrap"
fi
podman import --quiet --change 'CMD ["/bin/sh"]' "$tarball" "$base" >/dev/null
base_done=$(date +%s)
echo "build-image: base $base in $((base_done - start)) s ($how)"

build=(--format docker --runtime runc "${ulimits[@]}" --build-arg "BASE_IMAGE=$base" -t "$tag")
[ -n "${CI:-}" ] && build+=(--no-cache)
index=${PIP_INDEX_URL:-$(python3 -m pip config get global.index-url 2>/dev/null || true)}
[ -n "$index" ] && build+=(--build-arg "PIP_INDEX_URL=$index")
ca=${PIP_CERT:-$(python3 -m pip config get global.cert 2>/dev/null || true)}
[ -n "$ca" ] && [ -s "$ca" ] && build+=(--secret "id=pip-ca,src=$ca")
podman build --quiet "${build[@]}" . >/dev/null
end=$(date +%s)
size=$(podman image inspect --format '{{.Size}}' "$tag")
layers=$(podman image inspect --format '{{len .RootFS.Layers}}' "$tag")
echo "build-image: image $tag in $((end - base_done)) s"
echo "build-image: total $((end - start)) s; size $((size / 1000000)) MB in $layers layers"
