#!/usr/bin/env bash
# Builds the guest plugins (plugins/, its own cargo workspace) for wasm32-unknown-unknown in
# release mode and copies each example and first-party plugin to target/plugins/<name>.wasm under the repository root,
# where the plugin-host tests and benchmarks look for them (override with HELIOS_PLUGIN_WASM_DIR).
#
#   scripts/build-plugins.sh            # build all
#   scripts/build-plugins.sh --test     # also run the SDK's and examples' native unit tests
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${HELIOS_PLUGIN_WASM_DIR:-$root/target/plugins}"
# The guest build has its own target dir so it never contends with the host build's lock.
export CARGO_TARGET_DIR="${HELIOS_PLUGIN_TARGET_DIR:-$root/target/wasm-guest}"

if command -v rustup >/dev/null 2>&1; then
    if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
        rustup target add wasm32-unknown-unknown
    fi
fi

cd "$root/plugins"
if [[ "${1:-}" == "--test" ]]; then
    cargo test --workspace
fi
cargo build --release --target wasm32-unknown-unknown --workspace

mkdir -p "$out"
# The examples and the first-party plugins (every cdylib crate directly under plugins/).
for dir in examples/*/ */; do
    grep -q cdylib "$dir/Cargo.toml" 2>/dev/null || continue
    name="$(basename "$dir")"
    crate="${name//-/_}"
    cp "$CARGO_TARGET_DIR/wasm32-unknown-unknown/release/$crate.wasm" "$out/$name.wasm"
    echo "built $out/$name.wasm ($(wc -c <"$out/$name.wasm") bytes)"
done
