#!/usr/bin/env bash
# The admin API fuzzed from its OpenAPI document with schemathesis (engine/tests/api_fuzz.rs):
# installs schemathesis into target/api-fuzz-venv if missing, then runs the test.
# HELIOS_API_FUZZ_EXAMPLES=N (default 40) sets the examples per operation.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres_packages
ensure_api_fuzz_deps
[ -f target/plugins/block-drop.wasm ] || scripts/build-plugins.sh
cargo test -p helios-engine --test api_fuzz "$@"
