#!/usr/bin/env bash
# The demo: builds heliosproxy, starts a scratch PostgreSQL (or uses $DATABASE_URL, given as
# postgres://USER:PASS@HOST:PORT/DB), puts the proxy in front of it in transaction mode, and runs
# pgbench -S through it for 10 s, printing TPS and latency.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres_packages
cargo build --release -q -p helios-engine

WORK=$(mktemp -d /tmp/helios-demo.XXXXXX)
cleanup() { [ -n "${HP_PID:-}" ] && kill "$HP_PID" 2>/dev/null; stop_scratch_pg; rm -rf "$WORK"; }
trap cleanup EXIT

if [ -n "${DATABASE_URL:-}" ]; then
  URL=$DATABASE_URL
else
  start_scratch_pg demo-pw
  URL="postgres://postgres:demo-pw@127.0.0.1:$PG_PORT/postgres"
  echo "scratch PostgreSQL on 127.0.0.1:$PG_PORT"
fi
rest=${URL#*://}; USER_=${rest%%:*}; rest=${rest#*:}; export PGPASSWORD=${rest%%@*}
rest=${rest#*@}; rest=${rest#*/}; DB=${rest%%\?*}

PORT=$(free_port)
target/release/heliosproxy --upstream "$URL" --listen "127.0.0.1:$PORT" --cores 1 \
  --pool-mode transaction --pool-size 10 >"$WORK/heliosproxy.log" 2>&1 &
HP_PID=$!
wait_port "$PORT"
echo "heliosproxy on 127.0.0.1:$PORT (log: $WORK/heliosproxy.log)"
pgbench -i -q -s 1 -h 127.0.0.1 -p "$PORT" -U "$USER_" "$DB" >/dev/null 2>&1
echo "pgbench -S -c 20 -j 2 -T 10 through heliosproxy:"
pgbench -n -S -c 20 -j 2 -T 10 -h 127.0.0.1 -p "$PORT" -U "$USER_" "$DB" 2>&1 \
  | grep -E '^(number of transactions actually|number of failed|latency|tps)'
