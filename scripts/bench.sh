#!/usr/bin/env bash
# pgbench -S against direct PostgreSQL, heliosproxy and PgBouncer, alternating the three in one
# run, printing TPS, the ratios, each proxy's CPU µs per transaction (from /proc) and that of the
# PostgreSQL backends serving it (the pooled backends of the scratch cluster).
#
#   scripts/bench.sh                 # scale 10, 50 clients, pool 20, transaction mode
#   CLIENTS=4 DURATION=10 ROUNDS=3 scripts/bench.sh
#
# Knobs (environment): SCALE (10), CLIENTS (50), POOL (20), DURATION seconds per run (8),
# ROUNDS (5; this VM's speed drifts by ±10 % within minutes, so many short alternations compare
# better than a few long ones), LAT_ROUNDS (3), HELIOS_CORES (auto: one shard per CPU, the
# default of the config; or a number), HELIOS_ALT_CORES (1: a second heliosproxy with this many
# shards takes part in the simple-protocol rounds as `heliosproxy-N`; empty: none), ANOMALY (1: the
# second heliosproxy is instead one with anomaly detection on, and the ratio on/off is printed), MODES ("simple prepared"), DATABASE_URL (use an existing
# server instead of a scratch cluster; it must accept postgres://USER:PASS@HOST:PORT/DB logins).
#
# Latency (after the pgbench table; LATENCY=0 skips it): helios-loadtest, select-only, closed
# loop, at 1 and at 50 clients (LAT_CLIENTS), `--compare direct heliosproxy` and `--compare
# direct pgbouncer` (each -T DURATION per target in alternating slices, LAT_ROUNDS times), printing
# the p50 and p99 each proxy adds over direct, in µs, side by side.
#
# TLS (BENCH_TLS=1): a throwaway CA and a server certificate for localhost / 127.0.0.1 are made
# with openssl; heliosproxy (`[tls]`, mode require, from a config file equivalent to the quick
# start) and PgBouncer (client_tls_sslmode = require, the same key and certificate) serve TLS to
# pgbench, which connects with sslmode=require to all three (the scratch PostgreSQL gets
# ssl = on with the same certificate, so direct is TLS too; an existing DATABASE_URL server is
# reached with sslmode=prefer). Both proxies talk to PostgreSQL in plain text, as without TLS.
# The latency part is skipped (helios-loadtest has no TLS).
#
# PgBouncer (Debian's) is installed with apt if missing. PgBouncer before 1.21 cannot keep
# protocol-level prepared statements in transaction mode, so -M prepared runs only against
# direct and heliosproxy. Everything shares this machine's cores: compare ratios from one run.
set -euo pipefail
# SPLIT=1: the read/write split benchmark instead (a primary and a standby, single vs split).
[ "${SPLIT:-0}" = 1 ] && exec "$(dirname "$0")/bench-split.sh"
cd "$(dirname "$0")/.."
. scripts/lib.sh

SCALE=${SCALE:-10}
CLIENTS=${CLIENTS:-50}
POOL=${POOL:-20}
DURATION=${DURATION:-8}
ROUNDS=${ROUNDS:-5}
LAT_ROUNDS=${LAT_ROUNDS:-3}
HELIOS_CORES=${HELIOS_CORES:-auto}
# One shard is the peer's shape (PgBouncer is one thread), and on this box, where PostgreSQL and
# pgbench share the CPUs, a shard per CPU competes with them for each: both are shown.
HELIOS_ALT_CORES=${HELIOS_ALT_CORES-1}
[ "$HELIOS_ALT_CORES" = "$HELIOS_CORES" ] && HELIOS_ALT_CORES=""
ALT=""
[ -n "$HELIOS_ALT_CORES" ] && ALT="heliosproxy-$HELIOS_ALT_CORES"
# ANOMALY=1: the second heliosproxy is the first one with anomaly detection on (`--anomaly`,
# docs/signal.md), and the summary prints detection on / off.
ALT_ARGS=()
if [ "${ANOMALY:-0}" = 1 ]; then
  HELIOS_ALT_CORES=$HELIOS_CORES; ALT="heliosproxy-anomaly"; ALT_ARGS=(--anomaly)
fi
MODES=${MODES:-simple prepared}
THREADS=${THREADS:-2}
LATENCY=${LATENCY:-1}
LAT_CLIENTS=${LAT_CLIENTS:-1 50}
TARGET_DIR=${CARGO_TARGET_DIR:-target}
BENCH_TLS=${BENCH_TLS:-0}
[ "$BENCH_TLS" = 1 ] && LATENCY=0

command -v pgbouncer >/dev/null || {
  echo "installing pgbouncer (apt-get)…" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq pgbouncer >/dev/null
}
cargo build --release -q -p helios-engine
HELIOS=$TARGET_DIR/release/heliosproxy
if [ "$LATENCY" != 0 ]; then
  cargo build --release -q -p helios-loadtest
  LOADTEST=$TARGET_DIR/release/helios-loadtest
fi

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

# make_certs DIR: a CA, and a server certificate (ECDSA P-256) for localhost and 127.0.0.1.
make_certs() {
  local d=$1
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=helios-bench-ca" -keyout "$d/ca.key" -out "$d/ca.crt" 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=localhost" -keyout "$d/server.key" -out "$d/server.csr" 2>/dev/null
  printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$d/server.ext"
  openssl x509 -req -in "$d/server.csr" -CA "$d/ca.crt" -CAkey "$d/ca.key" -CAcreateserial \
    -days 2 -extfile "$d/server.ext" -out "$d/server.crt" 2>/dev/null
  chmod 600 "$d/server.key"
}
SSLMODE_DIRECT=disable SSLMODE_PROXY=disable
if [ "$BENCH_TLS" = 1 ]; then
  command -v openssl >/dev/null || {
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openssl >/dev/null; }
  make_certs "$WORK"
  SSLMODE_PROXY=require SSLMODE_DIRECT=prefer
  if [ -n "${PG_DIR:-}" ]; then
    cp "$WORK/server.crt" "$WORK/server.key" "$PG_DIR/"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$PG_DIR/server.crt" "$PG_DIR/server.key"
    printf "ssl = on\nssl_cert_file = '%s/server.crt'\nssl_key_file = '%s/server.key'\n" \
      "$PG_DIR" "$PG_DIR" >>"$PG_DIR/data/postgresql.conf"
    as_postgres "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" reload >/dev/null
    SSLMODE_DIRECT=require
    for _ in $(seq 50); do
      PGSSLMODE=require psql -h "$PGHOST" -p "$PG_PORT" -U "$PGUSER" -Atc 'select 1' "$PGDB" >/dev/null 2>&1 && break
      sleep 0.1
    done
  fi
fi

echo "pgbench -i -s $SCALE …" >&2
pgbench -i -q -s "$SCALE" -h "$PGHOST" -p "$PG_PORT" -U "$PGUSER" "$PGDB" >/dev/null 2>&1

# start_helios CORES LOG → starts a heliosproxy, sets STARTED_PORT and STARTED_PID.
# Each proxy runs in a session of its own (setsid), as a service manager would start it: with
# the kernel's autogroup scheduling (on by default) a process sharing pgbench's session also
# shares its CPU share. PostgreSQL's pg_ctl does the same for the server.
start_helios() {
  local cores=() port
  [ "$1" = auto ] || cores=(--cores "$1")
  port=$(free_port)
  if [ "$BENCH_TLS" = 1 ]; then
    # The quick start's settings, as a file, plus [tls].
    local cfg=$2.toml
    printf '"%s" "%s"\n' "$PGUSER" "$PGPASSWORD" >"$WORK/helios-userlist.txt"
    cat >"$cfg" <<EOF
[server]
listen = ["127.0.0.1:$port"]
cores = $([ "$1" = auto ] && echo '"auto"' || echo "$1")
[admin]
listen = "127.0.0.1:$(free_port)"
[auth]
method = "scram-sha-256"
userlist = "$WORK/helios-userlist.txt"
admin_users = ["$PGUSER"]
[tls]
cert = "$WORK/server.crt"
key = "$WORK/server.key"
mode = "require"
[[nodes]]
name = "upstream"
host = "$PGHOST"
port = $PG_PORT
[databases.$PGDB]
user = "$PGUSER"
password = "$PGPASSWORD"
pool_mode = "transaction"
pool_size = $POOL
EOF
    setsid "$HELIOS" --config "$cfg" >"$2" 2>&1 &
    STARTED_PID=$!; STARTED_PORT=$port; PIDS+=("$STARTED_PID")
    return
  fi
  setsid "$HELIOS" --upstream "postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PG_PORT/$PGDB" --listen "127.0.0.1:$port" \
    ${cores[@]+"${cores[@]}"} ${3:+$3} --pool-mode transaction --pool-size "$POOL" --admin-listen "127.0.0.1:$(free_port)" \
    >"$2" 2>&1 &
  STARTED_PID=$!; STARTED_PORT=$port; PIDS+=("$STARTED_PID")
}
start_helios "$HELIOS_CORES" "$WORK/helios.log"
HP_PORT=$STARTED_PORT; HP_PID=$STARTED_PID
ALT_PORT=""; ALT_PID=""
if [ -n "$ALT" ]; then
  start_helios "$HELIOS_ALT_CORES" "$WORK/helios-alt.log" "${ALT_ARGS[*]:-}"
  ALT_PORT=$STARTED_PORT; ALT_PID=$STARTED_PID
fi

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
if [ "$BENCH_TLS" = 1 ]; then
  cat >>"$WORK/pgbouncer.ini" <<EOF
client_tls_sslmode = require
client_tls_key_file = $WORK/server.key
client_tls_cert_file = $WORK/server.crt
server_tls_sslmode = disable
EOF
fi
printf '"%s" "%s"\n' "$PGUSER" "$PGPASSWORD" >"$WORK/userlist.txt"
chmod 755 "$WORK"; [ "$(id -u)" = 0 ] && chown -R postgres "$WORK"
setsid ${AS_POSTGRES[@]+"${AS_POSTGRES[@]}"} pgbouncer "$WORK/pgbouncer.ini" >"$WORK/pgbouncer.out" 2>&1 &
sleep 0.2
PB_PID=$(pgrep -n -f "pgbouncer $WORK/pgbouncer.ini")
PIDS+=("$PB_PID")
wait_port "$HP_PORT"; wait_port "$PB_PORT"
[ -z "$ALT" ] || wait_port "$ALT_PORT"
if [ "$BENCH_TLS" = 1 ]; then
  # What each target negotiates (psql's \conninfo), and that sslmode=disable is refused.
  for t in "direct $PG_PORT $SSLMODE_DIRECT" "heliosproxy $HP_PORT require" "pgbouncer $PB_PORT require"; do
    read -r name port mode <<<"$t"
    info=$(PGSSLMODE=$mode psql -h 127.0.0.1 -p "$port" -U "$PGUSER" -X -c '\conninfo' "$PGDB" 2>&1 |
      sed -n 's/^SSL connection (\(.*\))$/\1/p')
    echo "  TLS to $name: ${info:-none}" >&2
  done
  if PGSSLMODE=disable psql -h 127.0.0.1 -p "$HP_PORT" -U "$PGUSER" -Atc 'select 1' "$PGDB" >/dev/null 2>&1; then
    echo "heliosproxy accepted sslmode=disable with tls.mode = require" >&2; exit 1
  fi
fi

# CPU ticks of the scratch cluster's backends alive now (the pooled ones live through a run;
# direct connections' backends exit with pgbench, so this is only reported for the proxies).
PM_PID=""
[ -n "${PG_DIR:-}" ] && PM_PID=$(head -1 "$PG_DIR/data/postmaster.pid")
pg_ticks() {
  local s=0 p v
  [ -n "$PM_PID" ] || { echo 0; return; }
  for p in $(pgrep -P "$PM_PID"); do
    v=$(proc_cpu_ticks "$p" 2>/dev/null) || v=0
    s=$((s + ${v:-0}))
  done
  echo "$s"
}

CLK=$(getconf CLK_TCK)
# run TARGET MODE → appends "target mode tps txns cpu_ticks pg_ticks" to $WORK/results
run() {
  local target=$1 mode=$2 port pid="" before=0 after=0 out
  case $target in
    direct) port=$PG_PORT ;;
    heliosproxy) port=$HP_PORT; pid=$HP_PID ;;
    "$ALT") port=$ALT_PORT; pid=$ALT_PID ;;
    pgbouncer) port=$PB_PORT; pid=$PB_PID ;;
  esac
  [ -n "$pid" ] && before=$(proc_cpu_ticks "$pid")
  local pg_before pg_after
  pg_before=$(pg_ticks)
  local sslmode=$SSLMODE_PROXY
  [ "$target" = direct ] && sslmode=$SSLMODE_DIRECT
  out=$(PGSSLMODE=$sslmode pgbench -n -S -M "$mode" -c "$CLIENTS" -j "$THREADS" -T "$DURATION" -h 127.0.0.1 -p "$port" -U "$PGUSER" "$PGDB" 2>&1) || {
    echo "$out" >&2; echo "pgbench against $target failed" >&2; exit 1; }
  [ -n "$pid" ] && after=$(proc_cpu_ticks "$pid")
  pg_after=$(pg_ticks)
  local tps txns failed
  tps=$(echo "$out" | sed -n 's/^tps = \([0-9.]*\).*/\1/p')
  txns=$(echo "$out" | sed -n 's/^number of transactions actually processed: \([0-9]*\).*/\1/p')
  failed=$(echo "$out" | sed -n 's/^number of failed transactions: \([0-9]*\).*/\1/p')
  [ "${failed:-0}" = 0 ] || { echo "$out" >&2; echo "$target: $failed failed transactions" >&2; exit 1; }
  echo "$target $mode $tps $txns $((after - before)) $((pg_after - pg_before))" >>"$WORK/results"
  local cpu="-"
  [ -n "$pid" ] && [ "${txns:-0}" -gt 0 ] && cpu=$(awk -v t=$((after - before)) -v n="$txns" -v c="$CLK" 'BEGIN { printf "%.1f", t * 1e6 / c / n }')
  printf '  %-14s %-9s %10.0f tps  %5s us/txn\n' "$target" "$mode" "$tps" "$cpu" >&2
}

for mode in $MODES; do
  for r in $(seq 1 "$ROUNDS"); do
    echo "round $r/$ROUNDS, -M $mode" >&2
    # The proxies take turns at running right after direct (whose 50 backends exit as it ends).
    targets="heliosproxy"
    if [ "$mode" = simple ]; then
      set -- heliosproxy $ALT pgbouncer
      for _ in $(seq 2 "$r"); do set -- "${@:2}" "$1"; done
      targets="$*"
    fi
    run direct "$mode"
    for t in $targets; do run "$t" "$mode"; done
  done
done

echo
TLS_NOTE=""
[ "$BENCH_TLS" = 1 ] && TLS_NOTE=", client TLS: sslmode=$SSLMODE_PROXY to the proxies, $SSLMODE_DIRECT to direct"
echo "pgbench -S -c $CLIENTS -j $THREADS -T $DURATION x $ROUNDS rounds, scale $SCALE, pool $POOL (transaction mode), heliosproxy cores=$HELIOS_CORES${ALT:+, $ALT cores=$HELIOS_ALT_CORES}$TLS_NOTE"
python3 - "$WORK/results" "$CLK" "$ALT" <<'EOF'
import sys, collections
rows = [l.split() for l in open(sys.argv[1])]
clk = int(sys.argv[2])
alt = sys.argv[3]
agg = collections.defaultdict(lambda: [0.0, 0, 0, 0, 0])
for t, m, tps, txns, ticks, pg in rows:
    a = agg[(t, m)]
    a[0] += float(tps); a[1] += int(txns); a[2] += int(ticks); a[3] += 1; a[4] += int(pg)
print(f"{'mode':<9} {'target':<14} {'tps':>10} {'vs direct':>10} {'vs pgbouncer':>13} {'cpu us/txn':>11} {'pg us/txn':>10}")
for m in dict.fromkeys(k[1] for k in agg):
    d = agg.get(("direct", m)); b = agg.get(("pgbouncer", m))
    for t in ("direct", "heliosproxy", alt, "pgbouncer"):
        a = agg.get((t, m))
        if not a: continue
        tps = a[0] / a[3]
        vd = f"{tps / (d[0]/d[3]):.3f}" if d else "-"
        vb = f"{tps / (b[0]/b[3]):.3f}" if b else "-"
        cpu = f"{a[2] * 1e6 / clk / a[1]:.1f}" if t != "direct" and a[1] else "-"
        pg = f"{a[4] * 1e6 / clk / a[1]:.1f}" if t != "direct" and a[1] and a[4] else "-"
        print(f"{m:<9} {t:<14} {tps:>10.0f} {vd:>10} {vb:>13} {cpu:>11} {pg:>10}")
h = agg.get(("heliosproxy", "simple")); b = agg.get(("pgbouncer", "simple"))
print()
for t in ("heliosproxy", alt):
    x = agg.get((t, "simple"))
    if x and b and x[1] and b[1]:
        print(f"simple: {t}/pgbouncer TPS {x[0]/x[3]/(b[0]/b[3]):.3f}, CPU per txn {(x[2]/x[1])/(b[2]/b[1]):.3f}")
an = agg.get(("heliosproxy-anomaly", "simple"))
if h and an:
    print(f"anomaly detection on/off: TPS {an[0]/an[3]/(h[0]/h[3]):.3f}, CPU per txn {(an[2]/an[1])/(h[2]/h[1]):.3f}")
hp = agg.get(("heliosproxy", "prepared"))
if h and hp:
    print(f"heliosproxy prepared/simple TPS {hp[0]/hp[3]/(h[0]/h[3]):.3f}")
EOF

[ "$LATENCY" = 0 ] && exit 0

# --- latency: what each proxy adds to a query, measured against direct in alternating slices ---
# lat PROXY CLIENTS ROUND → helios-loadtest --compare direct PROXY, JSON in $WORK/lat-*.json
lat() {
  local target=$1 clients=$2 round=$3 port
  case $target in
    heliosproxy) port=$HP_PORT ;;
    pgbouncer) port=$PB_PORT ;;
  esac
  local json="$WORK/lat-$target-$clients-$round.json"
  "$LOADTEST" -b select-only -M simple -c "$clients" -T "$DURATION" --warmup 1 -P 0 \
    --compare "postgres://$PGUSER:$PGPASSWORD@$PGHOST:$PG_PORT/$PGDB" \
    "postgres://$PGUSER:$PGPASSWORD@127.0.0.1:$port/$PGDB" --json "$json" >"$WORK/lat.out" 2>&1 || {
    cat "$WORK/lat.out" >&2; echo "helios-loadtest against $target failed" >&2; exit 1; }
  python3 - "$json" "$target" "$clients" >&2 <<'EOF'
import json, sys
r = json.load(open(sys.argv[1])); c = r["comparison"]
errors = [t["errors"] for t in r["targets"] if t["errors"]]
if errors: sys.exit(f"{sys.argv[2]}: errors during the latency run: {errors}")
print(f"  {sys.argv[2]:<12} c={sys.argv[3]:<3} p50 {c['p50_added_us']:+.1f} µs, p99 {c['p99_added_us']:+.1f} µs vs direct")
EOF
}

echo >&2
for r in $(seq 1 "$LAT_ROUNDS"); do
  echo "latency round $r/$LAT_ROUNDS (helios-loadtest --compare, -T $DURATION s per target)" >&2
  for c in $LAT_CLIENTS; do
    lat heliosproxy "$c" "$r"
    lat pgbouncer "$c" "$r"
  done
done

echo
echo "latency added over direct PostgreSQL in µs: helios-loadtest -b select-only -M simple, closed loop, -T $DURATION per target in alternating slices, mean of $LAT_ROUNDS round(s)"
python3 - "$WORK" "$LAT_CLIENTS" <<'EOF'
import glob, json, os, sys, collections
work, clients = sys.argv[1], sys.argv[2].split()
acc = collections.defaultdict(list)
for f in glob.glob(os.path.join(work, "lat-*.json")):
    _, target, c, _ = os.path.basename(f)[:-len(".json")].split("-")
    r = json.load(open(f)); cmp = r["comparison"]; d = r["targets"][0]["latency"]
    acc[(target, c)].append((cmp["p50_added_us"], cmp["p99_added_us"], d["p50_us"], d["p99_us"]))
avg = lambda xs, i: sum(x[i] for x in xs) / len(xs)
print(f"{'clients':>7} {'direct p50':>10} {'direct p99':>10} | {'heliosproxy +p50':>16} {'+p99':>8} | {'pgbouncer +p50':>14} {'+p99':>8}")
for c in clients:
    h, b = acc.get(("heliosproxy", c)), acc.get(("pgbouncer", c))
    if not h or not b: continue
    d = h + b  # direct ran next to each proxy: both runs count
    print(f"{c:>7} {avg(d, 2):>10.1f} {avg(d, 3):>10.1f} | {avg(h, 0):>+16.1f} {avg(h, 1):>+8.1f} | {avg(b, 0):>+14.1f} {avg(b, 1):>+8.1f}")
EOF
