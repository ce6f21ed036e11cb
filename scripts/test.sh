#!/usr/bin/env bash
# `./dev test`: every check and test from scratch, failing loudly on the first failure.
#   1. formatting and clippy (warnings denied)
#   2. a private Postgres and Redis on free loopback ports, in a fresh temporary directory
#   3. unit, integration (real Postgres/Redis; one database per test) and end-to-end tests
#      across processes, with cargo-nextest (cargo test when nextest is missing)
#   4. a short libFuzzer run of each fuzz target (scripts/fuzz.sh, stable toolchain)
#   5. Python checks in a venv: docker compose validation, third-party Binance clients
#   6. with PRICEFEED_COMPOSE_CHECK=1: the compose stack run for real (./dev compose-check)
#   (the venv also provides aiosmtpd, the SMTP server of the email delivery tests)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PF_ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PF_CACHE/target}"
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-always}"
t0=$SECONDS
step() { say "[$((SECONDS - t0))s] $*"; }

step "checking system dependencies"
PF_NEED_BROWSER=1 ensure_system_deps
export PRICEFEED_CHROMIUM="${PRICEFEED_CHROMIUM:-/usr/bin/chromium}"
export PRICEFEED_PROMETHEUS="${PRICEFEED_PROMETHEUS:-/usr/bin/prometheus}"
ensure_venv

step "cargo fmt --check"
cargo fmt --all -- --check || die "formatting differs: run cargo fmt --all"

step "cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets -q -- -D warnings || die "clippy found problems"

STATE=$(mktemp -d /var/tmp/pricefeed-test.XXXXXX)
chmod 755 "$STATE"
cleanup() {
  local rc=$?
  stop_redis "$STATE/redis" || true
  stop_postgres "$STATE/pg" || true
  rm -rf "$STATE"
  if [ $rc -eq 0 ]; then say "all checks passed in $((SECONDS - t0))s"; else printf '\033[1;31mFAILED\033[0m (exit %s) after %ss\n' "$rc" "$((SECONDS - t0))" >&2; fi
  exit $rc
}
trap cleanup EXIT

free_port() { "$PF_VENV/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
PG_PORT=$(free_port); REDIS_PORT=$(free_port)
step "starting Postgres (:$PG_PORT) and Redis (:$REDIS_PORT) in $STATE"
PRICEFEED_PG_FSYNC=off start_postgres "$STATE/pg" "$PG_PORT"
start_redis "$STATE/redis" "$REDIS_PORT"

export DATABASE_URL="postgres://pricefeed@127.0.0.1:$PG_PORT/pricefeed"
export PRICEFEED_TEST_DATABASE_URL="$DATABASE_URL"
export PRICEFEED_TEST_REDIS_URL="redis://127.0.0.1:$REDIS_PORT"
export PRICEFEED_TEST_REDIS_SERVER="$(command -v redis-server)"
export PRICEFEED_BIN_DIR="$CARGO_TARGET_DIR/debug"
export PRICEFEED_SIM_BIN="$PRICEFEED_BIN_DIR/pricefeed-sim"
# The email tests run a real SMTP server (tests/smtp/sink.py, aiosmtpd from the venv);
# tests/api_contract.rs runs schemathesis from the venv against a node's OpenAPI document.
export PRICEFEED_TEST_PYTHON="$PF_VENV/bin/python"

step "building binaries"
cargo build --workspace --bins -q || die "cargo build failed"

step "Rust tests (unit, integration, end-to-end)"
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --no-fail-fast --failure-output final ${PRICEFEED_NEXTEST_ARGS:-} \
    || die "Rust tests failed"
else
  warn "cargo-nextest not found; using cargo test"
  cargo test --workspace --no-fail-fast || die "Rust tests failed"
fi

# A short real libFuzzer run of each target from its committed corpus (stable toolchain; the
# long runs and their figures: docs/reliability.md). The corpus and the regressions are also
# replayed by the Rust tests above (crates/fuzzing/tests/corpus.rs).
FUZZ_SECS="${PRICEFEED_FUZZ_SECS:-15}"
step "fuzzing: ${FUZZ_SECS}s per target (scripts/fuzz.sh smoke)"
scripts/fuzz.sh smoke "$FUZZ_SECS"

step "docker compose validation"
"$PF_VENV/bin/check-jsonschema" --builtin-schema vendor.compose-spec docker/compose.yaml \
  || die "docker/compose.yaml does not match the compose specification"
"$PF_VENV/bin/python" scripts/check_compose.py || die "docker/compose.yaml names something that does not exist"

step "Python tests (third-party Binance clients against the simulator)"
"$PF_VENV/bin/python" -m pytest -q tests/python || die "Python tests failed"

# Off by default: it builds release binaries and Docker images and takes minutes
# (docs/compose-smoke.md has its figures).
if [ "${PRICEFEED_COMPOSE_CHECK:-}" = 1 ]; then
  step "compose smoke check (PRICEFEED_COMPOSE_CHECK=1): docker/compose.yaml run for real"
  "$PF_ROOT/scripts/compose_check.sh" || die "compose smoke check failed"
fi
