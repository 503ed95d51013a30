#!/usr/bin/env bash
# The Go-built delivery tools, from the Go module proxy, cached outside the repo
# (~/.cache/aigc-gateway/go-tools, or $AIGC_GO_TOOLS): the protoc plugins that generate the REST
# bridge and docs/openapi, helm (for the chart tests), and the bridge binary itself.
# Idempotent: each is built once per version / source hash (bridge/gotools.py), then this is instant.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v go >/dev/null; then
  # Debian's Go is older than bridge/go.mod's `go` line; with GOTOOLCHAIN=auto (the default) it
  # fetches the required toolchain from the Go module proxy on first use.
  . "$root/scripts/lib/debian.sh"
  debian_install golang-go
fi
python=python3
[ -x "$root/.venv/bin/python" ] && python="$root/.venv/bin/python"
log=$(mktemp)
trap 'rm -f "$log"' EXIT
if ! nice "$python" "$root/bridge/gotools.py" all >"$log" 2>&1; then
  cat "$log" >&2
  exit 1
fi
