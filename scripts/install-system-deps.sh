#!/usr/bin/env bash
# Installs the real servers the tests start on 127.0.0.1 (Debian packages), when missing.
set -euo pipefail
declare -A pkg_of=(
  [prometheus]=prometheus [promtool]=prometheus
  [victoria-metrics]=victoria-metrics [influxd]=influxdb [openssl]=openssl [systemd-analyze]=systemd
  [chromium]=chromium [chromedriver]=chromium-driver
)
missing=()
for bin in "${!pkg_of[@]}"; do
  command -v "$bin" >/dev/null 2>&1 || missing+=("${pkg_of[$bin]}")
done
[ ${#missing[@]} -eq 0 ] && exit 0
mapfile -t missing < <(printf '%s\n' "${missing[@]}" | sort -u)
sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing Debian packages: ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
