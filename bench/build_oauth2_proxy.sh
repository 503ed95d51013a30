#!/usr/bin/env bash
# Build oauth2-proxy (the baseline of bench/auth_check.py) from its Go module, and the small cookie
# minter in bench/oauth2_proxy_cookie, into a cache directory outside the repository; prints the
# directory. A no-op when already built.
#
#   bench/build_oauth2_proxy.sh   # -> $AIGC_BENCH_CACHE/oauth2-proxy-<version>/{oauth2-proxy,oauth2-proxy-cookie}
set -euo pipefail
version=${OAUTH2_PROXY_VERSION:-v7.15.6}
cache=${AIGC_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aigc-gateway/bench}
dest=$cache/oauth2-proxy-$version
if [ ! -x "$dest/oauth2-proxy" ]; then
  command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }
  mkdir -p "$dest"
  # Low priority: the machine is shared, and the build is only needed by the benchmark.
  GOBIN=$dest GOFLAGS=-mod=mod nice -n 10 go install "github.com/oauth2-proxy/oauth2-proxy/v7@$version" >&2
fi
if [ ! -x "$dest/oauth2-proxy-cookie" ]; then
  (cd "$(dirname "$0")/oauth2_proxy_cookie" && nice -n 10 go build -o "$dest/oauth2-proxy-cookie" .) >&2
fi
echo "$dest"
