#!/usr/bin/env bash
# nginx (Debian) with the set-misc module, for the auth service's end-to-end tests: they run their own
# nginx processes on loopback ports with configs rendered from tools/nginx/ (never the system service).
# Idempotent and quiet; `apt-get update` only when a package is missing.
set -euo pipefail
. "$(dirname "$0")/../lib/debian.sh"
missing=$(debian_missing nginx libnginx-mod-http-set-misc)
[ -z "$missing" ] && exit 0
# Never start the distribution's nginx service (it would take port 80): refuse service starts while
# installing unless the machine already has a policy doing that.
policy=/usr/sbin/policy-rc.d
made_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null && $sudo chmod +x "$policy" && made_policy=1
fi
trap '[ "$made_policy" = 1 ] && $sudo rm -f "$policy"' EXIT
debian_install $missing
