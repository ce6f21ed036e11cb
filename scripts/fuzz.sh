#!/usr/bin/env bash
# libFuzzer runs of the fuzz targets in fuzz/ on the STABLE toolchain (no nightly, no cargo-fuzz):
# the targets are ordinary libfuzzer-sys binaries; the SanitizerCoverage instrumentation
# cargo-fuzz would add is passed by hand (`-C passes=sancov-module` and `-C llvm-args` are stable
# codegen flags). No AddressSanitizer (that needs nightly `-Z sanitizer`); the code under test is
# safe Rust, so the properties the targets assert, panics, overflow checks and debug assertions
# are what can fail. See fuzz/README.md.
#
#   scripts/fuzz.sh build                       build the three targets
#   scripts/fuzz.sh run TARGET [libFuzzer args] fuzz TARGET from the committed corpus; new inputs
#                                               go to a scratch corpus, crashes to ./artifacts/
#   scripts/fuzz.sh smoke SECONDS               every target for SECONDS (the test command's run);
#                                               fails with the reproducer's path on a crash
#   scripts/fuzz.sh cmin TARGET DIR...          merge DIRs into fuzz/corpus/TARGET, minimised
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$PF_ROOT"

TARGETS=(broker_frame stream_command api_query)
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
# Its own target dir: the instrumented build must not mix with the ordinary one.
FUZZ_TARGET_DIR="${PRICEFEED_FUZZ_TARGET_DIR:-$PF_CACHE/fuzz-target}"
BIN_DIR="$FUZZ_TARGET_DIR/$TRIPLE/release"

# What `cargo fuzz build -s none` passes, minus its nightly-only flags. `--target` keeps the
# flags off build scripts and proc macros (they must not link against libFuzzer).
fuzz_rustflags() {
  local f=(
    --cfg fuzzing
    -C passes=sancov-module
    -C llvm-args=-sanitizer-coverage-level=4
    -C llvm-args=-sanitizer-coverage-inline-8bit-counters
    -C llvm-args=-sanitizer-coverage-pc-table
    -C llvm-args=-sanitizer-coverage-trace-compares
    -C llvm-args=-sanitizer-coverage-stack-depth
    -C debug-assertions
    -C overflow-checks
    -C codegen-units=16
  )
  echo "${f[*]}"
}

build() {
  command -v c++ >/dev/null 2>&1 || apt_install g++   # libfuzzer-sys compiles libFuzzer (C++)
  RUSTFLAGS="$(fuzz_rustflags)" cargo build --manifest-path fuzz/Cargo.toml --release \
    --target "$TRIPLE" --target-dir "$FUZZ_TARGET_DIR" --bins -q \
    || die "building the fuzz targets failed"
}

known() { [[ " ${TARGETS[*]} " == *" $1 "* ]] || die "unknown fuzz target $1 (one of: ${TARGETS[*]})"; }

run() {
  local target=$1; shift
  known "$target"
  local scratch="${PRICEFEED_FUZZ_WORK:-/var/tmp/pricefeed-fuzz}/$target"
  mkdir -p "$scratch" artifacts
  "$BIN_DIR/$target" "$scratch" "fuzz/corpus/$target" -artifact_prefix="artifacts/$target-" \
    -print_final_stats=1 "$@"
}

# smoke SECONDS: each target for SECONDS from the committed corpus (read only), one process.
smoke() {
  local secs=$1 t scratch log
  for t in "${TARGETS[@]}"; do
    scratch=$(mktemp -d /var/tmp/pricefeed-fuzz.XXXXXX)
    mkdir -p "$scratch/corpus" "$scratch/artifacts"
    log="$scratch/log"
    if ! "$BIN_DIR/$t" "$scratch/corpus" "fuzz/corpus/$t" -max_total_time="$secs" \
        -print_final_stats=1 -artifact_prefix="$scratch/artifacts/" >"$log" 2>&1; then
      tail -40 "$log" >&2
      die "fuzz target $t failed; reproducer: $(ls "$scratch"/artifacts/* 2>/dev/null | tr '\n' ' ')(kept in $scratch; minimise with scripts/fuzz.sh run $t -minimize_crash=1 -runs=100000 FILE, add it under fuzz/regressions/$t/ with a unit test)"
    fi
    say "fuzz $t: $(sed -n 's/^stat::number_of_executed_units: *//p' "$log") executions in ${secs}s, no failure"
    rm -rf "$scratch"
  done
}

# cmin TARGET DIR...: the committed corpus becomes the smallest set of inputs from it and DIRs
# that covers what they all cover.
cmin() {
  local target=$1; shift
  known "$target"
  local out; out=$(mktemp -d /var/tmp/pricefeed-cmin.XXXXXX)
  "$BIN_DIR/$target" -merge=1 "$out" "fuzz/corpus/$target" "$@" 2>&1 | tail -2
  rm -rf "fuzz/corpus/$target"
  mv "$out" "fuzz/corpus/$target"
  say "fuzz/corpus/$target: $(ls "fuzz/corpus/$target" | wc -l) inputs, $(du -sh "fuzz/corpus/$target" | cut -f1)"
}

case "${1:-}" in
  build) build ;;
  run) [ $# -ge 2 ] || die "usage: scripts/fuzz.sh run TARGET [libFuzzer args]"; shift; build; run "$@" ;;
  smoke) [ $# -eq 2 ] || die "usage: scripts/fuzz.sh smoke SECONDS"; build; smoke "$2" ;;
  cmin) [ $# -ge 3 ] || die "usage: scripts/fuzz.sh cmin TARGET DIR..."; shift; build; cmin "$@" ;;
  *) die "usage: scripts/fuzz.sh build | run TARGET [args] | smoke SECONDS | cmin TARGET DIR..." ;;
esac
