#!/usr/bin/env bash
# What one pre_query plugin costs end to end: pgbench -S through heliosproxy (release build,
# transaction pooling) with `block-drop` loaded against the same proxy without plugins,
# alternating the two in one run, printing TPS, CPU µs per transaction (from /proc) and the
# TPS ratio (goal ≥ 0.9). Then the per-call cost of the hook from the plugin-host
# micro-benchmark (`cargo bench -p helios-plugin-host --bench hook_call`), or its documented
# number with HOOK_BENCH=0.
#
#   scripts/bench-plugins.sh                       # scale 10, 50 clients, pool 20, 10 s x 3
#   CLIENTS=8 DURATION=5 ROUNDS=2 HOOK_BENCH=0 scripts/bench-plugins.sh
#   PLUGINS=all scripts/bench-plugins.sh           # every first-party plugin built (goal >= 0.8)
#
# PLUGINS: `block-drop` (default), `all` (those of the eight first-party plugins — cost-governor,
# ai-classifier, token-budget, llm-guardrail, pgvector-router, column-mask, audit-chain,
# residency-router — present in target/plugins), or a comma-separated list of names there.
# Seeded through the admin KV routes for the run: column-mask gets a rule on
# pgbench_accounts.filler (so it tokenizes every statement; pgbench -S does not select filler),
# audit-chain `block_when_unwritable = false` (its records fill the KV within a run). After
# the runs, each plugin's hook call time inside the proxy (p50/p99 from GET /plugins) is printed.
#
# Knobs (environment): SCALE (10), CLIENTS (50), THREADS (2), POOL (20), DURATION seconds per
# run (10), ROUNDS (3), HELIOS_CORES (1), MODE (simple; or prepared: the hook then runs at
# Parse only), HOOK_BENCH (1: run the criterion bench, ~1 min; 0: print the documented number),
# CARGO_TARGET_DIR (where the release binary is built; default target), BUILD (1; 0: use the
# release binary already there), HELIOS (the heliosproxy binary to run; then give BUILD=0).
# Everything shares this machine's cores: compare the ratio from one run, not absolute TPS.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-50}
THREADS=${THREADS:-2}
POOL=${POOL:-20}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
HELIOS_CORES=${HELIOS_CORES:-1}
MODE=${MODE:-simple}
HOOK_BENCH=${HOOK_BENCH:-1}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

FIRST_PARTY="cost-governor ai-classifier token-budget llm-guardrail pgvector-router column-mask audit-chain residency-router"
PLUGINS=${PLUGINS:-block-drop}
if [ ! -f target/plugins/block-drop.wasm ]; then
  echo "building the guest plugins (scripts/build-plugins.sh)…" >&2
  scripts/build-plugins.sh >&2
fi
if [ "$PLUGINS" = all ]; then
  NAMES=(); for n in $FIRST_PARTY; do [ -f "target/plugins/$n.wasm" ] && NAMES+=("$n"); done
  GOAL=${GOAL:-0.8}
else
  IFS=, read -r -a NAMES <<<"$PLUGINS"
  GOAL=${GOAL:-0.9}
fi
[ "${#NAMES[@]}" -gt 0 ] || { echo "no plugins to load ($PLUGINS)" >&2; exit 1; }
PLUGIN_ARGS=()
for n in "${NAMES[@]}"; do
  [ -f "target/plugins/$n.wasm" ] || { echo "target/plugins/$n.wasm is missing" >&2; exit 1; }
  PLUGIN_ARGS+=(--plugin "target/plugins/$n.wasm")
done
LABEL="${NAMES[*]}"; [ "${#NAMES[@]}" -gt 1 ] && LABEL="${#NAMES[@]} plugins"
if [ "${BUILD:-1}" = 1 ]; then
  echo "building heliosproxy (release)…" >&2
  cargo build --release -q -p helios-engine
fi
HELIOS=${HELIOS:-$TARGET_DIR/release/heliosproxy}

WORK=$(mktemp -d /tmp/helios-bench-plugins.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  stop_scratch_pg
  rm -rf "$WORK"
}
trap cleanup EXIT

PGUSER=postgres PGPASSWORD=bench-pw PGDB=postgres
start_scratch_pg "$PGPASSWORD"
export PGPASSWORD
echo "pgbench -i -s $SCALE …" >&2
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER" "$PGDB" >/dev/null 2>&1

UPSTREAM="postgres://$PGUSER:$PGPASSWORD@127.0.0.1:$PG_PORT/$PGDB"
start_proxy() { # NAME ADMIN [--plugin PATH…] → sets ${NAME}_PORT and ${NAME}_PID
  local name=$1 admin=$2 port; shift 2
  port=$(free_port)
  "$HELIOS" --upstream "$UPSTREAM" --listen "127.0.0.1:$port" --cores "$HELIOS_CORES" \
    --pool-mode transaction --pool-size "$POOL" --admin-listen "$admin" "$@" >"$WORK/$name.log" 2>&1 &
  PIDS+=("$!")
  printf -v "${name}_PORT" '%s' "$port"
  printf -v "${name}_PID" '%s' "$!"
  wait_port "$port" || { cat "$WORK/$name.log" >&2; exit 1; }
}
ADMIN_PORT=$(free_port)
ADMIN="http://127.0.0.1:$ADMIN_PORT"
start_proxy plain off
start_proxy plugin "127.0.0.1:$ADMIN_PORT" "${PLUGIN_ARGS[@]}"
for n in "${NAMES[@]}"; do
  grep -q "plugin $n loaded" "$WORK/plugin.log" || {
    cat "$WORK/plugin.log" >&2; echo "$n did not load" >&2; exit 1; }
done
wait_port "$ADMIN_PORT" || { cat "$WORK/plugin.log" >&2; exit 1; }
kv_put() { curl -fsS -X PUT --data-binary "$3" "$ADMIN/plugins/$1/kv/$2" >/dev/null; }
for n in "${NAMES[@]}"; do
  case $n in
    column-mask) kv_put column-mask rules '[{"table":"pgbench_accounts","column":"filler","mask_function":"md5","unmask_role":"nobody"}]' ;;
    audit-chain) kv_put audit-chain block_when_unwritable false ;;
  esac
done
# The plugins really run on this proxy's query path.
if [[ " ${NAMES[*]} " == *" block-drop "* ]]; then
  if psql "postgres://$PGUSER@127.0.0.1:$plugin_PORT/$PGDB" -X -At -c "drop table if exists nope" >/dev/null 2>"$WORK/check.err"; then
    echo "DROP TABLE was not blocked through the plugin proxy" >&2; exit 1
  fi
  grep -q "DROP TABLE is not allowed" "$WORK/check.err" || { cat "$WORK/check.err" >&2; exit 1; }
fi
if [[ " ${NAMES[*]} " == *" column-mask "* ]]; then
  out=$(psql "postgres://$PGUSER@127.0.0.1:$plugin_PORT/$PGDB" -X -At -c "select filler from pgbench_accounts where aid = 1")
  [ "${#out}" = 32 ] || { echo "column-mask did not mask filler: '$out'" >&2; exit 1; }
fi

# run NAME → appends "name tps txns cpu_ticks" to $WORK/results
run() {
  local name=$1 port pid before after out tps txns failed
  port=${name}_PORT; port=${!port}
  pid=${name}_PID; pid=${!pid}
  before=$(proc_cpu_ticks "$pid")
  out=$(pgbench -n -S -M "$MODE" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U "$PGUSER" "$PGDB" 2>&1) || {
    echo "$out" >&2; echo "pgbench against $name failed" >&2; exit 1; }
  after=$(proc_cpu_ticks "$pid")
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  [ "${failed:-0}" = 0 ] || { echo "$out" >&2; echo "$name: $failed failed transactions" >&2; exit 1; }
  echo "$name $tps $txns $((after - before))" >>"$WORK/results"
  printf '  %-24s %10.0f tps\n' "$name" "$tps" >&2
}

for r in $(seq 1 "$ROUNDS"); do
  echo "round $r/$ROUNDS" >&2
  # Alternate which goes first, so neither always runs on a warmer machine.
  if [ $((r % 2)) = 1 ]; then run plain; run plugin; else run plugin; run plain; fi
done

CLK=$(getconf CLK_TCK)
echo
echo "pgbench -S -M $MODE -c $CLIENTS -j $THREADS -T $DURATION x $ROUNDS rounds, scale $SCALE, pool $POOL (transaction mode), heliosproxy cores=$HELIOS_CORES"
python3 - "$WORK/results" "$CLK" "$LABEL" "$GOAL" <<'EOF'
import sys, collections
rows = [l.split() for l in open(sys.argv[1])]
clk = int(sys.argv[2])
agg = collections.defaultdict(lambda: [0.0, 0, 0, 0])
for n, tps, txns, ticks in rows:
    a = agg[n]
    a[0] += float(tps); a[1] += int(txns); a[2] += int(ticks); a[3] += 1
label = {"plain": "no plugins", "plugin": sys.argv[3]}
print(f"{'heliosproxy':<24} {'tps':>10} {'cpu us/txn':>11}")
for n in ("plain", "plugin"):
    a = agg[n]
    print(f"{label[n]:<24} {a[0]/a[3]:>10.0f} {a[2]*1e6/clk/a[1]:>11.1f}")
p, b = agg["plugin"], agg["plain"]
ratio = (p[0]/p[3]) / (b[0]/b[3])
extra = p[2]*1e6/clk/p[1] - b[2]*1e6/clk/b[1]
goal = float(sys.argv[4])
print(f"\nTPS with {sys.argv[3]} / without: {ratio:.3f} (goal >= {goal}: {'met' if ratio >= goal else 'NOT met'}); "
      f"proxy CPU per transaction {extra:+.1f} us")
EOF

echo
echo "hook call time inside the proxy, per plugin (GET /plugins; all of a plugin's hooks):"
curl -fsS "$ADMIN/plugins" >"$WORK/plugins.json" || echo "  (GET /plugins failed)"
python3 - "$WORK/plugins.json" <<'EOF'
import json, sys
d = json.load(open(sys.argv[1]))
print(f"{'plugin':<18} {'hooks':<26} {'calls':>10} {'errors':>7} {'p50 us':>7} {'p99 us':>7}")
for p in d["plugins"]:
    print(f"{p['name']:<18} {','.join(p['hooks']):<26} {p['invocations']:>10} {p['errors']:>7} "
          f"{str(p['time_p50_us']):>7} {str(p['time_p99_us']):>7}")
EOF
echo
if [ "$HOOK_BENCH" = 1 ]; then
  echo "per-call cost (cargo bench -p helios-plugin-host --bench hook_call):"
  cargo bench -q -p helios-plugin-host --bench hook_call 2>&1 |
    grep -E "median|time:|^[a-z_/ -]+$" | grep -v "^$" || true
else
  echo "per-call cost: $(grep -m1 -E '^\| .pre_query., .block-drop.' docs/plugin-abi.md | cut -d'|' -f2-3 | sed 's/ *| */: /; s/^ *//')"
  echo "  (docs/plugin-abi.md; measure with HOOK_BENCH=1 or cargo bench -p helios-plugin-host --bench hook_call)"
fi
