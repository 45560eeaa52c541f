#!/usr/bin/env bash
# pgbench -S against direct PostgreSQL, heliosproxy and PgBouncer, alternating the three in one
# run, printing TPS, the ratios, and each proxy's CPU µs per transaction (from /proc).
#
#   scripts/bench.sh                 # scale 10, 50 clients, pool 20, transaction mode
#   CLIENTS=4 DURATION=10 ROUNDS=3 scripts/bench.sh
#
# Knobs (environment): SCALE (10), CLIENTS (50), POOL (20), DURATION seconds per run (10),
# ROUNDS (3), HELIOS_CORES (1), MODES ("simple prepared"), DATABASE_URL (use an existing server
# instead of a scratch cluster; it must accept postgres://USER:PASS@HOST:PORT/DB logins).
#
# PgBouncer (Debian's) is installed with apt if missing. PgBouncer before 1.21 cannot keep
# protocol-level prepared statements in transaction mode, so -M prepared runs only against
# direct and heliosproxy. Everything shares this machine's cores: compare ratios from one run.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-50}
POOL=${POOL:-20}
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
HELIOS_CORES=${HELIOS_CORES:-1}
MODES=${MODES:-simple prepared}
THREADS=${THREADS:-2}

command -v pgbouncer >/dev/null || {
  echo "installing pgbouncer (apt-get)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
}
cargo build --release -q -p helios-engine
HELIOS=target/release/heliosproxy

WORK=$(mktemp -d /tmp/helios-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  stop_scratch_pg
  rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${DATABASE_URL:-}" ]; then
  # postgres://USER:PASS@HOST:PORT/DB
  rest=${DATABASE_URL#*://}
  PGUSER=${rest%%:*}; rest=${rest#*:}
  PGPASSWORD=${rest%%@*}; rest=${rest#*@}
  PGHOST=${rest%%:*}; rest=${rest#*:}
  PG_PORT=${rest%%/*}; PGDB=${rest#*/}
else
  PGUSER=postgres PGPASSWORD=bench-pw PGHOST=127.0.0.1 PGDB=postgres
  start_scratch_pg "$PGPASSWORD"
fi
export PGPASSWORD

echo "pgbench -i -s $SCALE …" >&2
pgbench -i -q -s "$SCALE" -h "$PGHOST" -p "$PG_PORT" -U "$PGUSER" "$PGDB" >/dev/null 2>&1

HP_PORT=$(free_port)
"$HELIOS" --upstream "postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PG_PORT/$PGDB" --listen "127.0.0.1:$HP_PORT" \
  --cores "$HELIOS_CORES" --pool-mode transaction --pool-size "$POOL" >"$WORK/helios.log" 2>&1 &
HP_PID=$!; PIDS+=("$HP_PID")

PB_PORT=$(free_port)
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$PGDB = host=$PGHOST port=$PG_PORT dbname=$PGDB user=$PGUSER password=$PGPASSWORD
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PB_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 1000
logfile = $WORK/pgbouncer.log
EOF
printf '"%s" "%s"\n' "$PGUSER" "$PGPASSWORD" >"$WORK/userlist.txt"
chmod 755 "$WORK"; [ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
as_postgres pgbouncer "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 &
sleep 0.2
PB_PID=$(pgrep -n -f "pgbouncer $WORK/pgbouncer.ini")
PIDS+=("$PB_PID")
wait_port "$HP_PORT"; wait_port "$PB_PORT"

# run TARGET MODE → appends "target mode tps txns cpu_ticks" to $WORK/results
run() {
  local target=$1 mode=$2 port pid="" before=0 after=0 out
  case $target in
    direct) port=$PG_PORT ;;
    heliosproxy) port=$HP_PORT; pid=$HP_PID ;;
    pgbouncer) port=$PB_PORT; pid=$PB_PID ;;
  esac
  [ -n "$pid" ] && before=$(proc_cpu_ticks "$pid")
  out=$(pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U "$PGUSER" "$PGDB" 2>&1) || {
    echo "$out" >&2; echo "pgbench against $target failed" >&2; exit 1; }
  [ -n "$pid" ] && after=$(proc_cpu_ticks "$pid")
  local tps txns failed
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  [ "${failed:-0}" = 0 ] || { echo "$out" >&2; echo "$target: $failed failed transactions" >&2; exit 1; }
  echo "$target $mode $tps $txns $((after - before))" >>"$WORK/results"
  printf '  %-12s %-9s %10.0f tps\n' "$target" "$mode" "$tps" >&2
}

for mode in $MODES; do
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS, -M $mode" >&2
    run direct "$mode"
    run heliosproxy "$mode"
    [ "$mode" = simple ] && run pgbouncer "$mode"
  done
done

CLK=$(getconf CLK_TCK)
echo
echo "pgbench -S -c $CLIENTS -j $THREADS -T $DURATION x $ROUNDS rounds, scale $SCALE, pool $POOL (transaction mode), heliosproxy cores=$HELIOS_CORES"
python3 - "$WORK/results" "$CLK" <<'EOF'
import sys, collections
rows = [l.split() for l in open(sys.argv[1])]
clk = int(sys.argv[2])
agg = collections.defaultdict(lambda: [0.0, 0, 0, 0])
for t, m, tps, txns, ticks in rows:
    a = agg[(t, m)]
    a[0] += float(tps); a[1] += int(txns); a[2] += int(ticks); a[3] += 1
print(f"{'mode':<9} {'target':<12} {'tps':>10} {'vs direct':>10} {'vs pgbouncer':>13} {'cpu us/txn':>11}")
for m in dict.fromkeys(k[1] for k in agg):
    d = agg.get(("direct", m)); b = agg.get(("pgbouncer", m))
    for t in ("direct", "heliosproxy", "pgbouncer"):
        a = agg.get((t, m))
        if not a: continue
        tps = a[0] / a[3]
        vd = f"{tps / (d[0]/d[3]):.3f}" if d else "-"
        vb = f"{tps / (b[0]/b[3]):.3f}" if b else "-"
        cpu = f"{a[2] * 1e6 / clk / a[1]:.1f}" if t != "direct" and a[1] else "-"
        print(f"{m:<9} {t:<12} {tps:>10.0f} {vd:>10} {vb:>13} {cpu:>11}")
h = agg.get(("heliosproxy", "simple")); b = agg.get(("pgbouncer", "simple"))
if h and b and h[1] and b[1]:
    print(f"\nsimple: heliosproxy/pgbouncer TPS {h[0]/h[3]/(b[0]/b[3]):.3f}, CPU per txn {(h[2]/h[1])/(b[2]/b[1]):.3f}")
hp = agg.get(("heliosproxy", "prepared"))
if h and hp:
    print(f"heliosproxy prepared/simple TPS {hp[0]/hp[3]/(h[0]/h[3]):.3f}")
EOF
