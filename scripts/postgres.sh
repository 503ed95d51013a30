#!/usr/bin/env bash
# A throwaway PostgreSQL for tests and development: initdb + pg_ctl in a
# directory of its own, on a free loopback port, trust auth on loopback only.
#
#   scripts/postgres.sh start [DIR]   # installs the Debian package if missing; prints DATABASE_URL=...
#   scripts/postgres.sh stop [DIR]
#   scripts/postgres.sh url [DIR]
#   scripts/postgres.sh crash [DIR]   # pg_ctl stop -m immediate: a crash, the data directory kept
#   scripts/postgres.sh restart [DIR] # start the kept data directory again on the same port (crash recovery)
set -euo pipefail
cmd=${1:-}
dir=${2:-${AIGC_PG_DIR:-/tmp/aigc-gateway-pg}}

find_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [ -x "$d/pg_ctl" ] && { echo "$d"; return; }; done
  return 1
}

ensure_installed() {
  if ! find_bin >/dev/null; then
    echo "installing PostgreSQL from Debian packages..." >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq postgresql >&2
  fi
}

# initdb and postgres refuse to run as root: use the package's postgres user then.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

run_server() {
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-c listen_addresses=127.0.0.1 -p $(cat "$dir/port") -k $dir -c max_connections=300 -c fsync=off -c synchronous_commit=off" \
    start >/dev/null || { tail -20 "$dir/postgres.log" >&2; exit 1; }
}

url() { echo "postgresql+asyncpg://postgres@127.0.0.1:$(cat "$dir/port")/postgres"; }

case "$cmd" in
  start)
    ensure_installed
    bin=$(find_bin)
    if [ -f "$dir/port" ] && as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      echo "DATABASE_URL=$(url)"; exit 0
    fi
    rm -rf "$dir"; mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres: "$dir"
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    as_pg "$bin/initdb" -D "$dir/data" -U postgres --auth=trust -E UTF8 --no-locale >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; exit 1; }
    as_pg sh -c "echo $port > '$dir/port'"
    run_server
    echo "DATABASE_URL=$(url)"
    ;;
  crash)
    bin=$(find_bin)
    as_pg "$bin/pg_ctl" -D "$dir/data" -m immediate -w stop >/dev/null
    ;;
  restart)
    bin=$(find_bin)
    run_server
    ;;
  stop)
    bin=$(find_bin) || exit 0
    [ -d "$dir/data" ] && as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
    ;;
  url)
    url
    ;;
  *)
    echo "usage: $0 start|stop|url|crash|restart [DIR]" >&2; exit 2 ;;
esac
