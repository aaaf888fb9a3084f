#!/usr/bin/env bash
# Installs, when missing, the Debian packages the tests use: the real servers they start on
# 127.0.0.1, and the container tools that build and run the image.
set -euo pipefail
declare -A pkg_of=(
  [prometheus]=prometheus [promtool]=prometheus
  [victoria-metrics]=victoria-metrics [influxd]=influxdb [openssl]=openssl [systemd-analyze]=systemd
  [chromium]=chromium [chromedriver]=chromium-driver
  # The container image build and smoke test (scripts/build-image.sh, tests/test_image.py).
  [podman]=podman [buildah]=buildah [runc]=runc [mmdebstrap]=mmdebstrap
  [podman-compose]=podman-compose [newuidmap]=uidmap [slirp4netns]=slirp4netns
  [fuse-overlayfs]=fuse-overlayfs
)
missing=()
for bin in "${!pkg_of[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${pkg_of[$bin]}")
done
# podman's bridge network for published ports (not a command on PATH).
[ -e /usr/lib/cni/bridge ] || missing+=(containernetworking-plugins)
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
