#!/usr/bin/env bash
# `./dev compose-check`: runs docker/compose.yaml for real and checks it (scripts/compose_check.py),
# on a machine that reaches no container registry, then tears everything down.
#
#   1. installs what is missing (docker.io, docker-compose, debootstrap) and starts dockerd when
#      none runs (stopped again at the end, by its PID);
#   2. builds local/debian:bookworm (debootstrap minbase + docker import; the root file system
#      tarball is cached as $PF_CACHE/debian-bookworm-minbase.tar and reused) and the stand-in
#      images of docker/standins/;
#   3. builds the release binaries on the host and the project image from them
#      (docker/Dockerfile with BINARIES=prebuilt);
#   4. `up -d` every service except grafana (no Debian package) under a unique project name, with
#      the image variables pointing at the stand-ins and the ports on free loopback ports;
#   5. the checks, then always, pass or fail (trap): `down -v` (containers, networks, volumes),
#      removal of every image it built and of the build cache, dockerd stopped if it started it.
#
# Variables: PRICEFEED_DEBIAN_MIRROR (default: the one apt uses), PRICEFEED_KEEP_UP=1 (leave the
# stack running, for a look; `docker-compose -p NAME down -v` later), PRICEFEED_KEEP_IMAGES=1
# (keep the base and stand-in images for the next run, e.g. while changing the checks),
# CARGO_TARGET_DIR.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PF_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PF_CACHE/target}"
t0=$SECONDS
step() { say "[$((SECONDS - t0))s] $*"; }
timing=()
mark() { timing+=("$1: $(( SECONDS - $2 ))s"); }

PROJECT="pfcheck$(date +%s)$$"
BASE_IMAGE=local/debian:bookworm
APP_IMAGE="local/pricefeed:$PROJECT"
STATE=$(mktemp -d /var/tmp/pricefeed-compose-check.XXXXXX)
PREBUILT_DIR=target/compose-bin
DOCKERD_PID=""
NEW_BRIDGE=""
DOCKER_UP=""
UP_DONE=""

# --- 1. tools --------------------------------------------------------------------------------
step "checking tools"
[ -r /etc/os-release ] && . /etc/os-release
[ "${ID:-}" = debian ] && [ "${VERSION_ID:-}" = 12 ] \
  || die "needs Debian 12 (bookworm): the host's release binaries run in a bookworm image (this is ${PRETTY_NAME:-unknown})"
pkgs=()
[ -x /usr/bin/dockerd ] || command -v dockerd >/dev/null 2>&1 || pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
command -v curl >/dev/null 2>&1 || pkgs+=(curl)
# The docker.io client (20.10) runs BuildKit builds without the buildx plugin, which a newer
# client elsewhere on PATH may want: use it, and install docker.io for it.
[ -x /usr/bin/docker ] || pkgs+=(docker.io)
# Compose v2 (`docker compose`) reads the file as is; v1 (Debian's docker-compose 1.29) is used
# when it is the only one, see dc() below.
if ! /usr/bin/docker compose version >/dev/null 2>&1 && ! command -v docker-compose >/dev/null 2>&1; then pkgs+=(docker-compose); fi
if [ ${#pkgs[@]} -gt 0 ]; then apt_install $(printf '%s\n' "${pkgs[@]}" | sort -u); fi
DOCKER=/usr/bin/docker
[ -x "$DOCKER" ] || die "$DOCKER missing after installing docker.io"
command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
ensure_maildev   # the mail sink stand-in is maildev 2.2.1 from npm, installed on the host
if "$DOCKER" compose version >/dev/null 2>&1; then COMPOSE_V2=1; else COMPOSE_V2=""; fi

# Compose v1 predates the top-level `name:` key (it rejects the file with it), so it gets the
# same file without that one line, from the docker/ directory so relative paths resolve the same;
# the project name comes from -p either way.
dc() {
  if [ -n "$COMPOSE_V2" ]; then
    "$DOCKER" compose -f docker/compose.yaml -p "$PROJECT" "$@"
  else
    sed '/^name:/d' docker/compose.yaml | (cd docker && docker-compose -f - -p "$PROJECT" "$@")
  fi
}

# The terminal's stdout/stderr, for the cleanup: a signal can run it inside a command whose
# output goes to a log file.
exec 3>&1 4>&2
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec 1>&3 2>&4
  set +e
  if [ -n "$UP_DONE" ] && [ "${PRICEFEED_KEEP_UP:-}" = 1 ] && [ $rc -eq 0 ]; then
    say "leaving project $PROJECT up (PRICEFEED_KEEP_UP=1): remove it with"
    say "  $(if [ -n "$COMPOSE_V2" ]; then echo "docker compose -f docker/compose.yaml"; else echo "sed '/^name:/d' docker/compose.yaml | (cd docker && docker-compose -f -"; fi) -p $PROJECT down -v$([ -z "$COMPOSE_V2" ] && echo ")"); docker rmi $APP_IMAGE"
  else
    if [ -n "$UP_DONE" ]; then
      if [ $rc -ne 0 ]; then
        say "logs of the failed run (last 40 lines per service) in $STATE/compose.log"
        dc logs --no-color --tail=40 >"$STATE/compose.log" 2>&1
        tail -n 150 "$STATE/compose.log" >&2
        cp "$STATE/compose.log" "/var/tmp/pricefeed-compose-check-$PROJECT.log" 2>/dev/null \
          && say "kept as /var/tmp/pricefeed-compose-check-$PROJECT.log"
      fi
      step "tearing down: down -v"
      timeout 180 bash -c "$(declare -f dc); $(declare -p COMPOSE_V2 PROJECT DOCKER); dc down -v --remove-orphans -t 10" >"$STATE/down.log" 2>&1 \
        || { warn "compose down failed: $(tail -3 "$STATE/down.log")"; }
      # Whatever down missed (a timeout): containers, volumes and networks labelled with the project.
      ids=$("$DOCKER" ps -aq --filter "label=com.docker.compose.project=$PROJECT")
      [ -n "$ids" ] && "$DOCKER" rm -f $ids >/dev/null
      vols=$("$DOCKER" volume ls -q --filter "label=com.docker.compose.project=$PROJECT")
      [ -n "$vols" ] && "$DOCKER" volume rm $vols >/dev/null
      nets=$("$DOCKER" network ls -q --filter "label=com.docker.compose.project=$PROJECT")
      [ -n "$nets" ] && "$DOCKER" network rm $nets >/dev/null
    fi
    if [ -n "$DOCKER_UP" ]; then
      # The project image always; the base and stand-ins too unless asked to keep them.
      local gone=("$APP_IMAGE")
      if [ "${PRICEFEED_KEEP_IMAGES:-}" = 1 ]; then
        say "keeping $BASE_IMAGE and the stand-in images (PRICEFEED_KEEP_IMAGES=1)"
      else
        gone+=($("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | grep -E '^local/pricefeed-standin-') "$BASE_IMAGE")
      fi
      for img in "${gone[@]}"; do
        "$DOCKER" image inspect "$img" >/dev/null 2>&1 && { "$DOCKER" rmi "$img" >/dev/null || warn "could not remove image $img"; }
      done
      "$DOCKER" builder prune -af >/dev/null 2>&1
      say "images left: $("$DOCKER" images --format '{{.Repository}}:{{.Tag}}' | paste -sd' ' -)"
      say "Docker disk use after cleanup: $("$DOCKER" system df --format '{{.Type}} {{.Size}}' | paste -sd, - | sed 's/,/, /g')"
    fi
    rm -rf "$PF_ROOT/$PREBUILT_DIR"
  fi
  if [ -n "$DOCKERD_PID" ]; then
    if [ -n "$UP_DONE" ] && [ "${PRICEFEED_KEEP_UP:-}" = 1 ] && [ $rc -eq 0 ]; then
      say "dockerd (PID $DOCKERD_PID) left running for the kept project"
    else
      step "stopping dockerd (PID $DOCKERD_PID)"
      kill "$DOCKERD_PID" 2>/dev/null
      for _ in $(seq 150); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.2; done
      kill -0 "$DOCKERD_PID" 2>/dev/null && { warn "dockerd did not stop in 30 s; sending SIGKILL"; kill -9 "$DOCKERD_PID"; }
      [ -n "$NEW_BRIDGE" ] && ip link show docker0 >/dev/null 2>&1 && as_root ip link delete docker0
    fi
  fi
  # An interrupted debootstrap can leave /proc or /sys mounted inside the root file system.
  awk -v d="$STATE/" 'index($2, d) == 1 { print $2 }' /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
  rm -rf "$STATE"
  if [ $rc -eq 0 ]; then
    say "timings: ${timing[*]}"
    say "compose check passed in $((SECONDS - t0))s"
  else
    printf '\033[1;31mcompose check FAILED\033[0m (exit %s) after %ss\n' "$rc" "$((SECONDS - t0))" >&2
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- dockerd ---------------------------------------------------------------------------------
if "$DOCKER" info >/dev/null 2>&1; then
  say "using the Docker engine already running"
else
  step "starting dockerd (log: $STATE/dockerd.log)"
  # Started directly (not through a function, whose `&` would fork a subshell) so that $! is
  # dockerd itself (or sudo, which passes the signal on).
  # The docker0 bridge it creates is removed again at the end if it was not there before.
  ip link show docker0 >/dev/null 2>&1 || NEW_BRIDGE=1
  if [ "$(id -u)" = 0 ]; then dockerd >"$STATE/dockerd.log" 2>&1 3>&- 4>&- &
  else command -v sudo >/dev/null 2>&1 || die "need root to start dockerd"; sudo dockerd >"$STATE/dockerd.log" 2>&1 3>&- 4>&- &
  fi
  DOCKERD_PID=$!
  wait_until "dockerd" 60 "$DOCKER" info || { tail -20 "$STATE/dockerd.log" >&2; die "dockerd did not come up within 60 s"; }
fi
DOCKER_UP=1
"$DOCKER" version --format 'engine {{.Server.Version}}, client {{.Client.Version}}'
if [ -n "$COMPOSE_V2" ]; then "$DOCKER" compose version; else docker-compose version --short | sed 's/^/docker-compose (v1) /'; fi

# --- 2. base and stand-in images -------------------------------------------------------------
debian_mirror() {
  [ -n "${PRICEFEED_DEBIAN_MIRROR:-}" ] && { echo "$PRICEFEED_DEBIAN_MIRROR"; return; }
  local m
  m=$(grep -hsoE '^(deb|URIs:)[[:space:]]+(\[[^]]*\][[:space:]]+)?https?://[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/*.list /etc/apt/sources.list.d/*.sources \
      | grep -oE 'https?://[^[:space:]]+' | head -1)
  echo "${m:-http://deb.debian.org/debian}"
}

# The root file system is cached as a tarball (debootstrap takes a while and needs the mirror);
# the image made from it is removed at the end like every other.
BASE_TAR="$PF_CACHE/debian-bookworm-minbase.tar"
if ! "$DOCKER" image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
  b0=$SECONDS
  if [ -s "$BASE_TAR" ]; then
    say "$BASE_TAR present (reused; delete it to debootstrap afresh)"
  else
    mirror=$(debian_mirror); mirror=${mirror%/}
    step "debootstrap --variant=minbase bookworm from $mirror (log: $STATE/debootstrap.log)"
    as_root debootstrap --variant=minbase bookworm "$STATE/rootfs" "$mirror" >"$STATE/debootstrap.log" 2>&1 \
      || { tail -20 "$STATE/debootstrap.log" >&2; die "debootstrap failed"; }
    printf 'deb %s bookworm main\ndeb %s bookworm-updates main\ndeb %s-security bookworm-security main\n' \
      "$mirror" "$mirror" "$mirror" >"$STATE/rootfs/etc/apt/sources.list"
    # Packages' maintainer scripts must not try to start services inside image builds.
    printf '#!/bin/sh\nexit 101\n' >"$STATE/rootfs/usr/sbin/policy-rc.d"; chmod +x "$STATE/rootfs/usr/sbin/policy-rc.d"
    rm -rf "$STATE"/rootfs/var/cache/apt/archives/*.deb "$STATE"/rootfs/var/lib/apt/lists/*
    mkdir -p "$PF_CACHE"
    tar -C "$STATE/rootfs" --numeric-owner -cf "$BASE_TAR.tmp" . && mv "$BASE_TAR.tmp" "$BASE_TAR" \
      || die "writing $BASE_TAR failed"
    rm -rf "$STATE/rootfs"
    say "cached the root file system as $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
  fi
  step "docker import $BASE_TAR as $BASE_IMAGE"
  "$DOCKER" import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' -c 'CMD ["bash"]' \
    "$BASE_TAR" "$BASE_IMAGE" >/dev/null || die "docker import of the base image failed"
  mark "base image" "$b0"
else
  say "$BASE_IMAGE present (reused)"
fi

build() { DOCKER_BUILDKIT=1 "$DOCKER" build --progress=plain "$@"; }

# standin NAME CONTEXT: builds local/pricefeed-standin-NAME tagged with a hash of its build
# context, unless that tag exists; older tags of it are removed.
standin() {
  local name=$1 ctx=$2 hash repo="local/pricefeed-standin-$1"
  hash=$( (cd "$ctx" && find . -type f -print0 | sort -z | xargs -0 sha256sum; "$DOCKER" image inspect -f '{{.Id}}' "$BASE_IMAGE") | sha256sum | cut -c1-12)
  STANDIN_IMAGE="$repo:$hash"
  if "$DOCKER" image inspect "$STANDIN_IMAGE" >/dev/null 2>&1; then
    say "stand-in $STANDIN_IMAGE present (reused)"
    return
  fi
  local b0=$SECONDS
  step "building stand-in $STANDIN_IMAGE (log: $STATE/build-$name.log)"
  build --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$STANDIN_IMAGE" "$ctx" >"$STATE/build-$name.log" 2>&1 \
    || { tail -30 "$STATE/build-$name.log" >&2; die "building the $name stand-in failed"; }
  "$DOCKER" images --format '{{.Repository}}:{{.Tag}}' "$repo" | grep -vxF "$STANDIN_IMAGE" \
    | xargs -r "$DOCKER" rmi >/dev/null 2>&1 || true
  mark "stand-in $name" "$b0"
}

standin postgres docker/standins/postgres;     export PRICEFEED_POSTGRES_IMAGE=$STANDIN_IMAGE
standin redis docker/standins/redis;           export PRICEFEED_REDIS_IMAGE=$STANDIN_IMAGE
standin nginx docker/standins/nginx;           export PRICEFEED_NGINX_IMAGE=$STANDIN_IMAGE
standin prometheus docker/standins/prometheus; export PRICEFEED_PROMETHEUS_IMAGE=$STANDIN_IMAGE
mkdir -p "$STATE/mailsink/maildev"
cp docker/standins/mailsink/Dockerfile "$STATE/mailsink/"
cp -a "$(dirname "$(dirname "$(dirname "$PF_MAILDEV")")")"/{package.json,node_modules} "$STATE/mailsink/maildev/"
standin mailsink "$STATE/mailsink";             export PRICEFEED_MAILSINK_IMAGE=$STANDIN_IMAGE

# --- 3. binaries and the project image -------------------------------------------------------
b0=$SECONDS
step "cargo build --release (pricefeed-node, pricefeed-scheduler, pricefeed-sim) into $CARGO_TARGET_DIR"
cargo build --release --locked -q -p pricefeed-node -p pricefeed-scheduler -p pricefeed-exchange-sim --bin pricefeed-node --bin pricefeed-scheduler --bin pricefeed-sim \
  || die "cargo build --release failed"
mark "release build" "$b0"
rm -rf "$PREBUILT_DIR"; mkdir -p "$PREBUILT_DIR"
for b in pricefeed-node pricefeed-scheduler pricefeed-sim; do cp "$CARGO_TARGET_DIR/release/$b" "$PREBUILT_DIR/"; done
b0=$SECONDS
step "building $APP_IMAGE (docker/Dockerfile, BINARIES=prebuilt, RUNTIME_IMAGE=$BASE_IMAGE)"
build -f docker/Dockerfile --build-arg BINARIES=prebuilt --build-arg "PREBUILT_DIR=$PREBUILT_DIR" \
  --build-arg "RUNTIME_IMAGE=$BASE_IMAGE" -t "$APP_IMAGE" . >"$STATE/build-app.log" 2>&1 \
  || { tail -30 "$STATE/build-app.log" >&2; die "building the project image failed"; }
rm -rf "$PREBUILT_DIR"
mark "project image" "$b0"
export PRICEFEED_IMAGE=$APP_IMAGE

# --- 4. up -----------------------------------------------------------------------------------
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
LB_PORT=$(free_port); MAIL_PORT=$(free_port); PROM_PORT=$(free_port)
export PRICEFEED_HTTP_PORT="127.0.0.1:$LB_PORT" PRICEFEED_MAIL_WEB_PORT="127.0.0.1:$MAIL_PORT" \
       PRICEFEED_PROMETHEUS_PORT="127.0.0.1:$PROM_PORT"
PRICEFEED_JWT_SECRET=$(head -c 48 /dev/urandom | base64 -w0)
POSTGRES_PASSWORD=$(head -c 18 /dev/urandom | base64 -w0 | tr '+/' '-_')
export PRICEFEED_JWT_SECRET POSTGRES_PASSWORD
# Every service but grafana (no Debian package to make a stand-in from).
SERVICES=(postgres redis migrate simulator scheduler worker node lb mailsink prometheus)
# The file's `deploy.replicas` of node; compose v1 only honours it as --scale (v2 either way).
NODES=$(python3 -c 'import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))["services"]["node"]["deploy"]["replicas"])' docker/compose.yaml 2>/dev/null || echo 3)
b0=$SECONDS
step "up -d project $PROJECT: ${SERVICES[*]} (load balancer 127.0.0.1:$LB_PORT, mail 127.0.0.1:$MAIL_PORT, Prometheus 127.0.0.1:$PROM_PORT)"
UP_DONE=1
if ! timeout 600 bash -c "$(declare -f dc); $(declare -p COMPOSE_V2 PROJECT DOCKER); dc up -d --no-build --scale node=$NODES ${SERVICES[*]}" \
    >"$STATE/up.log" 2>&1; then
  cat "$STATE/up.log" >&2
  die "compose up failed (output above)"
fi
sed 's/^/   /' "$STATE/up.log"
mark "up -d (until every depends_on condition held)" "$b0"

# --- 5. checks -------------------------------------------------------------------------------
b0=$SECONDS
step "checks (scripts/compose_check.py)"
PF_PROJECT=$PROJECT PF_DOCKER=$DOCKER PF_NODES=$NODES PF_LB="http://127.0.0.1:$LB_PORT" \
  PF_MAIL="http://127.0.0.1:$MAIL_PORT" PF_PROM="http://127.0.0.1:$PROM_PORT" \
  python3 scripts/compose_check.py || die "checks failed"
mark "checks" "$b0"
