#!/usr/bin/env bash
# The load generators of bench/auth_check.py, installed idempotently (fast when already there):
#   - wrk (Debian package): closed-loop load at saturation;
#   - vegeta (Go module, built into a cache directory outside the repository): a constant arrival rate, for
#     latency below saturation (wrk's latency at saturation is mostly queueing).
# Prints the directory holding the vegeta binary.
#
#   bench/install_load_tools.sh   # -> $AIGC_BENCH_CACHE/vegeta-<version>
set -euo pipefail
version=${VEGETA_VERSION:-v12.13.0}
cache=${AIGC_BENCH_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/aigc-gateway/bench}
dest=$cache/vegeta-$version
if ! command -v wrk >/dev/null; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # apt-get update only when the package lists do not know wrk yet.
  apt-cache show wrk >/dev/null 2>&1 || $sudo apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq wrk >&2
fi
if [ ! -x "$dest/vegeta" ]; then
  command -v go >/dev/null || { echo "go is not installed" >&2; exit 1; }
  mkdir -p "$dest"
  # Low priority: the machine is shared, and the build is only needed by the benchmark.
  GOBIN=$dest GOFLAGS=-mod=mod nice -n 10 go install "github.com/tsenart/vegeta/v12@$version" >&2
fi
echo "$dest"
