#!/usr/bin/env bash
# Read/write split on this machine: a primary and one streaming standby (pg_basebackup -R) of a
# scratch cluster, pgbench -S (reads only) through two heliosproxy instances side by side in
# alternating rounds — one routing every transaction to the primary (a single node), one with
# `read_write_split` over both nodes — printing TPS, the ratio, and where the reads ran.
#
#   scripts/bench-split.sh              # scale 10, 50 clients, pool 20, 5 rounds of 8 s
#   SPLIT=1 scripts/bench.sh            # the same, from bench.sh
#
# Knobs: SCALE (10), CLIENTS (50), POOL (20 per node), DURATION (8), ROUNDS (5), MODES
# ("simple prepared"), HELIOS_CORES (auto). Both nodes share this machine's cores with pgbench
# and the proxy: the ratio says what spreading reads costs or gains *here*; on separate hosts
# each replica adds its own CPUs.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-50}
POOL=${POOL:-20}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
MODES=${MODES:-simple prepared}
HELIOS_CORES=${HELIOS_CORES:-auto}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p helios-engine
HELIOS=$TARGET_DIR/release/heliosproxy

WORK=$(mktemp -d /tmp/helios-bench-split.XXXXXX)
PIDS=()
STANDBY_DIR=""
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  if [ -n "$STANDBY_DIR" ] && [ -d "$STANDBY_DIR/data" ]; then
    as_postgres "$PG_BINDIR/pg_ctl" -D "$STANDBY_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$STANDBY_DIR"
  fi
  stop_scratch_pg
  rm -rf "$WORK"
}
trap cleanup EXIT

PGUSER=postgres PGPASSWORD=bench-pw PGDB=postgres
export PGPASSWORD
start_scratch_pg "$PGPASSWORD"
echo "pgbench -i -s $SCALE …" >&2
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER" "$PGDB" >/dev/null 2>&1

echo "streaming standby (pg_basebackup -R) …" >&2
STANDBY_DIR=$(mktemp -d /tmp/helios-scratch-standby.XXXXXX)
STANDBY_PORT=$(free_port)
[ "$(id -u)" = 0 ] && chown -R postgres:postgres "$STANDBY_DIR"
as_postgres env PGPASSWORD="$PGPASSWORD" "$PG_BINDIR/pg_basebackup" -h 127.0.0.1 -p "$PG_PORT" \
  -U "$PGUSER" -D "$STANDBY_DIR/data" -R -X stream -c fast --no-sync
cat >>"$STANDBY_DIR/data/postgresql.auto.conf" <<EOF
port = $STANDBY_PORT
unix_socket_directories = '$STANDBY_DIR'
EOF
as_postgres "$PG_BINDIR/pg_ctl" -D "$STANDBY_DIR/data" -l "$STANDBY_DIR/server.log" -w start >/dev/null
[ "$(psql -X -At -h 127.0.0.1 -p "$STANDBY_PORT" -U "$PGUSER" -c 'select pg_is_in_recovery()' "$PGDB")" = t ] ||
  { echo "the standby is not in recovery" >&2; exit 1; }

printf '"%s" "%s"\n' "$PGUSER" "$PGPASSWORD" >"$WORK/userlist.txt"
# config NAME SPLIT → $WORK/NAME.toml
config() {
  local nodes='"p"' split=false
  [ "$2" = true ] && { nodes='"p", "r"'; split=true; }
  cat >"$WORK/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$(free_port)"]
cores = "$HELIOS_CORES"

[admin]
listen = "127.0.0.1:$(free_port)"

[auth]
userlist = "userlist.txt"

[[nodes]]
name = "p"
host = "127.0.0.1"
port = $PG_PORT

[[nodes]]
name = "r"
host = "127.0.0.1"
port = $STANDBY_PORT
role = "replica"

[health]
interval_ms = 500
user = "$PGUSER"
password = "$PGPASSWORD"

[databases.$PGDB]
nodes = [$nodes]
read_write_split = $split
pool_mode = "transaction"
pool_size = $POOL
user = "$PGUSER"
password = "$PGPASSWORD"
EOF
  [ "$HELIOS_CORES" = auto ] || sed -i "s/^cores = \"$HELIOS_CORES\"/cores = $HELIOS_CORES/" "$WORK/$1.toml"
}
declare -A PORT PID
for name in single split; do
  [ "$name" = split ] && config "$name" true || config "$name" false
  PORT[$name]=$(sed -n 's/^listen = \["127.0.0.1:\([0-9]*\)"\]/\1/p' "$WORK/$name.toml")
  setsid "$HELIOS" --config "$WORK/$name.toml" >"$WORK/$name.log" 2>&1 &
  PID[$name]=$!; PIDS+=("${PID[$name]}")
done
for name in single split; do wait_port "${PORT[$name]}" || { cat "$WORK/$name.log" >&2; exit 1; }; done

# Where reads run through the split proxy: a few fresh transactions, counted by server port.
where=$(for _ in $(seq 1 20); do psql -X -At -h 127.0.0.1 -p "${PORT[split]}" -U "$PGUSER" -c 'select inet_server_port()' "$PGDB"; done | sort | uniq -c | tr '\n' ' ')
echo "split: 20 reads ran on (count port): $where(primary $PG_PORT, standby $STANDBY_PORT)" >&2

CLK=$(getconf CLK_TCK)
run() { # NAME MODE
  local name=$1 mode=$2 before after out tps txns
  before=$(proc_cpu_ticks "${PID[$name]}")
  out=$(pgbench -n -S -M "$mode" -c "$CLIENTS" -j 2 -T "$DURATION" -h 127.0.0.1 -p "${PORT[$name]}" -U "$PGUSER" "$PGDB" 2>&1) ||
    { echo "$out" >&2; echo "pgbench through $name failed" >&2; exit 1; }
  after=$(proc_cpu_ticks "${PID[$name]}")
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  echo "$name $mode $tps $txns $((after - before))" >>"$WORK/results"
  printf '  %-7s %-9s %10.0f tps\n' "$name" "$mode" "$tps" >&2
}
for mode in $MODES; do
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS, -M $mode" >&2
    if [ $((r % 2)) = 1 ]; then run single "$mode"; run split "$mode"; else run split "$mode"; run single "$mode"; fi
  done
done

echo
echo "pgbench -S -c $CLIENTS -T $DURATION x $ROUNDS rounds, scale $SCALE, pool $POOL per node, heliosproxy cores=$HELIOS_CORES; single = every transaction on the primary, split = read_write_split over the primary and one streaming standby (same host)"
python3 - "$WORK/results" "$CLK" <<'EOF'
import sys, collections
clk = int(sys.argv[2])
agg = collections.defaultdict(lambda: [0.0, 0, 0, 0])
for name, mode, tps, txns, ticks in (l.split() for l in open(sys.argv[1])):
    a = agg[(name, mode)]; a[0] += float(tps); a[1] += int(txns); a[2] += int(ticks); a[3] += 1
for mode in dict.fromkeys(k[1] for k in agg):
    s, p = agg[("single", mode)], agg[("split", mode)]
    ts, tp = s[0] / s[3], p[0] / p[3]
    cs, cp = s[2] * 1e6 / clk / s[1], p[2] * 1e6 / clk / p[1]
    print(f"{mode:<9} single {ts:>9.0f} tps ({cs:.1f} µs proxy CPU/txn)  split {tp:>9.0f} tps ({cp:.1f} µs/txn)  split/single TPS {tp/ts:.3f}")
EOF
