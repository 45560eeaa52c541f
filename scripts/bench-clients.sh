#!/usr/bin/env bash
# Many clients over few server connections (issue 20): PgBouncer (Debian's) and heliosproxy with
# one and with two shards, side by side in one run, on a scratch PostgreSQL:
#  1. memory: RSS of each proxy before and after N idle, logged-in clients
#     (scripts/idle-clients.py), per client in KiB, and the proxy's CPU while they sit idle;
#  2. load: pgbench -S (simple) with ACTIVE clients over a pool of POOL, alternating targets:
#     TPS and proxy CPU µs per transaction, ratios against PgBouncer.
#
#   scripts/bench-clients.sh                    # N=10000 idle, ACTIVE=1000, POOL=20
#   N=2000 ACTIVE=500 DURATION=5 scripts/bench-clients.sh
#
# Not a test: print, compare ratios from one run (the VM's speed drifts).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh

N=${N:-10000}
ACTIVE=${ACTIVE:-1000}
POOL=${POOL:-20}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-3}
IDLE_S=${IDLE_S:-10}
TARGET_DIR=${CARGO_TARGET_DIR:-target}

command -v pgbouncer >/dev/null || {
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
}
need=$((N + ACTIVE + 1000))
ulimit -n "$need" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
[ "$(ulimit -n)" -ge $((N + 100)) ] || { echo "open-file limit $(ulimit -n) is too low for N=$N" >&2; exit 1; }
cargo build --release -q -p helios-engine
HELIOS=$TARGET_DIR/release/heliosproxy

WORK=$(mktemp -d /tmp/helios-bench-clients.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  stop_scratch_pg
  rm -rf "$WORK"
}
trap cleanup EXIT

PGUSER=postgres PGPASSWORD=bench-pw PGDB=postgres
export PGPASSWORD
start_scratch_pg "$PGPASSWORD"
pgbench -i -q -s 10 -h 127.0.0.1 -p "$PG_PORT" -U "$PGUSER" "$PGDB" >/dev/null 2>&1

declare -A PORT PID
start_helios() { # NAME CORES
  local port
  port=$(free_port)
  cat >"$WORK/$1.toml" <<EOF
[server]
listen = ["127.0.0.1:$port"]
cores = $2
[limits]
max_client_connections = $((N + ACTIVE + 100))
[admin]
listen = "127.0.0.1:$(free_port)"
[auth]
method = "trust"
[[nodes]]
name = "pg"
host = "127.0.0.1"
port = $PG_PORT
[databases.$PGDB]
pool_mode = "transaction"
pool_size = $POOL
user = "$PGUSER"
password = "$PGPASSWORD"
EOF
  setsid "$HELIOS" --config "$WORK/$1.toml" >"$WORK/$1.log" 2>&1 &
  PID[$1]=$!; PORT[$1]=$port; PIDS+=("$!")
}
start_helios helios-1 1
start_helios helios-2 2

PORT[pgbouncer]=$(free_port)
cat >"$WORK/pgbouncer.ini" <<EOF
[databases]
$PGDB = host=127.0.0.1 port=$PG_PORT dbname=$PGDB user=$PGUSER password=$PGPASSWORD
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = ${PORT[pgbouncer]}
unix_socket_dir =
auth_type = trust
auth_file = $WORK/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = $((N + ACTIVE + 100))
logfile = $WORK/pgbouncer.log
EOF
printf '"%s" ""\n' "$PGUSER" >"$WORK/userlist.txt"
chmod 755 "$WORK"; [ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
setsid ${AS_POSTGRES[@]+"${AS_POSTGRES[@]}"} bash -c "ulimit -n $need; exec pgbouncer $WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 &
sleep 0.3
PID[pgbouncer]=$(pgrep -n -f "pgbouncer $WORK/pgbouncer.ini")
PIDS+=("${PID[pgbouncer]}")
TARGETS="pgbouncer helios-1 helios-2"
for t in $TARGETS; do wait_port "${PORT[$t]}" || { cat "$WORK/$t.log" >&2 2>/dev/null; exit 1; }; done
rss() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status"; }
CLK=$(getconf CLK_TCK)

echo "memory: $N idle clients per target" >&2
for t in $TARGETS; do
  # A first client warms the pools and per-shard state that is not per client.
  psql -X -At -h 127.0.0.1 -p "${PORT[$t]}" -U "$PGUSER" -c "select 1" "$PGDB" >/dev/null
  before=$(rss "${PID[$t]}")
  coproc IDLE { exec python3 scripts/idle-clients.py "${PORT[$t]}" "$N" "$PGUSER" "$PGDB"; }
  read -r ready <&"${IDLE[0]}" || { echo "$t: idle clients failed" >&2; exit 1; }
  sleep 1
  after=$(rss "${PID[$t]}")
  t0=$(proc_cpu_ticks "${PID[$t]}"); sleep "$IDLE_S"; t1=$(proc_cpu_ticks "${PID[$t]}")
  echo >&"${IDLE[1]}"; wait "$IDLE_PID" 2>/dev/null || true
  echo "$t $before $after $((t1 - t0))" >>"$WORK/mem"
  printf '  %-10s %s: RSS %6d -> %6d KiB\n' "$t" "$ready" "$before" "$after" >&2
done

echo "load: pgbench -S -c $ACTIVE over pool $POOL, $ROUNDS rounds" >&2
for r in $(seq 1 "$ROUNDS"); do
  set -- $TARGETS
  for _ in $(seq 2 "$r"); do set -- "${@:2}" "$1"; done
  for t in "$@"; do
    b=$(proc_cpu_ticks "${PID[$t]}")
    out=$(pgbench -n -S -M simple -c "$ACTIVE" -j 2 -T "$DURATION" -h 127.0.0.1 -p "${PORT[$t]}" -U "$PGUSER" "$PGDB" 2>&1) ||
      { echo "$out" | tail -5 >&2; echo "pgbench through $t failed" >&2; exit 1; }
    a=$(proc_cpu_ticks "${PID[$t]}")
    tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
    txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
    lat=$(echo "$out" | sed -n 's/^latency average = \([0-9.]*\) ms/\1/p')
    echo "$t $tps $txns $((a - b)) $lat" >>"$WORK/load"
    printf '  %-10s %9.0f tps  latency avg %s ms\n' "$t" "$tps" "$lat" >&2
  done
done

echo
echo "idle clients: N=$N; load: pgbench -S -M simple -c $ACTIVE -T $DURATION x $ROUNDS, pool $POOL, transaction mode"
python3 - "$WORK/mem" "$WORK/load" "$N" "$CLK" "$IDLE_S" <<'EOF'
import sys, collections
mem, load, n, clk, idle_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"{'target':<10} {'KiB/idle client':>16} {'idle CPU %':>11} {'tps':>9} {'x pgbouncer':>12} {'µs CPU/txn':>11} {'x pgbouncer':>12}")
m = {l.split()[0]: l.split()[1:] for l in open(mem)}
agg = collections.defaultdict(lambda: [0.0, 0, 0, 0])
for t, tps, txns, ticks, _lat in (l.split() for l in open(load)):
    a = agg[t]; a[0] += float(tps); a[1] += int(txns); a[2] += int(ticks); a[3] += 1
b = agg["pgbouncer"]
btps, bcpu = b[0] / b[3], b[2] * 1e6 / clk / b[1]
for t in ("pgbouncer", "helios-1", "helios-2"):
    before, after, ticks = map(int, m[t])
    a = agg[t]; tps = a[0] / a[3]; cpu = a[2] * 1e6 / clk / a[1]
    print(f"{t:<10} {(after - before) / n:>16.2f} {ticks * 100 / clk / idle_s:>11.2f} {tps:>9.0f} {tps / btps:>12.3f} {cpu:>11.1f} {cpu / bcpu:>12.3f}")
EOF
