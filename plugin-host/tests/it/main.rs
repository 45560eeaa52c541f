//! Integration tests of the plugin host against the real guest plugins in `plugins/examples`
//! (built by `scripts/build-plugins.sh` into `target/plugins/`). One test binary so wasmtime is
//! linked once.

mod artefacts;
mod common;
mod config_keys;
mod hooks;
mod hostile;
mod kv;
mod limits;
mod wasi;
