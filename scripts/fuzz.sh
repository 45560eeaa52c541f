#!/usr/bin/env bash
# Runs the cargo-fuzz targets of fuzz/ for a bounded time each (CI runs it briefly).
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]     default: 30 s, every target
#
# Builds every target once, then runs each for SECONDS from its checked-in seeds
# (fuzz/corpus/<target>/, read only: new inputs go to a scratch directory that is deleted
# afterwards), two targets at a time. An input running over 10 s counts as a hang. Prints per
# target the executions and crashes; exits non-zero if any target crashed, hung, ran out of
# memory or could not run. A failing input is saved in fuzz/artifacts/<target>/; replay it with
# fuzz/target/<host>/release/<target> <file>, and the log is in fuzz/target/fuzz-logs/.
#
# Environment: FUZZ_JOBS (targets at a time, default 2); FUZZ_ARGS (more libFuzzer flags, e.g.
# "-runs=10000000" to stop after that many executions); FUZZ_SANITIZER (default none; address
# needs nightly, which is then installed if missing).
#
# Toolchain: cargo fuzz's default sanitizer (ASan) needs `-Zsanitizer`, so nightly. The code the
# targets run is safe Rust, where ASan finds little; panics, overflows (checks are on), hangs and
# runaway memory are what matter, and the coverage instrumentation (`-s none`) works on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-30}
[ $# -gt 0 ] && shift
if ! [[ $secs =~ ^[0-9]+$ ]] || [ "$secs" -eq 0 ]; then
  echo "usage: $0 [SECONDS_PER_TARGET] [TARGET...]" >&2
  exit 2
fi
jobs=${FUZZ_JOBS:-2}
sanitizer=${FUZZ_SANITIZER:-none}
read -r -a extra <<<"${FUZZ_ARGS:-}"

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
toolchain=()
if [ "$sanitizer" != none ]; then
  rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
  toolchain=(+nightly)
fi

all=$(cargo fuzz list --fuzz-dir fuzz)
if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    grep -qx "$t" <<<"$all" || { echo "no fuzz target $t (have: ${all//$'\n'/ })" >&2; exit 2; }
  done
else
  read -r -d '' -a targets <<<"$all" || true
fi

# 16 codegen units (cargo fuzz's default is 1): a much shorter build for slightly slower runs.
start=$(date +%s)
cargo ${toolchain[@]+"${toolchain[@]}"} fuzz build --fuzz-dir fuzz -s "$sanitizer" --codegen-units 16
host=$(rustc -vV | sed -n 's/^host: //p')
bin=fuzz/target/$host/release
echo "fuzz: built in $(($(date +%s) - start)) s; ${secs} s per target, $jobs at a time"

logs=fuzz/target/fuzz-logs
scratch=$(mktemp -d "${TMPDIR:-/tmp}/helios-fuzz.XXXXXX")
trap 'rm -rf "$scratch"' EXIT
mkdir -p "$logs"

# run TARGET: fuzzes it; its exit status and log are the result. libFuzzer stops itself; the
# outer timeout only guards against a run that never gets that far.
run() {
  local t=$1
  mkdir -p "$scratch/$t" "fuzz/artifacts/$t"
  timeout -k 10 $((secs + 300)) "$bin/$t" "$scratch/$t" "fuzz/corpus/$t" \
    -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" ${extra[@]+"${extra[@]}"} >"$logs/$t.log" 2>&1
}

# report TARGET STATUS: one line from the log's final stats; returns non-zero for a failure.
report() {
  local t=$1 rc=$2 log=$logs/$t.log execs rate what
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
  rate=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -n1)
  if [ "$rc" = 0 ]; then
    what="0 crashes"
  elif grep -q 'ERROR: libFuzzer: timeout' "$log"; then
    what="HANG (an input ran over 10 s)"
  elif grep -q 'ERROR: libFuzzer: out-of-memory' "$log"; then
    what="OUT OF MEMORY"
  elif grep -q -e 'deadly signal' -e 'panicked' "$log"; then
    what="1 CRASH"
  else
    what="FAILED (exit $rc)"
  fi
  printf 'fuzz: %-16s %12s executions  %8s exec/s  %s\n' "$t" "${execs:-?}" "${rate:-?}" "$what"
  grep -m1 -E '^#[0-9]+[[:space:]]+DONE' "$log" | sed 's/^/      /' || true
  if [ "$rc" != 0 ]; then
    { grep -m1 -A1 'panicked at' "$log" || grep -m1 'ERROR: libFuzzer' "$log"; } | sed 's/^/      /' || true
    sed -n 's/^Test unit written to /      input: /p' "$log"
    echo "      log: $log"
    return 1
  fi
}

failed=0
for t in "${targets[@]}"; do
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do wait -n || true; done
  { rc=0; run "$t" || rc=$?; echo "$rc" >"$scratch/$t.rc"; } &
done
wait
for t in "${targets[@]}"; do
  report "$t" "$(cat "$scratch/$t.rc")" || failed=1
done
echo "fuzz: done in $(($(date +%s) - start)) s"
exit $failed
