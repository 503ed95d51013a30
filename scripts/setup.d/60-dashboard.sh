#!/usr/bin/env bash
# The dashboard (dashboard/: Vue 3 + TypeScript + Vite): `npm ci` from the committed lockfile when it
# changed since the last install, and `npm run build` into dashboard/dist (gitignored) when its sources
# changed since the last build; both are skipped when up to date. Then Debian's chromium for the
# browser tests (Playwright from PyPI drives /usr/bin/chromium; no browser download) and a CJK font,
# so that the Simplified Chinese screens render (and are screenshotted) as a user sees them.
#
#   scripts/setup.d/60-dashboard.sh            # install, build, chromium
#   scripts/setup.d/60-dashboard.sh --no-browser   # install and build only (scripts/dev)
set -euo pipefail
dir="$(cd "$(dirname "$0")/../.." && pwd)/dashboard"
command -v npm >/dev/null || { echo "npm is not installed (apt-get install nodejs npm)" >&2; exit 1; }

stamp="$dir/node_modules/.aigc-lock-sha256"
want=$(sha256sum "$dir/package-lock.json" | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || [ ! -d "$dir/node_modules/vite" ]; then
  (cd "$dir" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
  echo "$want" > "$stamp"
  echo "installed dashboard dependencies"
fi

# The build's inputs: everything under src/ plus the files that steer the build.
built="$dir/dist/.aigc-sources-sha256"
sources=$(cd "$dir" && find src index.html vite.config.ts tsconfig.json package-lock.json -type f -print0 \
  | sort -z | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
if [ ! -f "$built" ] || [ "$(cat "$built")" != "$sources" ] || [ ! -f "$dir/dist/index.html" ]; then
  (cd "$dir" && npm run --silent build >/dev/null)
  echo "$sources" > "$built"
  echo "built the dashboard into dashboard/dist"
fi

[ "${1:-}" = "--no-browser" ] && exit 0
. "$(dirname "$0")/../lib/debian.sh"
missing=$(debian_missing chromium fonts-wqy-zenhei)
[ -z "$missing" ] || debian_install $missing
