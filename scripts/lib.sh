# Shared helpers for scripts/demo.sh and scripts/bench.sh. Source it; it defines functions only.
#
# A scratch PostgreSQL cluster is created from the system binaries under a temp directory, run
# as the `postgres` OS user when we are root (initdb refuses root), on a port the OS picked.

PG_BINDIR=${PG_BINDIR:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# The prefix that runs a command as postgres (initdb refuses root); empty when not root.
AS_POSTGRES=()
[ "$(id -u)" = 0 ] && AS_POSTGRES=(runuser -u postgres --)
as_postgres() {
  ${AS_POSTGRES[@]+"${AS_POSTGRES[@]}"} "$@"
}

wait_port() { # port [seconds]
  local port=$1 secs=${2:-30} i=0
  while ! (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; do
    i=$((i + 1))
    if [ "$i" -gt $((secs * 10)) ]; then echo "nothing listens on $port" >&2; return 1; fi
    sleep 0.1
  done
}

ensure_postgres_packages() {
  if [ -z "$PG_BINDIR" ] || ! command -v pgbench >/dev/null || ! command -v psql >/dev/null; then
    echo "installing PostgreSQL (apt-get)…" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql postgresql-contrib >/dev/null
    PG_BINDIR=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n1)
  fi
}

# start_scratch_pg PASSWORD → sets PG_DIR, PG_PORT; stop it with stop_scratch_pg.
start_scratch_pg() {
  local pw=$1
  ensure_postgres_packages
  PG_DIR=$(mktemp -d /tmp/helios-scratch-pg.XXXXXX)
  PG_PORT=$(free_port)
  printf '%s' "$pw" >"$PG_DIR/pw"
  [ "$(id -u)" = 0 ] && chown -R postgres:postgres "$PG_DIR"
  as_postgres "$PG_BINDIR/initdb" -D "$PG_DIR/data" -U postgres --auth=scram-sha-256 \
    --pwfile="$PG_DIR/pw" --no-sync -E UTF8 --locale=C >/dev/null
  cat >>"$PG_DIR/data/postgresql.conf" <<EOF
listen_addresses = '127.0.0.1'
port = $PG_PORT
unix_socket_directories = '$PG_DIR'
max_connections = 300
shared_buffers = 256MB
fsync = off
synchronous_commit = off
EOF
  as_postgres "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -l "$PG_DIR/server.log" -w start >/dev/null
}

stop_scratch_pg() {
  if [ -n "${PG_DIR:-}" ] && [ -d "$PG_DIR/data" ]; then
    as_postgres "$PG_BINDIR/pg_ctl" -D "$PG_DIR/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$PG_DIR"
  fi
}

# proc_cpu_ticks PID → utime+stime of the whole process (all threads), in clock ticks.
proc_cpu_ticks() {
  awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# What the dashboard's browser test needs (engine/tests/dashboard.rs): Debian's chromium, node
# and npm, and playwright-core from admin/ui-test's lockfile.
ensure_ui_test_deps() {
  local need=()
  command -v chromium >/dev/null || need+=(chromium)
  command -v node >/dev/null || need+=(nodejs)
  command -v npm >/dev/null || need+=(npm)
  if [ ${#need[@]} -gt 0 ]; then
    echo "installing ${need[*]} (apt-get)…" >&2
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  fi
  local ui
  ui="$(dirname "${BASH_SOURCE[0]}")/../admin/ui-test"
  if [ ! -d "$ui/node_modules/playwright-core" ]; then
    (cd "$ui" && npm ci --no-audit --no-fund --loglevel=error)
  fi
}

# schemathesis (PyPI) in target/api-fuzz-venv, for engine/tests/api_fuzz.rs.
SCHEMATHESIS_VERSION=4.32.5
ensure_api_fuzz_deps() {
  local venv
  venv="$(dirname "${BASH_SOURCE[0]}")/../target/api-fuzz-venv"
  if [ ! -x "$venv/bin/st" ] || ! "$venv/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
  fi
}

# Python drivers (PyPI) in target/py-driver-venv, for engine/tests/tls.rs (psycopg 3 with its
# bundled libpq, and asyncpg, which speaks the protocol itself over Python's ssl module).
PSYCOPG_VERSION=3.2.13
ASYNCPG_VERSION=0.30.0
ensure_py_driver_deps() {
  local venv
  venv="$(dirname "${BASH_SOURCE[0]}")/../target/py-driver-venv"
  if ! "$venv/bin/python" -c "import psycopg, asyncpg, sys; sys.exit(psycopg.__version__ != '$PSYCOPG_VERSION' or asyncpg.__version__ != '$ASYNCPG_VERSION')" 2>/dev/null; then
    if ! python3 -m venv --help >/dev/null 2>&1; then
      apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null
    fi
    rm -rf "$venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q "psycopg[binary]==$PSYCOPG_VERSION" "asyncpg==$ASYNCPG_VERSION"
  fi
}
