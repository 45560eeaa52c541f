//! Helpers shared by the integration tests.

use helios_config::plugins::PluginsConfig;
use helios_plugin_host::{
    HookContext, Identity, LoadReport, PluginRuntime, PreQueryDecision, QueryContext,
    RuntimeOptions, ShardPlugins, EMPTY_ATTRIBUTES,
};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A built guest plugin (`scripts/build-plugins.sh` puts them in `target/plugins/`).
pub fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("HELIOS_PLUGIN_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh first (it builds the guest plugins into target/plugins/)",
        p.display()
    );
    p
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "helios-plugin-test-{}-{tag}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Copies a built plugin into `dir` as `<file>`.
pub fn copy_wasm(name: &str, dir: &Path, file: &str) -> PathBuf {
    let dst = dir.join(file);
    std::fs::copy(wasm(name), &dst).unwrap();
    dst
}

/// Compiled modules are shared between tests through this cache so each test does not
/// recompile every plugin (the cache itself has its own test with a fresh directory).
pub fn shared_cache_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-test-cache")
}

/// Parses a `[plugins]` body; adds the shared compiled cache and a 5 s call limit unless the
/// text sets them.
pub fn config(text: &str) -> PluginsConfig {
    let mut cfg: PluginsConfig =
        toml::from_str(text).unwrap_or_else(|e| panic!("bad test config: {e}\n{text}"));
    // Hook calls are wall-clock limited, and a test thread can be descheduled for longer than
    // the 50 ms default on a loaded 2-core machine; only tests about the limit set it.
    if !text.contains("timeout_ms") {
        cfg.timeout_ms = 5000;
    }
    if cfg.compiled_cache_dir.is_none() && !text.contains("compiled_cache_dir") {
        cfg.compiled_cache_dir = Some(shared_cache_dir());
    }
    cfg
}

/// A `[[plugin]]` block (TOML) for a built plugin.
pub fn entry(name: &str, wasm_name: &str, extra: &str) -> String {
    format!(
        "[[plugin]]\nname = {name:?}\nsource = {:?}\n{extra}\n",
        wasm(wasm_name).display().to_string()
    )
}

pub fn node_names() -> Vec<String> {
    vec!["primary-1".into(), "replica-1".into()]
}

pub fn runtime(cfg: &PluginsConfig) -> (PluginRuntime, LoadReport) {
    PluginRuntime::new(
        cfg,
        RuntimeOptions {
            shards: 2,
            node_names: node_names(),
        },
    )
    .expect("runtime starts")
}

/// A runtime whose plugins must all load.
pub fn runtime_ok(cfg: &PluginsConfig) -> PluginRuntime {
    let (rt, report) = runtime(cfg);
    assert!(
        report.refused.is_empty(),
        "unexpected refusals: {:?}",
        report.refused
    );
    rt
}

/// What the engine would build for a query from user `alice`.
pub struct Session {
    pub request_id: u64,
    pub identity: Option<Identity>,
    pub attributes: std::collections::BTreeMap<String, String>,
    pub tables: Vec<String>,
    pub read_only: bool,
    pub application_name: String,
}

impl Default for Session {
    fn default() -> Self {
        Session {
            request_id: 1,
            identity: None,
            attributes: Default::default(),
            tables: vec![],
            read_only: true,
            application_name: "test".into(),
        }
    }
}

impl Session {
    pub fn hook_context(&self) -> HookContext<'_> {
        HookContext {
            request_id: self.request_id,
            client_id: 99,
            identity: self.identity.as_ref(),
            database: "app",
            user: "alice",
            application_name: &self.application_name,
            client_ip: Some("192.0.2.7".parse().unwrap()),
            attributes: if self.attributes.is_empty() {
                &EMPTY_ATTRIBUTES
            } else {
                &self.attributes
            },
        }
    }

    pub fn pre_query(&self, shard: &mut ShardPlugins, sql: &str) -> PreQueryDecision {
        let hc = self.hook_context();
        shard.pre_query(&QueryContext {
            query: sql,
            normalized: sql,
            tables: &self.tables,
            is_read_only: self.read_only,
            hook_context: &hc,
        })
    }
}

/// Runs `sql` through `pre_query` for a default session.
pub fn pre(shard: &mut ShardPlugins, sql: &str) -> PreQueryDecision {
    Session::default().pre_query(shard, sql)
}

/// The reason of a block (the kv-probe plugin answers through it).
pub fn answer(d: PreQueryDecision) -> String {
    match d {
        PreQueryDecision::Block(b) => b.reason,
        other => panic!("expected a block, got {other:?}"),
    }
}

/// Polls `f` until true, failing after 10 s (never a fixed sleep).
pub fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !f() {
        assert!(
            std::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}
