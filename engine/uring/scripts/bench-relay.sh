#!/usr/bin/env bash
# CPU per transaction of the example relay (examples/relay.rs) in both modes, under pgbench -S,
# against a scratch PostgreSQL 15. Prints TPS and the relay's CPU µs per transaction, which is
# (utime + stime from /proc/<pid>/stat) / pgbench's transaction count.
#
#   engine/uring/scripts/bench-relay.sh            # 50 clients, 15 s, 3 rounds, scale 10
#   CLIENTS=10 DURATION=10 ROUNDS=1 engine/uring/scripts/bench-relay.sh
#
# Everything shares this machine's cores (PostgreSQL, pgbench, the relay): compare modes from one
# run, not across runs. The relay runs on one glommio executor pinned to CPU ${RELAY_CPU:-0}.
set -euo pipefail
cd "$(dirname "$0")/../../.."
CLIENTS=${CLIENTS:-50}
DURATION=${DURATION:-15}
ROUNDS=${ROUNDS:-3}
SCALE=${SCALE:-10}
RELAY_CPU=${RELAY_CPU:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
TARGET=${CARGO_TARGET_DIR:-target}

cargo build --release -q -p helios-uring --example relay
BIN=$TARGET/release/examples/relay

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
WORK=$(mktemp -d /tmp/uring-bench.XXXXXX)
chown postgres "$WORK"
RELAY_PID=
cleanup() {
  [ -n "$RELAY_PID" ] && kill "$RELAY_PID" 2>/dev/null || true
  runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -m immediate stop >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

PG_PORT=$(free_port)
runuser -u postgres -- "$PGBIN/initdb" -D "$WORK/data" -A trust -U postgres >/dev/null
runuser -u postgres -- "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/pg.log" -w \
  -o "-p $PG_PORT -k $WORK -c listen_addresses=127.0.0.1 -c max_connections=200 -c fsync=off" start >/dev/null
pgbench -i -q -s "$SCALE" -h 127.0.0.1 -p "$PG_PORT" -U postgres postgres >/dev/null 2>&1

ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
HZ=$(getconf CLK_TCK)

bench() { # port -> prints "tps txns"
  pgbench -n -S -c "$CLIENTS" -j 2 -T "$DURATION" -h 127.0.0.1 -p "$1" -U postgres postgres 2>/dev/null |
    awk '/number of transactions actually processed/ {n=$NF; sub("/.*","",n)} /^tps/ {t=$3} END {print t, n}'
}

run_mode() { # mode
  local port; port=$(free_port)
  "$BIN" --listen "127.0.0.1:$port" --upstream "127.0.0.1:$PG_PORT" --mode "$1" --cpu "$RELAY_CPU" \
    --stats-every-s 1 >"$WORK/relay-$1.log" 2>&1 &
  RELAY_PID=$!
  local deadline=$((SECONDS + 20))
  until pg_isready -q -h 127.0.0.1 -p "$port"; do
    [ $SECONDS -lt $deadline ] || { echo "relay ($1) did not come up" >&2; cat "$WORK/relay-$1.log" >&2; exit 1; }
    kill -0 "$RELAY_PID" || { cat "$WORK/relay-$1.log" >&2; exit 1; }
    sleep 0.1
  done
  local t0; t0=$(ticks "$RELAY_PID")
  read -r tps n < <(bench "$port")
  local t1; t1=$(ticks "$RELAY_PID")
  kill "$RELAY_PID"; wait "$RELAY_PID" 2>/dev/null || true; RELAY_PID=
  awk -v m="$1" -v tps="$tps" -v n="$n" -v d=$((t1 - t0)) -v hz="$HZ" \
    'BEGIN {printf "%-8s tps %9.0f  relay CPU %6.1f us/txn  (%d txns)\n", m, tps, d / hz * 1e6 / n, n}'
  # The ring's counters (cumulative, logged every second) per transaction.
  [ "$1" = uring ] || return 0
  grep -o 'RingStats.*' "$WORK/relay-$1.log" | tail -1 | awk -v n="$n" '{
    for (i = 1; i <= NF; i++) { k = $i; sub(":", "", k); v = $(i + 1); sub(",", "", v); c[k] = v }
    printf "         per txn: %.3f io_uring_enter, %.3f parks, %.2f completions, %.2f sends\n",
      c["enters"] / n, c["parks"] / n, c["completions"] / n, c["sends"] / n }'
}

echo "pgbench -S -c $CLIENTS -j 2 -T $DURATION, scale $SCALE; relay pinned to CPU $RELAY_CPU"
for r in $(seq "$ROUNDS"); do
  read -r tps n < <(bench "$PG_PORT")
  printf "%-8s tps %9.0f\n" direct "$tps"
  run_mode uring
  run_mode glommio
done
