//! `[plugins]` configuration: the WASM plugin host (`helios-plugin-host`), plain data.
//!
//! ```toml
//! [plugins]
//! enabled = true
//! plugin_dir = "/var/lib/helios/plugins"
//! trust_root = "/etc/helios/plugin-keys"
//! timeout_ms = 20
//! memory_limit_mb = 32
//! max_plugins = 8
//!
//! [[plugins.plugin]]
//! name = "block-drop"
//! source = "block-drop-1.0.0.tar.gz"
//! hooks = ["pre_query"]
//! on_error = "fail_closed"
//!
//! [[plugins.plugin]]
//! name = "tenant-budget"
//! source = "tenant_budget.wasm"
//! config = { max_queries_per_tenant = 10000 }
//! optional = true          # the proxy may run without it
//! ```
//!
//! Fail closed: a plugin that fails to load stops start-up and refuses a reload unless its
//! entry says `optional = true`.
//!
//! Reload (SIGHUP, `POST /reload`) applies every key except `fuel_per_call` (on/off),
//! `kv_persist_path`, and growth of `memory_limit_mb` / `max_plugins` beyond their start-up
//! values (the instance pool is sized at start-up); those are logged and need a restart.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The `[plugins]` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginsConfig {
    /// Master switch. When false no plugin is loaded and every hook is a no-op.
    #[serde(default)]
    pub enabled: bool,
    /// Directory that relative `source` paths resolve against. Every `*.wasm` and `*.tar.gz` in
    /// it that no `[[plugins.plugin]]` entry names is also loaded, after the configured plugins,
    /// in name order. Compiled modules are cached in `<plugin_dir>/.compiled` unless
    /// `compiled_cache_dir` says otherwise.
    #[serde(default)]
    pub plugin_dir: Option<PathBuf>,
    /// Directory of trusted Ed25519 public keys (`<label>.pub`: base64 of the raw 32-byte key).
    /// When set, every plugin must carry a signature by one of them or it is refused; when
    /// unset, unsigned plugins load (development).
    #[serde(default)]
    pub trust_root: Option<PathBuf>,
    /// Wall-clock limit of one hook call, milliseconds; a call over it is interrupted (epoch
    /// interruption) and treated as a plugin failure (`on_error`).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Linear-memory limit of one plugin instance, MiB; a `memory.grow` beyond it fails and the
    /// call is treated as a plugin failure.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: u64,
    /// Most plugins loaded at once; entries beyond it are refused with a log line.
    #[serde(default = "default_max_plugins")]
    pub max_plugins: usize,
    /// Optional instruction budget of one hook call (wasmtime fuel units, roughly one per wasm
    /// instruction). Unset: no fuel accounting (it costs a few percent of guest speed).
    #[serde(default)]
    pub fuel_per_call: Option<u64>,
    /// Where compiled modules are cached, keyed by the wasm's SHA-256, so a restart does not
    /// recompile. Unset: `<plugin_dir>/.compiled` if `plugin_dir` is set, otherwise no disk
    /// cache. The directory must be as trusted as the proxy binary (it holds native code).
    #[serde(default)]
    pub compiled_cache_dir: Option<PathBuf>,
    /// Largest KV value a plugin may write, bytes.
    #[serde(default = "default_kv_max_value_bytes")]
    pub kv_max_value_bytes: usize,
    /// Most keys one plugin's KV namespace may hold.
    #[serde(default = "default_kv_max_keys")]
    pub kv_max_keys: usize,
    /// Most bytes (keys plus values) one plugin's KV namespace may hold.
    #[serde(default = "default_kv_max_total_bytes")]
    pub kv_max_total_bytes: usize,
    /// File the KV store is saved to (atomically, at most once a second and at shutdown) and
    /// loaded from at start-up, so counters and budgets survive a restart. Unset: memory only.
    #[serde(default)]
    pub kv_persist_path: Option<PathBuf>,
    /// The plugins, in call order (`[[plugins.plugin]]`).
    #[serde(default, rename = "plugin")]
    pub entries: Vec<PluginEntry>,
}

/// One `[[plugins.plugin]]` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PluginEntry {
    /// The plugin's name: its KV namespace, its name in logs and in the admin API. Default: the
    /// manifest's `name`, else the file stem of `source`.
    #[serde(default)]
    pub name: Option<String>,
    /// A `.wasm` file (with optional `.json` manifest and `.sig` signature beside it, same stem)
    /// or a `.tar.gz` artefact; relative paths resolve against `plugin_dir`.
    pub source: PathBuf,
    /// Hooks to enable. Unset: every hook the manifest declares (or, without a manifest, every
    /// hook the module exports). A hook listed here that the manifest does not declare or the
    /// module does not export refuses the plugin.
    #[serde(default)]
    pub hooks: Option<Vec<HookName>>,
    /// What a query gets when this plugin fails (trap, timeout, memory, bad result). Unset:
    /// `fail_closed` for `pre_query`, `route` and `authenticate`, `fail_open` for `post_query`.
    #[serde(default)]
    pub on_error: Option<OnError>,
    /// Values seeded into the plugin's KV at load and reload: each top-level key becomes a KV key
    /// whose value is the JSON text of the TOML value (`max = 5` → `5`, `s = "x"` → `"x"`).
    /// They overwrite what the plugin or a persisted file holds under those keys.
    #[serde(default)]
    pub config: Option<toml::Table>,
    /// May the proxy run without this plugin? `false` (the default): a plugin that fails to
    /// load (missing file, bad signature, hash mismatch, bad module) stops the proxy's start-up,
    /// fails `heliosproxy --check`, and refuses a reload as a whole (the running configuration
    /// stays). `true`: the failure is logged and the proxy runs without the plugin (on reload,
    /// with its previous version if it had one).
    #[serde(default)]
    pub optional: bool,
}

/// A hook name as written in config and manifests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HookName {
    /// `pre_query`: continue, block or rewrite a query.
    PreQuery,
    /// `route`: choose the target of a query, or block it.
    Route,
    /// `post_query`: observe a completed query.
    PostQuery,
    /// `authenticate`: allow, deny or defer a new session.
    Authenticate,
}

/// Failure policy of a plugin.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Ignore the failed plugin for this call: the query goes on as if it had no opinion.
    FailOpen,
    /// Refuse the query (or session) with an error naming the plugin.
    FailClosed,
}

fn default_timeout_ms() -> u64 {
    50
}
fn default_memory_limit_mb() -> u64 {
    64
}
fn default_max_plugins() -> usize {
    16
}
fn default_kv_max_value_bytes() -> usize {
    64 * 1024
}
fn default_kv_max_keys() -> usize {
    10_000
}
fn default_kv_max_total_bytes() -> usize {
    16 * 1024 * 1024
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig {
            enabled: false,
            plugin_dir: None,
            trust_root: None,
            timeout_ms: default_timeout_ms(),
            memory_limit_mb: default_memory_limit_mb(),
            max_plugins: default_max_plugins(),
            fuel_per_call: None,
            compiled_cache_dir: None,
            kv_max_value_bytes: default_kv_max_value_bytes(),
            kv_max_keys: default_kv_max_keys(),
            kv_max_total_bytes: default_kv_max_total_bytes(),
            kv_persist_path: None,
            entries: Vec::new(),
        }
    }
}

/// A `[plugins]` setting that cannot work, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("plugins.{key}: {problem}")]
pub struct PluginsConfigError {
    /// The offending key, e.g. `timeout_ms` or `plugin[2].name`.
    pub key: String,
    /// What is wrong with it.
    pub problem: String,
}

impl PluginsConfig {
    /// The zero-config quick start (`--plugin PATH …` and `--trust-root DIR`): plugins enabled,
    /// one entry per path (name from the manifest or file stem), defaults elsewhere.
    pub fn quick_start(paths: &[PathBuf], trust_root: Option<PathBuf>) -> PluginsConfig {
        PluginsConfig {
            enabled: true,
            trust_root,
            entries: paths
                .iter()
                .map(|p| PluginEntry {
                    name: None,
                    source: p.clone(),
                    hooks: None,
                    on_error: None,
                    config: None,
                    optional: false,
                })
                .collect(),
            ..PluginsConfig::default()
        }
    }

    /// `source` resolved against `plugin_dir`.
    pub fn resolve_source(&self, source: &Path) -> PathBuf {
        match &self.plugin_dir {
            Some(dir) if source.is_relative() => dir.join(source),
            _ => source.to_path_buf(),
        }
    }

    /// Checks what serde cannot: ranges and duplicate names. Returns every problem found.
    pub fn validate(&self) -> Result<(), Vec<PluginsConfigError>> {
        let mut errs = Vec::new();
        let mut bad = |key: &str, problem: String| {
            errs.push(PluginsConfigError {
                key: key.to_owned(),
                problem,
            })
        };
        if self.timeout_ms == 0 || self.timeout_ms > 60_000 {
            bad(
                "timeout_ms",
                format!("{} is outside 1..=60000", self.timeout_ms),
            );
        }
        if self.memory_limit_mb == 0 || self.memory_limit_mb > 4096 {
            bad(
                "memory_limit_mb",
                format!("{} is outside 1..=4096", self.memory_limit_mb),
            );
        }
        if self.max_plugins == 0 || self.max_plugins > 256 {
            bad(
                "max_plugins",
                format!("{} is outside 1..=256", self.max_plugins),
            );
        }
        if self.fuel_per_call == Some(0) {
            bad(
                "fuel_per_call",
                "0 would refuse every call; leave it unset for no limit".into(),
            );
        }
        if self.kv_max_value_bytes == 0 {
            bad("kv_max_value_bytes", "must be at least 1".into());
        }
        if self.kv_max_keys == 0 {
            bad("kv_max_keys", "must be at least 1".into());
        }
        if self.kv_max_total_bytes < self.kv_max_value_bytes {
            bad(
                "kv_max_total_bytes",
                format!(
                    "{} is below kv_max_value_bytes ({})",
                    self.kv_max_total_bytes, self.kv_max_value_bytes
                ),
            );
        }
        let mut seen = std::collections::HashSet::new();
        for (i, e) in self.entries.iter().enumerate() {
            if let Some(name) = &e.name {
                if name.is_empty() || name.len() > 128 || name.contains(['/', '\\', '\0']) {
                    bad(
                        &format!("plugin[{i}].name"),
                        format!("{name:?} must be 1..=128 bytes without / \\ or NUL"),
                    );
                } else if !seen.insert(name.clone()) {
                    bad(
                        &format!("plugin[{i}].name"),
                        format!("{name:?} is used by an earlier entry"),
                    );
                }
            }
            if e.source.as_os_str().is_empty() {
                bad(&format!("plugin[{i}].source"), "is empty".into());
            }
            if matches!(&e.hooks, Some(h) if h.is_empty()) {
                bad(
                    &format!("plugin[{i}].hooks"),
                    "is empty; remove the entry or list a hook".into(),
                );
            }
        }
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_example() {
        let text = r#"
            enabled = true
            plugin_dir = "/var/lib/helios/plugins"
            trust_root = "/etc/helios/plugin-keys"
            timeout_ms = 20
            memory_limit_mb = 32
            max_plugins = 8

            [[plugin]]
            name = "block-drop"
            source = "block-drop-1.0.0.tar.gz"
            hooks = ["pre_query"]
            on_error = "fail_closed"

            [[plugin]]
            source = "tenant_budget.wasm"
            config = { max_queries_per_tenant = 10000 }
            optional = true
        "#;
        let cfg: PluginsConfig = toml::from_str(text).unwrap();
        assert!(cfg.enabled);
        assert_eq!(cfg.timeout_ms, 20);
        assert_eq!(cfg.entries.len(), 2);
        assert_eq!(cfg.entries[0].hooks, Some(vec![HookName::PreQuery]));
        assert_eq!(cfg.entries[0].on_error, Some(OnError::FailClosed));
        assert_eq!(cfg.entries[1].name, None);
        assert!(!cfg.entries[0].optional, "required unless marked");
        assert!(cfg.entries[1].optional);
        assert_eq!(
            cfg.resolve_source(&cfg.entries[1].source),
            PathBuf::from("/var/lib/helios/plugins/tenant_budget.wasm")
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<PluginsConfig>("enabled = true\ntimeout = 5").is_err());
        assert!(
            toml::from_str::<PluginsConfig>("[[plugin]]\nsource = \"a.wasm\"\nhook = []").is_err()
        );
        assert!(toml::from_str::<PluginsConfig>(
            "[[plugin]]\nsource = \"a.wasm\"\non_error = \"open\""
        )
        .is_err());
    }

    #[test]
    fn validation_names_the_key() {
        let mut cfg = PluginsConfig {
            timeout_ms: 0,
            ..PluginsConfig::default()
        };
        cfg.entries = PluginsConfig::quick_start(&["a.wasm".into(), "b.wasm".into()], None).entries;
        cfg.entries[0].name = Some("x".into());
        cfg.entries[1].name = Some("x".into());
        let errs = cfg.validate().unwrap_err();
        let keys: Vec<_> = errs.iter().map(|e| e.key.as_str()).collect();
        assert_eq!(keys, ["timeout_ms", "plugin[1].name"]);
        assert!(errs[0].to_string().starts_with("plugins.timeout_ms: "));
    }
}
