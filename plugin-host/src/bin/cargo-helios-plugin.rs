//! `cargo helios-plugin …`: the `helios-plugin` commands as a cargo subcommand, so a plugin
//! author signs from the crate directory:
//!
//! ```sh
//! cargo helios-plugin sign --key signing.pem --input target/wasm32-wasip1/release/my_plugin.wasm
//! ```
//!
//! writes `my_plugin.sig` beside the module: base64 of the Ed25519 signature of the wasm bytes,
//! no newline, byte for byte what `openssl pkeyutl -sign -rawin -inkey signing.pem -in
//! my_plugin.wasm | base64 -w 0` writes (Ed25519 is deterministic). Cargo runs the binary as
//! `cargo-helios-plugin helios-plugin sign …`; run directly, the extra word may be left out.

use std::ffi::OsString;
use std::process::ExitCode;

#[path = "helios-plugin.rs"]
mod cli;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().collect();
    if args.get(1).is_some_and(|a| a == "helios-plugin") {
        args.remove(1);
    }
    if let Some(first) = args.first_mut() {
        *first = "cargo helios-plugin".into();
    }
    cli::main_with("cargo helios-plugin", args)
}
