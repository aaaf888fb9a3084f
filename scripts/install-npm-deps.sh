#!/usr/bin/env bash
# Installs the npm packages the dashboard type-check needs (@grafana/schema, typescript).
set -euo pipefail
cd "$(dirname "$0")/../dashboards/typecheck" 2>/dev/null || exit 0
[ -d node_modules/@grafana/schema ] && [ -d node_modules/typescript ] && exit 0
npm ci --no-audit --no-fund --loglevel=error
