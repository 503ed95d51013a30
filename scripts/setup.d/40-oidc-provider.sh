#!/usr/bin/env bash
# The test OIDC provider (tools/oidc-provider: npm `oidc-provider`, the engine inside Logto).
# `npm ci` from the committed lockfile into tools/oidc-provider/node_modules (gitignored), only when the
# lockfile changed since the last install. Needs node >= 20 and npm.
set -euo pipefail
dir="$(cd "$(dirname "$0")/../.." && pwd)/tools/oidc-provider"
command -v npm >/dev/null || { echo "npm is not installed (apt-get install nodejs npm)" >&2; exit 1; }
stamp="$dir/node_modules/.aigc-lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -d "$dir/node_modules/oidc-provider" ]; then
  exit 0
fi
(cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
echo "$want" > "$stamp"
echo "installed tools/oidc-provider dependencies"
