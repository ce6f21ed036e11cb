#!/usr/bin/env bash
# Shared helpers of ./dev: dependency checks and installs, local Postgres/Redis/mail sink on
# loopback, process bookkeeping by PID. Sourced, never run directly.

PF_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PF_CACHE="${PRICEFEED_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pricefeed}"

say()  { printf '\033[1;34m==>\033[0m %s\n' "$*"; }
warn() { printf '\033[1;33mwarning:\033[0m %s\n' "$*" >&2; }
die()  { printf '\033[1;31merror:\033[0m %s\n' "$*" >&2; exit 1; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else die "need root to run: $* (install sudo or run as root)"; fi
}

apt_updated=""
apt_install() {
  command -v apt-get >/dev/null 2>&1 || die "missing $* and apt-get is not available; install it by hand"
  if [ -z "$apt_updated" ]; then
    say "apt-get update"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null || die "apt-get update failed"
    apt_updated=1
  fi
  say "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
    || die "apt-get install $* failed"
}

pg_bindir() {
  local d
  for d in /usr/lib/postgresql/*/bin; do
    [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  done
  return 1
}

# Installs what the cluster and tests need when missing: Postgres, Redis, Node.js (mail sink),
# Python venv support, curl, jq, and for the tests (PF_NEED_BROWSER=1) Chromium for the page test and
# Prometheus for the dashboard-query test.
ensure_system_deps() {
  local pkgs=()
  pg_bindir >/dev/null || pkgs+=(postgresql)
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
  # docs/api-guide.md's examples pipe through jq, and tests/docs_live.rs runs them.
  command -v jq >/dev/null 2>&1 || pkgs+=(jq)
  command -v node >/dev/null 2>&1 || pkgs+=(nodejs npm)
  command -v npm >/dev/null 2>&1 || pkgs+=(npm)
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || pkgs+=(python3-venv)
  if [ "${PF_NEED_BROWSER:-}" = 1 ] && [ ! -x "${PRICEFEED_CHROMIUM:-/usr/bin/chromium}" ]; then pkgs+=(chromium); fi
  if [ "${PF_NEED_BROWSER:-}" = 1 ] && [ ! -x "${PRICEFEED_PROMETHEUS:-/usr/bin/prometheus}" ]; then pkgs+=(prometheus); fi
  if [ ${#pkgs[@]} -gt 0 ]; then apt_install "${pkgs[@]}"; fi
  pg_bindir >/dev/null || die "Postgres server binaries not found after install (looked in /usr/lib/postgresql/*/bin)"
  command -v redis-server >/dev/null 2>&1 || die "redis-server not found after install"
  command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
}

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# wait_until DESCRIPTION SECONDS CMD...: polls CMD until it succeeds or the deadline passes.
wait_until() {
  local what=$1 secs=$2; shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    [ $SECONDS -ge $deadline ] && return 1
    sleep 0.2
  done
  echo "   $what ready" >&2
}

# start_postgres STATE_DIR PORT: a private cluster on 127.0.0.1:PORT with trust auth for the
# `pricefeed` role and database. Reuses a cluster of ours already running there.
start_postgres() {
  local dir=$1 port=$2 bin owner
  bin=$(pg_bindir)
  mkdir -p "$dir"
  if [ -f "$dir/pgdata/postmaster.pid" ] && "$bin/pg_isready" -q -h 127.0.0.1 -p "$port"; then
    say "Postgres already running on 127.0.0.1:$port (ours, reusing)"
    return 0
  fi
  if port_open "$port"; then
    die "port $port is taken by another program; set PRICEFEED_PG_PORT to a free port"
  fi
  # initdb refuses to run as root: the cluster belongs to the postgres user then.
  if [ "$(id -u)" = 0 ]; then owner=postgres; else owner=$(id -un); fi
  run_as() { if [ "$owner" = "$(id -un)" ]; then "$@"; else runuser -u "$owner" -- "$@"; fi; }
  chown "$owner" "$dir"
  chmod 755 "$dir"
  if [ ! -f "$dir/pgdata/PG_VERSION" ]; then
    say "initialising Postgres data directory $dir/pgdata"
    run_as "$bin/initdb" -D "$dir/pgdata" -A trust -U postgres -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 \
      || { cat "$dir/initdb.log" >&2; die "initdb failed (log above)"; }
  fi
  mkdir -p "$dir/sock"; chown "$owner" "$dir/sock"
  run_as "$bin/pg_ctl" -D "$dir/pgdata" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir/sock -c listen_addresses=127.0.0.1 -c fsync=${PRICEFEED_PG_FSYNC:-on} -c max_connections=300" start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "Postgres failed to start (log: $dir/postgres.log)"; }
  psql_admin "$port" -tc "SELECT 1 FROM pg_roles WHERE rolname='pricefeed'" | grep -q 1 \
    || psql_admin "$port" -c "CREATE ROLE pricefeed LOGIN SUPERUSER" >/dev/null
  psql_admin "$port" -tc "SELECT 1 FROM pg_database WHERE datname='pricefeed'" | grep -q 1 \
    || psql_admin "$port" -c "CREATE DATABASE pricefeed OWNER pricefeed" >/dev/null
  say "Postgres on 127.0.0.1:$port"
}

psql_admin() { local port=$1; shift; psql -h 127.0.0.1 -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -q "$@"; }

stop_postgres() {
  local dir=$1 bin owner
  bin=$(pg_bindir) || return 0
  [ -f "$dir/pgdata/postmaster.pid" ] || return 0
  if [ "$(id -u)" = 0 ]; then owner=postgres; else owner=$(id -un); fi
  if [ "$owner" = "$(id -un)" ]; then "$bin/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1
  else runuser -u "$owner" -- "$bin/pg_ctl" -D "$dir/pgdata" -m fast -w stop >/dev/null 2>&1; fi
}

# start_redis STATE_DIR PORT: no persistence; Redis holds only rebuildable state.
start_redis() {
  local dir=$1 port=$2
  mkdir -p "$dir"
  if [ -f "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; then
    say "Redis already running on 127.0.0.1:$port (ours, reusing)"
    return 0
  fi
  port_open "$port" && die "port $port is taken by another program; set PRICEFEED_REDIS_PORT to a free port"
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" --dir "$dir" >/dev/null \
    || die "redis-server failed to start (log: $dir/redis.log)"
  wait_until "Redis" 20 redis-cli -p "$port" ping || die "Redis did not answer on port $port (log: $dir/redis.log)"
  say "Redis on 127.0.0.1:$port"
}

stop_redis() {
  local dir=$1
  [ -f "$dir/redis.pid" ] || return 0
  local pid; pid=$(cat "$dir/redis.pid")
  kill "$pid" 2>/dev/null || true
  for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  rm -f "$dir/redis.pid"
}

# Python venv with the test tools (schema validation, third-party Binance clients).
ensure_venv() {
  local venv="$PF_CACHE/venv" req="$PF_ROOT/tests/python/requirements.txt" stamp
  stamp=$(cat "$req" 2>/dev/null | sha256sum | cut -c1-16)
  if [ ! -x "$venv/bin/python" ] || [ "$(cat "$venv/.stamp" 2>/dev/null)" != "$stamp" ]; then
    say "creating Python test venv in $venv"
    rm -rf "$venv"
    python3 -m venv "$venv" || die "python3 -m venv failed (install python3-venv)"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$req" || die "pip install of tests/python/requirements.txt failed"
    echo "$stamp" >"$venv/.stamp"
  fi
  PF_VENV=$venv
}

# maildev@2.2.1 (newer releases do not resolve from the npm registry mirror here).
ensure_maildev() {
  local dir="$PF_CACHE/maildev"
  if [ ! -x "$dir/node_modules/.bin/maildev" ]; then
    say "installing maildev 2.2.1 (local mail sink) into $dir"
    mkdir -p "$dir"
    (cd "$dir" && npm install --silent --no-audit --no-fund maildev@2.2.1 >/dev/null 2>"$dir/npm.log") \
      || { tail -20 "$dir/npm.log" >&2; die "npm install maildev@2.2.1 failed"; }
  fi
  PF_MAILDEV="$dir/node_modules/.bin/maildev"
}
