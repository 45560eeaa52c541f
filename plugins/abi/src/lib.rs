//! HeliosProxy plugin SDK (`helios-plugin-abi`), ABI version 1.1.
//!
//! A plugin is a `cdylib` built for `wasm32-unknown-unknown` or `wasm32-wasip1` (then `std`'s
//! clocks, random numbers and `HashMap` work; files, environment and network do not). It writes
//! ordinary Rust functions over typed contexts and results and marks each with an attribute:
//!
//! ```ignore
//! use helios_plugin_abi::*;
//!
//! #[hook(PreQuery)]
//! fn check(ctx: &QueryContext) -> PreQueryResult {
//!     if ctx.query.to_ascii_uppercase().contains("DROP TABLE") {
//!         return PreQueryResult::Block { reason: "DROP TABLE is forbidden".into() };
//!     }
//!     PreQueryResult::Continue
//! }
//! ```
//!
//! `#[hook(Route)]`, `#[hook(PostQuery)]` and `#[hook(Authenticate)]` work the same way; the
//! macros `export_pre_query!(check);` … are the equivalent older spelling.
//!
//! The SDK provides the `alloc`/`dealloc` exports, the JSON encoding of inputs and results, and
//! safe wrappers over the host imports ([`kv_read`], [`kv_write`], [`kv_remove`],
//! [`sha256_digest_hex`], [`now_unix_ms`]); plugin code never touches a raw pointer. The host
//! (`helios-plugin-host`) depends on this crate for the very same types, so what the SDK emits is
//! by construction what the host reads. The wire format is specified in `docs/plugin-abi.md`.
//!
//! Outside wasm (a plugin's own unit tests on a developer machine) the host imports are emulated
//! in process: KV is a thread-local map and SHA-256 comes from the `sha2` crate.

use serde::{Deserialize, Serialize};
use std::borrow::Cow;

/// `#[hook(PreQuery)]` / `#[hook(Route)]` / `#[hook(PostQuery)]` / `#[hook(Authenticate)]`:
/// exports the function it marks as that hook (see the crate documentation).
#[cfg(feature = "macros")]
pub use helios_plugin_abi_macros::hook;
use std::collections::BTreeMap;

/// The ABI version this crate implements (`docs/plugin-abi.md`). Manifests carry
/// `schema_version` of the same major.
pub const ABI_VERSION: &str = "1.1";

/// The reason used when a plugin blocks without saying why.
pub const DEFAULT_BLOCK_REASON: &str = "blocked by plugin";

fn default_block_reason() -> String {
    DEFAULT_BLOCK_REASON.to_owned()
}

// ---------------------------------------------------------------------------------------------
// Inputs (host → guest)
// ---------------------------------------------------------------------------------------------

/// Who is asking: one per client session, with the `request_id` of the current query.
///
/// Strings borrow from the input buffer when they contain no JSON escape, so decoding a context
/// costs few allocations inside the guest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HookContext<'a> {
    /// Identifies one query; every hook of that query (pre_query, route, post_query) sees the
    /// same value.
    pub request_id: u64,
    /// Identifies the client connection for its lifetime.
    pub client_id: u64,
    /// The identity established by an `authenticate` plugin, if any.
    #[serde(default)]
    pub identity: Option<Identity>,
    /// The database named in the startup message.
    #[serde(borrow, default)]
    pub database: Cow<'a, str>,
    /// The user named in the startup message.
    #[serde(borrow, default)]
    pub user: Cow<'a, str>,
    /// The client's `application_name` (startup parameter or `SET`).
    #[serde(borrow, default)]
    pub application_name: Cow<'a, str>,
    /// The client's IP address as text; `None` for Unix-socket clients.
    #[serde(default)]
    pub client_ip: Option<String>,
    /// What earlier hooks and the session established: `helios.user_id`, `helios.roles`
    /// (comma-separated), `helios.tenant_id` and the identity's attributes after an
    /// `authenticate` plugin allowed the session, and every `SET helios.<name> = …` of the
    /// session under `helios.<name>`.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

/// Input of `pre_query` and `route`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct QueryContext<'a> {
    /// The SQL text as the client sent it (after the rewrites of earlier plugins in the chain).
    #[serde(borrow)]
    pub query: Cow<'a, str>,
    /// The query with literals replaced by placeholders (the fingerprint text).
    #[serde(borrow, default)]
    pub normalized: Cow<'a, str>,
    /// Tables the query references, as written (schema-qualified when the query qualifies them).
    #[serde(borrow, default)]
    pub tables: Vec<Cow<'a, str>>,
    /// True when the proxy classified the statement as read-only.
    #[serde(default)]
    pub is_read_only: bool,
    /// Session and request identity.
    #[serde(borrow)]
    pub hook_context: HookContext<'a>,
}

/// How a query ended, given to `post_query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Outcome {
    /// True when the server completed the query without an error.
    pub success: bool,
    /// The node that ran it; `None` when the query never reached a server (blocked, refused).
    #[serde(default)]
    pub target_node: Option<String>,
    /// Time from the query's arrival at the proxy to its last response byte, microseconds.
    #[serde(default)]
    pub elapsed_us: u64,
    /// Rows returned or affected.
    #[serde(default)]
    pub rows: u64,
    /// Bytes of the response sent to the client.
    #[serde(default)]
    pub response_bytes: u64,
    /// The error message when `success` is false.
    #[serde(default)]
    pub error: Option<String>,
    /// The error's SQLSTATE when `success` is false and there is one (a server error, or a
    /// stage's refusal such as a plugin's block, `42000`).
    #[serde(default)]
    pub sqlstate: Option<String>,
}

/// Input of `post_query`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PostQueryContext<'a> {
    /// The context the query's `pre_query`/`route` hooks saw (same `request_id`).
    #[serde(borrow)]
    pub query_context: QueryContext<'a>,
    /// How it ended.
    pub outcome: Outcome,
    /// The wall clock when the host called `post_query`: microseconds since the Unix epoch
    /// (ABI 1.1; 0 from an older host). `wasm32-unknown-unknown` has no clock of its own.
    #[serde(default)]
    pub unix_time_us: u64,
}

/// Input of `authenticate`: the session that is being established (no query yet; `request_id` is
/// 0 and `identity` is `None`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AuthContext<'a> {
    /// The connecting session.
    #[serde(borrow)]
    pub hook_context: HookContext<'a>,
}

/// An authenticated identity, returned by `authenticate` and carried in later hook contexts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Identity {
    /// Stable user identifier.
    pub user_id: String,
    /// Roles granted to the session.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Tenant the user belongs to, if the deployment is multi-tenant.
    #[serde(default)]
    pub tenant_id: Option<String>,
    /// Free-form attributes, copied into the session attributes.
    #[serde(default)]
    pub attributes: BTreeMap<String, String>,
}

impl Identity {
    /// The session attributes this identity establishes (see [`HookContext::attributes`]).
    pub fn session_attributes(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(3 + self.attributes.len());
        out.push(("helios.user_id".to_owned(), self.user_id.clone()));
        out.push(("helios.roles".to_owned(), self.roles.join(",")));
        if let Some(t) = &self.tenant_id {
            out.push(("helios.tenant_id".to_owned(), t.clone()));
        }
        for (k, v) in &self.attributes {
            out.push((k.clone(), v.clone()));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Results (guest → host). One tagged format: the `action` field.
// ---------------------------------------------------------------------------------------------

/// Result of `pre_query`. An empty result (length 0) means `Continue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum PreQueryResult {
    /// Let the query through unchanged.
    Continue,
    /// Refuse the query: the client gets ErrorResponse SQLSTATE 42000 with `reason`.
    Block {
        /// Shown to the client; defaults to "blocked by plugin".
        #[serde(default = "default_block_reason")]
        reason: String,
    },
    /// Replace the SQL text; later plugins and the server see `sql`.
    Rewrite {
        /// The replacement SQL.
        sql: String,
    },
    /// Let the query through unchanged and attach request attributes (ABI 1.1): the later
    /// `pre_query` plugins of the chain, the `route` chain and every `post_query` of the same
    /// execution see each `key` → `value` in `hook_context.attributes` as
    /// `plugin.<this plugin's configured name>.<key>` (the host adds the prefix, so no plugin
    /// can forge another's tags or a session attribute). Keys are 1–64 characters of
    /// `[A-Za-z0-9_.-]`, values at most 1024 bytes, at most 16 per result; anything else fails
    /// the call like a trap. Nothing persists past the execution.
    Annotate {
        /// Attribute name (without the prefix) → value.
        attributes: BTreeMap<String, String>,
    },
}

/// The prefix under which later hooks of the same execution see `plugin`'s
/// [`PreQueryResult::Annotate`] attributes: `plugin.<plugin>.`.
pub fn annotation_prefix(plugin: &str) -> String {
    format!("plugin.{plugin}.")
}

/// Most attributes one [`PreQueryResult::Annotate`] may carry.
pub const MAX_ANNOTATIONS: usize = 16;
/// Longest annotation key (before the host's prefix), bytes.
pub const MAX_ANNOTATION_KEY: usize = 64;
/// Longest annotation value, bytes.
pub const MAX_ANNOTATION_VALUE: usize = 1024;

/// Why an [`PreQueryResult::Annotate`] result is refused (`None`: it is valid).
pub fn annotation_error(attributes: &BTreeMap<String, String>) -> Option<String> {
    if attributes.len() > MAX_ANNOTATIONS {
        return Some(format!(
            "{} annotations (at most {MAX_ANNOTATIONS})",
            attributes.len()
        ));
    }
    for (k, v) in attributes {
        let ok = !k.is_empty()
            && k.len() <= MAX_ANNOTATION_KEY
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if !ok {
            return Some(format!(
                "annotation key {k:?} is not 1-{MAX_ANNOTATION_KEY} characters of [A-Za-z0-9_.-]"
            ));
        }
        if v.len() > MAX_ANNOTATION_VALUE {
            return Some(format!(
                "annotation {k:?} has {} bytes (at most {MAX_ANNOTATION_VALUE})",
                v.len()
            ));
        }
    }
    None
}

/// Result of `route`. An empty result (length 0) means `Default`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum RouteResult {
    /// Let the proxy's router decide.
    Default,
    /// Send to the primary.
    Primary,
    /// Send to a replica chosen by the proxy (`"standby"` is accepted too, as the earlier
    /// product's ABI spelled it).
    #[serde(alias = "standby")]
    Replica,
    /// Send to the named node; an unknown name refuses the query with a clear error.
    Node {
        /// A node name from the proxy's configuration.
        target: String,
    },
    /// Refuse the query, exactly like `PreQueryResult::Block`.
    Block {
        /// Shown to the client; defaults to "blocked by plugin".
        #[serde(default = "default_block_reason")]
        reason: String,
    },
}

/// Result of `authenticate`. An empty result (length 0) means `Defer`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthResult {
    /// Accept the session with this identity.
    Allow {
        /// The identity later hooks see.
        identity: Identity,
    },
    /// Refuse the session (SQLSTATE 28000 with `message`).
    Deny {
        /// Shown to the client.
        #[serde(default = "default_deny_message")]
        message: String,
    },
    /// No opinion: the next plugin, then the proxy's own authentication, decides.
    Defer,
}

fn default_deny_message() -> String {
    "denied by plugin".to_owned()
}

/// The hooks a plugin can export; the export name is [`Hook::export_name`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    /// Before a query is routed: continue, block or rewrite.
    PreQuery,
    /// Chooses the target: default, primary, replica, a node, or block.
    Route,
    /// After the query completed (or failed); the result is ignored.
    PostQuery,
    /// When a session starts: allow with an identity, deny, or defer.
    Authenticate,
}

impl Hook {
    /// Every hook, in the order the proxy calls them in a session's life.
    pub const ALL: [Hook; 4] = [
        Hook::Authenticate,
        Hook::PreQuery,
        Hook::Route,
        Hook::PostQuery,
    ];

    /// The name of the wasm export and of the manifest entry.
    pub const fn export_name(self) -> &'static str {
        match self {
            Hook::PreQuery => "pre_query",
            Hook::Route => "route",
            Hook::PostQuery => "post_query",
            Hook::Authenticate => "authenticate",
        }
    }

    /// Parses an export / manifest name.
    pub fn from_name(name: &str) -> Option<Hook> {
        Hook::ALL.into_iter().find(|h| h.export_name() == name)
    }
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.export_name())
    }
}

// ---------------------------------------------------------------------------------------------
// Host imports: raw declarations (wasm) or in-process emulation (native), and safe wrappers.
// ---------------------------------------------------------------------------------------------

/// Why a KV write was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvError {
    /// Over a cap: value size, keys per plugin, total bytes, key length, or the replication
    /// backlog is full (retry later).
    OverCap,
    /// The host rejected a pointer (cannot happen through these wrappers).
    BadPointer,
}

#[cfg(target_arch = "wasm32")]
mod imports {
    #[link(wasm_import_module = "env")]
    extern "C" {
        pub fn kv_get(
            key_ptr: *const u8,
            key_len: i32,
            val_out_ptr: *mut u8,
            val_max_len: i32,
        ) -> i32;
        pub fn kv_set(key_ptr: *const u8, key_len: i32, val_ptr: *const u8, val_len: i32) -> i32;
        pub fn kv_delete(key_ptr: *const u8, key_len: i32) -> i32;
        pub fn sha256_hex(in_ptr: *const u8, in_len: i32, out_ptr: *mut u8) -> i32;
        pub fn now_ms() -> i64;
    }

    pub fn clock_ms() -> i64 {
        unsafe { now_ms() }
    }

    pub fn get(key: &[u8], out: &mut [u8]) -> i32 {
        unsafe {
            kv_get(
                key.as_ptr(),
                key.len() as i32,
                out.as_mut_ptr(),
                out.len() as i32,
            )
        }
    }
    pub fn set(key: &[u8], val: &[u8]) -> i32 {
        unsafe {
            kv_set(
                key.as_ptr(),
                key.len() as i32,
                val.as_ptr(),
                val.len() as i32,
            )
        }
    }
    pub fn delete(key: &[u8]) -> i32 {
        unsafe { kv_delete(key.as_ptr(), key.len() as i32) }
    }
    pub fn sha256(input: &[u8], out: &mut [u8; 64]) -> i32 {
        unsafe { sha256_hex(input.as_ptr(), input.len() as i32, out.as_mut_ptr()) }
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imports {
    use std::cell::RefCell;
    use std::collections::HashMap;

    thread_local! {
        static KV: RefCell<HashMap<Vec<u8>, Vec<u8>>> = RefCell::new(HashMap::new());
    }

    pub fn get(key: &[u8], out: &mut [u8]) -> i32 {
        KV.with(|kv| match kv.borrow().get(key) {
            None => -1,
            Some(v) if v.len() > out.len() => -2,
            Some(v) => {
                out[..v.len()].copy_from_slice(v);
                v.len() as i32
            }
        })
    }
    pub fn set(key: &[u8], val: &[u8]) -> i32 {
        KV.with(|kv| kv.borrow_mut().insert(key.to_vec(), val.to_vec()));
        0
    }
    pub fn delete(key: &[u8]) -> i32 {
        KV.with(|kv| kv.borrow_mut().remove(key));
        0
    }
    pub fn sha256(input: &[u8], out: &mut [u8; 64]) -> i32 {
        use sha2::Digest;
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let digest = sha2::Sha256::digest(input);
        for (i, b) in digest.iter().enumerate() {
            out[2 * i] = HEX[(b >> 4) as usize];
            out[2 * i + 1] = HEX[(b & 15) as usize];
        }
        64
    }
    pub fn clear() {
        KV.with(|kv| kv.borrow_mut().clear());
    }

    thread_local! {
        static CLOCK: std::cell::Cell<Option<i64>> = const { std::cell::Cell::new(None) };
    }

    pub fn clock_ms() -> i64 {
        CLOCK.with(|c| c.get()).unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64)
        })
    }

    pub fn set_clock(ms: Option<i64>) {
        CLOCK.with(|c| c.set(ms));
    }
}

/// Native builds only: makes [`now_unix_ms`] return `ms` (`None`: the real clock again), so a
/// plugin's unit tests can step through its time windows.
#[cfg(not(target_arch = "wasm32"))]
pub fn set_clock_for_tests(ms: Option<u64>) {
    imports::set_clock(ms.map(|m| m as i64));
}

/// The host's wall clock: milliseconds since the Unix epoch (host import `env.now_ms`, ABI 1.1).
/// For time windows and timestamps; it can step (NTP), so do not use it to time a call.
pub fn now_unix_ms() -> u64 {
    imports::clock_ms().max(0) as u64
}

/// Native builds only: empties the emulated KV (for plugin unit tests).
#[cfg(not(target_arch = "wasm32"))]
pub fn kv_clear_for_tests() {
    imports::clear();
}

/// Reads `key` from this plugin's KV namespace; `None` when absent.
pub fn kv_read(key: impl AsRef<[u8]>) -> Option<Vec<u8>> {
    let key = key.as_ref();
    let mut buf = vec![0u8; 256];
    loop {
        let n = imports::get(key, &mut buf);
        match n {
            n if n >= 0 => {
                buf.truncate(n as usize);
                return Some(buf);
            }
            -2 if buf.len() < (1 << 28) => {
                let grown = buf.len() * 4;
                buf.resize(grown, 0);
            }
            _ => return None,
        }
    }
}

/// Reads `key` as UTF-8 text; `None` when absent or not UTF-8.
pub fn kv_read_string(key: impl AsRef<[u8]>) -> Option<String> {
    kv_read(key).and_then(|v| String::from_utf8(v).ok())
}

/// Reads `key` as JSON (the format the host uses for values seeded from the plugin's `config`).
pub fn kv_read_json<T: serde::de::DeserializeOwned>(key: impl AsRef<[u8]>) -> Option<T> {
    kv_read(key).and_then(|v| serde_json::from_slice(&v).ok())
}

/// Writes `key` = `value` in this plugin's namespace. The write is visible at once on this shard
/// and replicated to the others (`docs/plugin-abi.md`, "KV consistency").
pub fn kv_write(key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Result<(), KvError> {
    match imports::set(key.as_ref(), value.as_ref()) {
        0 => Ok(()),
        -1 => Err(KvError::OverCap),
        _ => Err(KvError::BadPointer),
    }
}

/// Deletes `key` (absent keys are fine).
pub fn kv_remove(key: impl AsRef<[u8]>) -> Result<(), KvError> {
    match imports::delete(key.as_ref()) {
        0 => Ok(()),
        -1 => Err(KvError::OverCap),
        _ => Err(KvError::BadPointer),
    }
}

/// SHA-256 of `input` as 64 lowercase hex characters, computed by the host.
pub fn sha256_digest_hex(input: impl AsRef<[u8]>) -> String {
    let mut out = [0u8; 64];
    let n = imports::sha256(input.as_ref(), &mut out);
    assert_eq!(n, 64, "host sha256_hex failed");
    // The host writes only ASCII hex digits.
    String::from_utf8_lossy(&out).into_owned()
}

// ---------------------------------------------------------------------------------------------
// Export glue.
// ---------------------------------------------------------------------------------------------

/// Memory management exports the host uses to place inputs in guest memory.
#[cfg(target_arch = "wasm32")]
mod memory_exports {
    use std::alloc::Layout;

    /// Allocates `len` bytes (8-aligned) for the host; 0 on failure.
    #[no_mangle]
    pub extern "C" fn alloc(len: i32) -> i32 {
        let Ok(layout) = Layout::from_size_align((len.max(1)) as usize, 8) else {
            return 0;
        };
        unsafe { std::alloc::alloc(layout) as usize as i32 }
    }

    /// Frees a region returned by `alloc(len)`.
    #[no_mangle]
    pub extern "C" fn dealloc(ptr: i32, len: i32) {
        if ptr == 0 {
            return;
        }
        if let Ok(layout) = Layout::from_size_align((len.max(1)) as usize, 8) {
            unsafe { std::alloc::dealloc(ptr as usize as *mut u8, layout) }
        }
    }
}

#[doc(hidden)]
pub mod __rt {
    //! Used by the export macros; not part of the public API.
    use super::*;
    use std::cell::RefCell;

    thread_local! {
        // The last result; the ABI lets it live until the next call into the instance, so one
        // buffer is reused and the host never frees results.
        static OUT: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    }

    /// # Safety
    /// `ptr..ptr+len` must be a region the host wrote (the ABI guarantees it).
    unsafe fn input<'a>(ptr: i32, len: i32) -> &'a [u8] {
        if len <= 0 {
            return &[];
        }
        std::slice::from_raw_parts(ptr as usize as *const u8, len as usize)
    }

    fn output<T: Serialize>(value: &T) -> i64 {
        OUT.with(|o| {
            let mut o = o.borrow_mut();
            o.clear();
            serde_json::to_writer(&mut *o, value).expect("result serialises");
            ((o.as_ptr() as usize as i64) << 32) | (o.len() as i64)
        })
    }

    fn parse<'a, T: Deserialize<'a>>(bytes: &'a [u8]) -> T {
        match serde_json::from_slice(bytes) {
            Ok(v) => v,
            // A trap: the host counts it as a plugin failure and applies on_error.
            Err(e) => panic!("helios-plugin-abi: input does not parse: {e}"),
        }
    }

    pub fn pre_query(ptr: i32, len: i32, f: impl Fn(&QueryContext<'_>) -> PreQueryResult) -> i64 {
        let bytes = unsafe { input(ptr, len) };
        let ctx: QueryContext<'_> = parse(bytes);
        match f(&ctx) {
            PreQueryResult::Continue => 0,
            r => output(&r),
        }
    }

    pub fn route(ptr: i32, len: i32, f: impl Fn(&QueryContext<'_>) -> RouteResult) -> i64 {
        let bytes = unsafe { input(ptr, len) };
        let ctx: QueryContext<'_> = parse(bytes);
        match f(&ctx) {
            RouteResult::Default => 0,
            r => output(&r),
        }
    }

    pub fn post_query(ptr: i32, len: i32, f: impl Fn(&PostQueryContext<'_>)) -> i64 {
        let bytes = unsafe { input(ptr, len) };
        let ctx: PostQueryContext<'_> = parse(bytes);
        f(&ctx);
        0
    }

    pub fn authenticate(ptr: i32, len: i32, f: impl Fn(&AuthContext<'_>) -> AuthResult) -> i64 {
        let bytes = unsafe { input(ptr, len) };
        let ctx: AuthContext<'_> = parse(bytes);
        match f(&ctx) {
            AuthResult::Defer => 0,
            r => output(&r),
        }
    }
}

/// Exports `fn(&QueryContext) -> PreQueryResult` as the `pre_query` hook.
#[macro_export]
macro_rules! export_pre_query {
    ($f:path) => {
        // Named apart from the export so the user's function may be called like the hook.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[export_name = "pre_query"]
            pub extern "C" fn __helios_export_pre_query(ptr: i32, len: i32) -> i64 {
                $crate::__rt::pre_query(ptr, len, $f)
            }
        };
        // Native builds (plugin unit tests) export nothing; mark the function used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $f;
        };
    };
}

/// Exports `fn(&QueryContext) -> RouteResult` as the `route` hook.
#[macro_export]
macro_rules! export_route {
    ($f:path) => {
        // Named apart from the export so the user's function may be called like the hook.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[export_name = "route"]
            pub extern "C" fn __helios_export_route(ptr: i32, len: i32) -> i64 {
                $crate::__rt::route(ptr, len, $f)
            }
        };
        // Native builds (plugin unit tests) export nothing; mark the function used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $f;
        };
    };
}

/// Exports `fn(&PostQueryContext)` as the `post_query` hook.
#[macro_export]
macro_rules! export_post_query {
    ($f:path) => {
        // Named apart from the export so the user's function may be called like the hook.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[export_name = "post_query"]
            pub extern "C" fn __helios_export_post_query(ptr: i32, len: i32) -> i64 {
                $crate::__rt::post_query(ptr, len, $f)
            }
        };
        // Native builds (plugin unit tests) export nothing; mark the function used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $f;
        };
    };
}

/// Exports `fn(&AuthContext) -> AuthResult` as the `authenticate` hook.
#[macro_export]
macro_rules! export_authenticate {
    ($f:path) => {
        // Named apart from the export so the user's function may be called like the hook.
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            #[export_name = "authenticate"]
            pub extern "C" fn __helios_export_authenticate(ptr: i32, len: i32) -> i64 {
                $crate::__rt::authenticate(ptr, len, $f)
            }
        };
        // Native builds (plugin unit tests) export nothing; mark the function used.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = $f;
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_use_the_action_tag() {
        let r = PreQueryResult::Block {
            reason: "no".into(),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"action":"block","reason":"no"}"#
        );
        let r: RouteResult = serde_json::from_str(r#"{"action":"block"}"#).unwrap();
        assert_eq!(
            r,
            RouteResult::Block {
                reason: DEFAULT_BLOCK_REASON.into()
            }
        );
        let r: RouteResult = serde_json::from_str(r#"{"action":"node","target":"r1"}"#).unwrap();
        assert_eq!(
            r,
            RouteResult::Node {
                target: "r1".into()
            }
        );
        assert!(serde_json::from_str::<RouteResult>(r#"{"kind":"primary"}"#).is_err());
        // The earlier product's ABI said "standby".
        let r: RouteResult = serde_json::from_str(r#"{"action":"standby"}"#).unwrap();
        assert_eq!(r, RouteResult::Replica);
    }

    #[test]
    fn annotate_result_and_its_checks() {
        let r = PreQueryResult::Annotate {
            attributes: BTreeMap::from([("ai_traffic".to_string(), "true".to_string())]),
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"action":"annotate","attributes":{"ai_traffic":"true"}}"#
        );
        let ok = BTreeMap::from([("agent_id".to_string(), "x".repeat(1024))]);
        assert_eq!(annotation_error(&ok), None);
        for bad in ["", "a b", "helios:x", &"k".repeat(65)] {
            let m = BTreeMap::from([(bad.to_string(), "v".to_string())]);
            assert!(annotation_error(&m).is_some(), "{bad:?} accepted");
        }
        let long = BTreeMap::from([("k".to_string(), "v".repeat(1025))]);
        assert!(annotation_error(&long).is_some());
        let many: BTreeMap<String, String> =
            (0..17).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(annotation_error(&many).is_some());
        assert_eq!(annotation_prefix("ai-classifier"), "plugin.ai-classifier.");
    }

    #[test]
    fn test_clock_overrides_the_real_one() {
        let real = now_unix_ms();
        assert!(real > 1_700_000_000_000, "{real}");
        set_clock_for_tests(Some(42));
        assert_eq!(now_unix_ms(), 42);
        set_clock_for_tests(None);
        assert!(now_unix_ms() >= real);
    }

    #[test]
    fn context_borrows_plain_strings() {
        let json = r#"{"query":"SELECT 1","hook_context":{"request_id":7,"client_id":1}}"#;
        let ctx: QueryContext<'_> = serde_json::from_str(json).unwrap();
        assert!(matches!(ctx.query, Cow::Borrowed("SELECT 1")));
        assert_eq!(ctx.hook_context.request_id, 7);
    }

    #[test]
    fn native_kv_emulation_round_trips() {
        kv_clear_for_tests();
        assert_eq!(kv_read("k"), None);
        kv_write("k", vec![7u8; 1000]).unwrap();
        assert_eq!(kv_read("k").unwrap().len(), 1000);
        kv_remove("k").unwrap();
        assert_eq!(kv_read("k"), None);
        assert_eq!(
            sha256_digest_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
