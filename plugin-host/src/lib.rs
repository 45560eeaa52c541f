//! HeliosProxy WASM plugin host: the only crate that links wasmtime.
//!
//! Threads and ownership (see `docs/plugin-abi.md` for the guest-facing contract):
//!
//! - [`PluginRuntime`] (`Send + Sync`, built once at start-up from a
//!   [`PluginsConfig`](helios_config::plugins::PluginsConfig)) verifies and compiles plugins, owns
//!   the wasmtime `Engine` (pooling allocator, epoch interruption), the epoch ticker thread, the
//!   on-disk cache of compiled modules and the KV master thread. Reload builds a new *generation*
//!   of plugins and publishes it with one atomic store.
//! - [`ShardPlugins`] (`!Send`, one per shard thread) holds one `Store` + `Instance` per plugin,
//!   reused across calls, and a full local replica of the plugins' KV. Its hook methods take no
//!   lock: they check the generation with one atomic load, serialise the context once per hook
//!   and call each plugin in order.
//! - The admin thread uses [`PluginRuntime`]'s KV API (`kv_get`/`kv_put`/`kv_delete`/`kv_list`)
//!   and [`PluginRuntime::reload`].

pub mod artefact;
pub mod context;
mod imports;
pub mod kv;
mod runtime;
mod shard;
pub mod trust;

pub use context::{
    AuthDecision, Blocked, HookContext, Outcome, PreQueryDecision, QueryContext, RouteDecision,
    EMPTY_ATTRIBUTES,
};
pub use helios_plugin_abi::{Hook, Identity};
pub use kv::KvError;
pub use runtime::{
    LoadError, LoadReport, PluginInfo, PluginRuntime, Refusal, RuntimeError, RuntimeOptions,
};
pub use shard::{PluginStats, ShardPlugins};

/// SQLSTATE of the ErrorResponse a plugin block produces (`syntax_error_or_access_rule_violation`).
pub const BLOCK_SQLSTATE: &str = "42000";
/// SQLSTATE of the ErrorResponse an `authenticate` deny produces (`invalid_authorization_specification`).
pub const AUTH_DENY_SQLSTATE: &str = "28000";

// The runtime is shared by the admin thread and every shard.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<PluginRuntime>();
};
