#!/usr/bin/env bash
# The test command (README): installs what the suite needs if missing, builds the WASM guest
# plugins, then runs every test of the workspace against real PostgreSQL servers that the tests
# start themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres_packages
need=()
command -v openssl >/dev/null || need+=(openssl)
command -v promtool >/dev/null || need+=(prometheus)   # promtool checks /metrics
command -v prlimit >/dev/null || need+=(util-linux)
/usr/bin/python3 -c 'import psycopg2' 2>/dev/null || need+=(python3-psycopg2)   # a libpq driver over TLS (engine/tests/tls.rs)
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
# The dashboard's browser test (engine/tests/dashboard.rs): chromium and playwright-core.
ensure_ui_test_deps
# The admin API fuzzed from its OpenAPI document (engine/tests/api_fuzz.rs): schemathesis.
ensure_api_fuzz_deps
# psycopg 3 and asyncpg over TLS through the proxy (engine/tests/tls.rs).
ensure_py_driver_deps
if [ -x scripts/build-plugins.sh ]; then
  rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
  scripts/build-plugins.sh
fi
cargo test --workspace "$@"
# The engine's integration suite again on glommio's sockets (the io_uring ring is the default),
# so both socket backends stay tested.
HELIOS_TEST_IO_BACKEND=glommio cargo test -p helios-engine --tests "$@"
