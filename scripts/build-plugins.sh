#!/usr/bin/env bash
# Builds the guest plugins (plugins/, its own cargo workspace) in release mode and copies each
# example to target/plugins/<name>.wasm under the repository root, where the plugin-host tests and
# benchmarks look for them (override with HELIOS_PLUGIN_WASM_DIR). Plugins build for
# wasm32-unknown-unknown, except those listed in WASIP1 below, which build for wasm32-wasip1
# (WASI preview 1: std's clocks, random numbers and stdout work there; the host grants nothing
# else).
#
#   scripts/build-plugins.sh            # build all
#   scripts/build-plugins.sh --test     # also run the SDK's and examples' native unit tests
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out="${HELIOS_PLUGIN_WASM_DIR:-$root/target/plugins}"
# The guest build has its own target dir so it never contends with the host build's lock.
export CARGO_TARGET_DIR="${HELIOS_PLUGIN_TARGET_DIR:-$root/target/wasm-guest}"

# Crates built for wasm32-wasip1 (the rest: wasm32-unknown-unknown).
WASIP1=(wasi-std)

if command -v rustup >/dev/null 2>&1; then
    for t in wasm32-unknown-unknown wasm32-wasip1; do
        if ! rustup target list --installed | grep -qx "$t"; then
            rustup target add "$t"
        fi
    done
fi

cd "$root/plugins"
if [[ "${1:-}" == "--test" ]]; then
    cargo test --workspace
fi
exclude=()
wasi_pkgs=()
for p in "${WASIP1[@]}"; do
    exclude+=(--exclude "$p")
    wasi_pkgs+=(-p "$p")
done
cargo build --release --target wasm32-unknown-unknown --workspace "${exclude[@]}"
cargo build --release --target wasm32-wasip1 "${wasi_pkgs[@]}"

is_wasip1() {
    local n
    for n in "${WASIP1[@]}"; do [[ "$n" == "$1" ]] && return 0; done
    return 1
}

mkdir -p "$out"
# The examples and the first-party plugins (every cdylib crate directly under plugins/).
for dir in examples/*/ */; do
    grep -q cdylib "$dir/Cargo.toml" 2>/dev/null || continue
    name="$(basename "$dir")"
    crate="${name//-/_}"
    target=wasm32-unknown-unknown
    if is_wasip1 "$name"; then target=wasm32-wasip1; fi
    cp "$CARGO_TARGET_DIR/$target/release/$crate.wasm" "$out/$name.wasm"
    echo "built $out/$name.wasm ($target, $(wc -c <"$out/$name.wasm") bytes)"
done
