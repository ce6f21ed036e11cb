#!/usr/bin/env bash
# `./dev up`: the whole local cluster on loopback — Postgres and Redis (own data dir and ports),
# migrations, exchange simulator, three API nodes, scheduler, worker and a mail sink — then waits
# for Ctrl-C and stops everything it started. `./dev down` cleans up after a killed run.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PF_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PF_CACHE/target}"

STATE="${PRICEFEED_STATE_DIR:-/var/tmp/pricefeed-dev}"
PG_PORT="${PRICEFEED_PG_PORT:-55432}"
REDIS_PORT="${PRICEFEED_REDIS_PORT:-56379}"
NODE_PORTS=(8080 8081 8082)
SCHED_PORT=8090
WORKER_PORT=8091
SIM_SPOT=9100 SIM_FUT=9101 SIM_OPT=9102 SIM_CTL=9103
SMTP_PORT=1025 MAIL_WEB=1080
RUN="$STATE/run"
LOGS="$STATE/logs"

stop_recorded() {
  # Children first (reverse start order), by the PIDs we recorded, SIGTERM then wait.
  [ -f "$RUN/pids" ] || return 0
  local line name pid
  tac "$RUN/pids" | while read -r name pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill -TERM "$pid" 2>/dev/null || true
    fi
  done
  tac "$RUN/pids" | while read -r name pid; do
    for _ in $(seq 150); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then warn "$name ($pid) did not stop in 15 s; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
  done
  rm -f "$RUN/pids"
}

stop_all() {
  say "stopping the local cluster"
  stop_recorded
  stop_redis "$STATE/redis"
  stop_postgres "$STATE/pg"
  rm -f "$RUN/supervisor.pid"
  say "stopped"
}

if [ "${1:-}" = "--down" ]; then
  if [ -f "$RUN/supervisor.pid" ] && kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null; then
    kill -TERM "$(cat "$RUN/supervisor.pid")"; say "asked the running ./dev up to stop"; exit 0
  fi
  stop_all; exit 0
fi

mkdir -p "$RUN" "$LOGS"
if [ -f "$RUN/supervisor.pid" ] && kill -0 "$(cat "$RUN/supervisor.pid")" 2>/dev/null; then
  say "a local cluster is already running (./dev up, pid $(cat "$RUN/supervisor.pid")); logs in $LOGS"
  say "API: http://127.0.0.1:${NODE_PORTS[0]}/api/v1  docs: http://127.0.0.1:${NODE_PORTS[0]}/docs  mail: http://127.0.0.1:$MAIL_WEB"
  exit 0
fi
# Leftovers of a run that was killed without cleanup.
stop_recorded
echo $$ >"$RUN/supervisor.pid"

ensure_system_deps
ensure_maildev
trap 'trap - EXIT; stop_all; exit 130' INT TERM
trap 'stop_all' EXIT

start_postgres "$STATE/pg" "$PG_PORT"
start_redis "$STATE/redis" "$REDIS_PORT"

say "building (cargo build --bins; first build takes a few minutes)"
cargo build --workspace --bins -q || die "cargo build failed"
BIN="$CARGO_TARGET_DIR/debug"

export PRICEFEED_CONFIG="$PF_ROOT/config/default.toml"
export PRICEFEED__DATABASE__URL="postgres://pricefeed@127.0.0.1:$PG_PORT/pricefeed"
export PRICEFEED__REDIS__URL="redis://127.0.0.1:$REDIS_PORT/0"
export PRICEFEED__BROKER__SPOT_REST_URL="http://127.0.0.1:$SIM_SPOT" PRICEFEED__BROKER__SPOT_WS_URL="ws://127.0.0.1:$SIM_SPOT"
export PRICEFEED__BROKER__FUTURES_REST_URL="http://127.0.0.1:$SIM_FUT" PRICEFEED__BROKER__FUTURES_WS_URL="ws://127.0.0.1:$SIM_FUT"
export PRICEFEED__BROKER__OPTIONS_REST_URL="http://127.0.0.1:$SIM_OPT" PRICEFEED__BROKER__OPTIONS_WS_URL="ws://127.0.0.1:$SIM_OPT"

# One token key for every node, kept across restarts so issued tokens stay valid.
[ -s "$STATE/jwt_secret" ] || (umask 077; head -c 48 /dev/urandom | base64 -w0 >"$STATE/jwt_secret")
export PRICEFEED__AUTH__JWT_SECRET="$(cat "$STATE/jwt_secret")"

say "applying migrations"
"$BIN/pricefeed-scheduler" migrate >"$LOGS/migrate.log" 2>&1 || { tail -20 "$LOGS/migrate.log" >&2; die "migrations failed"; }

spawn() { # spawn NAME CMD... : background process, log file (appended), PID recorded
  local name=$1; shift
  "$@" >>"$LOGS/$name.log" 2>&1 &
  echo "$name $!" >>"$RUN/pids"
}

start_child() { # start_child NAME: (re)starts one supervised process by its name
  local name=$1
  case "$name" in
    mailsink)
      spawn mailsink "$PF_MAILDEV" --smtp "$SMTP_PORT" --web "$MAIL_WEB" --ip 127.0.0.1 --mail-directory "$STATE/mail" ;;
    simulator)
      spawn simulator env PRICEFEED__SIM__SPOT_BIND="127.0.0.1:$SIM_SPOT" PRICEFEED__SIM__FUTURES_BIND="127.0.0.1:$SIM_FUT" \
        PRICEFEED__SIM__OPTIONS_BIND="127.0.0.1:$SIM_OPT" PRICEFEED__SIM__CONTROL_BIND="127.0.0.1:$SIM_CTL" "$BIN/pricefeed-sim" ;;
    node*)
      local p=${NODE_PORTS[$((${name#node} - 1))]}
      spawn "$name" env PRICEFEED__NODE__ID="$name" PRICEFEED__NODE__HTTP__BIND="127.0.0.1:$p" "$BIN/pricefeed-node" ;;
    scheduler)
      spawn scheduler env PRICEFEED__SCHEDULER__HTTP__BIND="127.0.0.1:$SCHED_PORT" "$BIN/pricefeed-scheduler" scheduler ;;
    worker)
      # Alert emails go to the maildev sink started above (read them at http://127.0.0.1:$MAIL_WEB).
      spawn worker env PRICEFEED__WORKER__HTTP__BIND="127.0.0.1:$WORKER_PORT" \
        PRICEFEED__EMAIL__HOST=127.0.0.1 PRICEFEED__EMAIL__PORT="$SMTP_PORT" PRICEFEED__EMAIL__TLS=none \
        PRICEFEED__EMAIL__PUBLIC_BASE_URL="http://127.0.0.1:${NODE_PORTS[0]}" \
        "$BIN/pricefeed-scheduler" worker ;;
  esac
}

: >"$LOGS/mailsink.log"; start_child mailsink
: >"$LOGS/simulator.log"; start_child simulator
for i in $(seq "${#NODE_PORTS[@]}"); do : >"$LOGS/node$i.log"; start_child "node$i"; done
: >"$LOGS/scheduler.log"; start_child scheduler
: >"$LOGS/worker.log"; start_child worker

ready() { curl -fsS "http://127.0.0.1:$1/readyz"; }
check_ready() {
  local name=$1 port=$2
  wait_until "$name" 60 ready "$port" || { tail -30 "$LOGS/$name.log" >&2; die "$name did not become ready on port $port (log: $LOGS/$name.log)"; }
}
wait_until "mail sink" 30 curl -fsS "http://127.0.0.1:$MAIL_WEB/email" || { tail -20 "$LOGS/mailsink.log" >&2; die "mail sink did not start"; }
check_ready simulator "$SIM_CTL"
i=0; for p in "${NODE_PORTS[@]}"; do i=$((i + 1)); check_ready "node$i" "$p"; done
check_ready scheduler "$SCHED_PORT"
check_ready worker "$WORKER_PORT"

cat <<MSG

  pricefeed local cluster is up
  ---------------------------------------------------------------------------------
  API nodes       $(for p in "${NODE_PORTS[@]}"; do printf 'http://127.0.0.1:%s  ' "$p"; done)
  API (v1)        http://127.0.0.1:${NODE_PORTS[0]}/api/v1/underlyings
  API docs        http://127.0.0.1:${NODE_PORTS[0]}/docs   (spec: /api/v1/openapi.json)
  Dashboard       http://127.0.0.1:${NODE_PORTS[0]}/
  Health/metrics  http://127.0.0.1:${NODE_PORTS[0]}/readyz  /livez  /metrics
  Scheduler       http://127.0.0.1:$SCHED_PORT/readyz     Worker http://127.0.0.1:$WORKER_PORT/readyz
  Simulator       spot http://127.0.0.1:$SIM_SPOT  futures http://127.0.0.1:$SIM_FUT  options http://127.0.0.1:$SIM_OPT
                  control http://127.0.0.1:$SIM_CTL/control
  Mail sink       http://127.0.0.1:$MAIL_WEB  (SMTP 127.0.0.1:$SMTP_PORT; alert emails land here,
                  JSON at http://127.0.0.1:$MAIL_WEB/email)
  Postgres        postgres://pricefeed@127.0.0.1:$PG_PORT/pricefeed
  Redis           redis://127.0.0.1:$REDIS_PORT
  Logs            $LOGS
  ---------------------------------------------------------------------------------
  Ctrl-C stops everything this command started; a process that dies is restarted after
  ${PRICEFEED_DEV_RESTART_DELAY:-10} s (kill -9 a node to watch its slice move and come back).

MSG

# Supervise like a container runtime with `restart: unless-stopped`: a child that dies (a crash,
# or `kill -9` to watch a failover) is reported and started again after RESTART_DELAY seconds;
# meanwhile the rest of the cluster carries on (its slices move to the surviving nodes).
RESTART_DELAY=${PRICEFEED_DEV_RESTART_DELAY:-10}
declare -A DIED_AT=()
while true; do
  while read -r name pid; do
    [ -n "$name" ] || continue
    if ! kill -0 "$pid" 2>/dev/null; then
      if [ -z "${DIED_AT[$name]:-}" ]; then
        DIED_AT[$name]=$SECONDS
        warn "$name (pid $pid) exited; restarting it in ${RESTART_DELAY} s. Last log lines:"
        tail -5 "$LOGS/$name.log" >&2
      elif [ $((SECONDS - DIED_AT[$name])) -ge "$RESTART_DELAY" ]; then
        unset "DIED_AT[$name]"
        sed -i "/^$name /d" "$RUN/pids"
        echo "--- restarted by ./dev up at $(date -u +%FT%TZ) ---" >>"$LOGS/$name.log"
        start_child "$name"
        say "$name restarted (pid $(awk -v n="$name" '$1 == n {print $2}' "$RUN/pids"))"
      fi
    fi
  done < <(cat "$RUN/pids")
  sleep 1 &
  wait $! || true
done
