#!/usr/bin/env bash
# The admin dashboard in a real browser: installs chromium and playwright-core if missing, builds
# the guest plugins the test loads, then runs engine/tests/dashboard.rs (a proxy with real
# PostgreSQL, driven by admin/ui-test/dashboard.test.mjs). Screenshots: target/ui-test/*.png.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_postgres_packages
ensure_ui_test_deps
[ -f target/plugins/block-drop.wasm ] || scripts/build-plugins.sh
cargo test -p helios-engine --test dashboard "$@"
echo "screenshots: $(ls target/ui-test/*.png | tr '\n' ' ')"
