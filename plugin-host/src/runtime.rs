//! [`PluginRuntime`]: loading, verification, compilation (with the on-disk cache), the wasmtime
//! engine and its epoch ticker, generations for reload, and the host-side KV API.

use crate::artefact::{self, Artefact, ArtefactError, Verification};
use crate::imports::{self, HostState};
use crate::kv::{KvError, KvLimits, KvMaster};
use crate::shard::ShardPlugins;
use crate::trust::{SignatureError, TrustRoot};
use helios_config::plugins::{HookName, OnError, PluginEntry, PluginsConfig};
use helios_plugin_abi::Hook;
use std::collections::{HashMap, HashSet};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::{
    Engine, ExternType, InstanceAllocationStrategy, InstancePre, Linker, Module,
    PoolingAllocationConfig, ValType,
};

/// Period of the epoch ticker. A call's deadline is `timeout_ms + 1` ticks, so it is interrupted
/// between `timeout_ms` and `timeout_ms + 1` ms after it started (plus the ticker's scheduling
/// delay).
pub(crate) const EPOCH_TICK: Duration = Duration::from_millis(1);

/// What the engine tells the runtime about itself.
#[derive(Debug, Clone, Default)]
pub struct RuntimeOptions {
    /// Number of shards that will call [`PluginRuntime::shard`] (sizes the instance pool).
    pub shards: usize,
    /// Configured node names; a `route` result naming another node refuses the query.
    pub node_names: Vec<String>,
}

/// A fatal start-up problem (a plugin that fails to load is not one: see [`LoadReport`]).
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The `[plugins]` section is invalid.
    #[error("invalid [plugins] configuration: {0}")]
    Config(String),
    /// wasmtime refused the engine configuration.
    #[error("wasmtime engine: {0}")]
    Engine(String),
    /// The KV store could not start (e.g. an unreadable `kv_persist_path`).
    #[error("plugin KV: {0}")]
    Kv(String),
}

/// Why one plugin was not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Reading, integrity or signature.
    #[error(transparent)]
    Artefact(#[from] ArtefactError),
    /// The trust root could not be used; no plugin loads while it is broken.
    #[error("trust root: {0}")]
    TrustRoot(SignatureError),
    /// `max_plugins` plugins are already loaded.
    #[error("max_plugins = {0} reached; plugin not loaded")]
    TooMany(usize),
    /// Another plugin already has this name.
    #[error("a plugin named {0:?} is already loaded")]
    DuplicateName(String),
    /// The plugin's name is not usable.
    #[error("plugin name {0:?} must be 1..=128 bytes without / \\ or NUL")]
    BadName(String),
    /// Config, manifest and exports disagree about hooks.
    #[error("hooks: {0}")]
    Hooks(String),
    /// The module does not compile, lacks a required export, or imports something the host
    /// does not provide.
    #[error("module: {0}")]
    Module(String),
}

/// A plugin that was not loaded, and why (also logged at error level).
#[derive(Debug)]
pub struct Refusal {
    /// The artefact path.
    pub source: PathBuf,
    /// The name it would have had, when known.
    pub name: Option<String>,
    /// Why.
    pub error: LoadError,
    /// On reload: the previous version of the plugin keeps running.
    pub kept_previous: bool,
    /// The entry says `optional = true`: the proxy may run without it. Every other refusal
    /// (including artefacts discovered in `plugin_dir`) is fatal: start-up stops, a reload is
    /// refused as a whole.
    pub optional: bool,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "plugin {} ({}): {}",
            self.name.as_deref().unwrap_or("?"),
            self.source.display(),
            self.error
        )
    }
}

/// A loaded plugin, as the admin API shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginInfo {
    /// Name (KV namespace).
    pub name: String,
    /// Manifest version, if there is a manifest.
    pub version: Option<String>,
    /// Artefact path.
    pub source: PathBuf,
    /// Enabled hooks.
    pub hooks: Vec<Hook>,
    /// Lowercase hex SHA-256 of the wasm.
    pub wasm_sha256: String,
    /// Trust-root label of the signer, when a trust root is configured.
    pub signed_by: Option<String>,
    /// The compiled module came from the on-disk cache.
    pub from_disk_cache: bool,
}

/// The result of a load or reload.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Loaded plugins, in call order.
    pub loaded: Vec<PluginInfo>,
    /// Plugins refused.
    pub refused: Vec<Refusal>,
    /// Other problems (ignored trust-root keys, settings that need a restart, seeds over caps).
    pub warnings: Vec<String>,
    /// The plugin set was published. False when a reload was refused (a plugin that is not
    /// `optional` failed to load, or the configuration is invalid): the previous plugins and
    /// settings stay in force.
    pub applied: bool,
}

impl LoadReport {
    /// Refusals of plugins that are not `optional`: the proxy must not run without them.
    pub fn required_refusals(&self) -> impl Iterator<Item = &Refusal> {
        self.refused.iter().filter(|r| !r.optional)
    }

    /// `Err` naming every plugin that is required and failed to load, and why (fail closed:
    /// the engine refuses to start, `--check` exits non-zero).
    pub fn fail_closed(&self) -> Result<(), String> {
        let msgs: Vec<String> = self.required_refusals().map(ToString::to_string).collect();
        if msgs.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} required plugin{} failed to load (mark an entry `optional = true` to run without it): {}",
                msgs.len(),
                if msgs.len() == 1 { "" } else { "s" },
                msgs.join("; ")
            ))
        }
    }
}

pub(crate) const fn hook_index(h: Hook) -> usize {
    match h {
        Hook::PreQuery => 0,
        Hook::Route => 1,
        Hook::PostQuery => 2,
        Hook::Authenticate => 3,
    }
}

fn hook_of(h: HookName) -> Hook {
    match h {
        HookName::PreQuery => Hook::PreQuery,
        HookName::Route => Hook::Route,
        HookName::PostQuery => Hook::PostQuery,
        HookName::Authenticate => Hook::Authenticate,
    }
}

/// Default failure policy of a hook (the issue's: closed where a query can be refused).
pub(crate) const fn default_on_error(h: Hook) -> OnError {
    match h {
        Hook::PostQuery => OnError::FailOpen,
        Hook::PreQuery | Hook::Route | Hook::Authenticate => OnError::FailClosed,
    }
}

/// A verified, compiled plugin, shared by every shard.
pub(crate) struct LoadedPlugin {
    pub name: Arc<str>,
    pub info: PluginInfo,
    pub hooks: [bool; 4],
    pub on_error: [OnError; 4],
    pub pre: InstancePre<HostState>,
    wasm_sha256: [u8; 32],
}

/// Per-call limits of one generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CallSettings {
    pub timeout_ms: u64,
    pub timeout_ticks: u64,
    pub memory_limit_bytes: usize,
    pub memory_limit_mb: u64,
    pub fuel: Option<u64>,
}

/// One published set of plugins and settings.
pub(crate) struct Generation {
    pub id: u64,
    pub plugins: Vec<Arc<LoadedPlugin>>,
    pub settings: CallSettings,
    pub kv_limits: KvLimits,
    pub nodes: Arc<HashSet<String>>,
}

struct Startup {
    memory_limit_mb: u64,
    max_plugins: usize,
    fuel: bool,
    kv_persist_path: Option<PathBuf>,
}

pub(crate) struct Shared {
    pub engine: Engine,
    linker: Linker<HostState>,
    pub gen_id: AtomicU64,
    current: Mutex<Arc<Generation>>,
    pub kv: KvMaster,
    startup: Startup,
    modules: Mutex<HashMap<[u8; 32], Module>>,
    reload_lock: Mutex<()>,
    ticker_stop: Arc<AtomicBool>,
    ticker_active: Arc<AtomicBool>,
    ticker: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Shared {
    pub(crate) fn current(&self) -> Arc<Generation> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn publish(&self, gen: Arc<Generation>) {
        let id = gen.id;
        self.ticker_active
            .store(!gen.plugins.is_empty(), Ordering::Relaxed);
        if let Some(t) = self
            .ticker
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            t.thread().unpark();
        }
        self.kv
            .set_known(gen.plugins.iter().map(|p| p.name.clone()));
        self.kv.set_limits(gen.kv_limits);
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = gen;
        self.gen_id.store(id, Ordering::Release);
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.ticker.lock().unwrap_or_else(|p| p.into_inner()).take() {
            t.thread().unpark();
            let _ = t.join();
        }
        self.kv.shutdown();
    }
}

/// The plugin host of one proxy process. `Send + Sync`; create it once, hand each shard a
/// [`ShardPlugins`] from [`PluginRuntime::shard`], keep it for the admin thread.
///
/// Threads it starts: one epoch ticker (`helios-plugin-epoch`, idle while no plugin is loaded)
/// and one KV master (`helios-plugin-kv`). They stop when the runtime and every `ShardPlugins`
/// are dropped (the KV store is saved then).
#[derive(Clone)]
pub struct PluginRuntime {
    shared: Arc<Shared>,
}

impl PluginRuntime {
    /// Builds the engine and loads every plugin of `cfg`. Plugins that fail to load are refused
    /// (logged, listed in the report). A refusal of a plugin that is not `optional` must stop
    /// the start: the engine checks [`LoadReport::fail_closed`] and exits.
    pub fn new(
        cfg: &PluginsConfig,
        opts: RuntimeOptions,
    ) -> Result<(PluginRuntime, LoadReport), RuntimeError> {
        cfg.validate().map_err(|errs| {
            RuntimeError::Config(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let memory_limit_bytes = (cfg.memory_limit_mb as usize) << 20;
        let mut wc = wasmtime::Config::new();
        wc.epoch_interruption(true);
        wc.consume_fuel(cfg.fuel_per_call.is_some());
        // Every shard holds one instance per plugin; reload and trap recovery briefly hold a
        // second. The pool is sized once here (budgets at start-up).
        let slots =
            u32::try_from((opts.shards.max(1) + 2) * cfg.max_plugins * 2).unwrap_or(u32::MAX);
        let mut pool = PoolingAllocationConfig::default();
        pool.total_core_instances(slots)
            .total_memories(slots)
            .total_tables(slots)
            .max_memory_size(memory_limit_bytes);
        wc.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        let engine = Engine::new(&wc).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let mut linker = Linker::new(&engine);
        imports::define(&mut linker).map_err(|e| RuntimeError::Engine(format!("{e:#}")))?;
        let kv_limits = kv_limits(cfg);
        let kv =
            KvMaster::start(kv_limits, cfg.kv_persist_path.clone()).map_err(RuntimeError::Kv)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let ticker_active = Arc::new(AtomicBool::new(false));
        let ticker = {
            let (engine, stop, active) =
                (engine.clone(), ticker_stop.clone(), ticker_active.clone());
            std::thread::Builder::new()
                .name("helios-plugin-epoch".into())
                .spawn(move || {
                    // Ticks on an absolute schedule so sleep overshoot does not accumulate into
                    // the timeout; after a long stall it resynchronises instead of bursting
                    // ticks (which would cut calls that just started).
                    raise_ticker_priority();
                    let mut next = Instant::now();
                    while !stop.load(Ordering::Relaxed) {
                        if !active.load(Ordering::Relaxed) {
                            std::thread::park_timeout(Duration::from_millis(200));
                            next = Instant::now();
                            continue;
                        }
                        next += EPOCH_TICK;
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        } else if now - next > 2 * EPOCH_TICK {
                            next = now;
                        }
                        engine.increment_epoch();
                    }
                })
                .map_err(|e| RuntimeError::Engine(format!("cannot start the epoch ticker: {e}")))?
        };
        let empty = Arc::new(Generation {
            id: 0,
            plugins: Vec::new(),
            settings: settings(cfg),
            kv_limits,
            nodes: Arc::new(opts.node_names.iter().cloned().collect()),
        });
        let shared = Arc::new(Shared {
            engine,
            linker,
            gen_id: AtomicU64::new(0),
            current: Mutex::new(empty),
            kv,
            startup: Startup {
                memory_limit_mb: cfg.memory_limit_mb,
                max_plugins: cfg.max_plugins,
                fuel: cfg.fuel_per_call.is_some(),
                kv_persist_path: cfg.kv_persist_path.clone(),
            },
            modules: Mutex::new(HashMap::new()),
            reload_lock: Mutex::new(()),
            ticker_stop,
            ticker_active,
            ticker: Mutex::new(Some(ticker)),
        });
        let rt = PluginRuntime { shared };
        let report = rt.load_generation(cfg, false);
        Ok((rt, report))
    }

    /// The zero-config quick start: `--plugin PATH …` and `--trust-root DIR`.
    pub fn from_paths(
        paths: &[PathBuf],
        trust_root: Option<PathBuf>,
        opts: RuntimeOptions,
    ) -> Result<(PluginRuntime, LoadReport), RuntimeError> {
        PluginRuntime::new(&PluginsConfig::quick_start(paths, trust_root), opts)
    }

    /// The plugin state of one shard. It is `!Send`: call this on the shard's own thread, once
    /// per shard. It subscribes to KV replication and instantiates every plugin right away.
    pub fn shard(&self, shard_id: usize) -> ShardPlugins {
        ShardPlugins::new(self.shared.clone(), shard_id)
    }

    /// Reloads plugins from `cfg` (SIGHUP, `POST /reload`). Client connections are untouched:
    /// shards pick up the new generation at their next hook call, keeping the instances of
    /// plugins that did not change. When a plugin that is not `optional` fails to load the
    /// reload is refused as a whole (nothing changes, [`LoadReport::applied`] is false); an
    /// `optional` one that fails keeps its previous version, if it had one. Settings that need a
    /// restart are reported as warnings and keep their start-up values.
    pub fn reload(&self, cfg: &PluginsConfig) -> LoadReport {
        self.load_generation(cfg, true)
    }

    fn load_generation(&self, cfg: &PluginsConfig, refuse_on_required: bool) -> LoadReport {
        let _guard = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut report = LoadReport::default();
        if let Err(errs) = cfg.validate() {
            for e in errs {
                report.warnings.push(format!("reload refused: {e}"));
            }
            for w in &report.warnings {
                log::error!("plugins: {w}");
            }
            return report;
        }
        let prev = self.shared.current();
        let mut settings = settings(cfg);
        let st = &self.shared.startup;
        if cfg.memory_limit_mb > st.memory_limit_mb {
            report.warnings.push(format!(
                "memory_limit_mb = {} exceeds the start-up value {}; it applies after a restart",
                cfg.memory_limit_mb, st.memory_limit_mb
            ));
            settings.memory_limit_mb = st.memory_limit_mb;
            settings.memory_limit_bytes = (st.memory_limit_mb as usize) << 20;
        }
        if cfg.fuel_per_call.is_some() != st.fuel {
            report
                .warnings
                .push("fuel_per_call was switched on or off; that applies after a restart".into());
            settings.fuel = if st.fuel { prev.settings.fuel } else { None };
        }
        if cfg.kv_persist_path != st.kv_persist_path {
            report
                .warnings
                .push("kv_persist_path changed; that applies after a restart".into());
        }
        let max_plugins = if cfg.max_plugins > st.max_plugins {
            report.warnings.push(format!(
                "max_plugins = {} exceeds the start-up value {}; it applies after a restart",
                cfg.max_plugins, st.max_plugins
            ));
            st.max_plugins
        } else {
            cfg.max_plugins
        };
        let plugins = if cfg.enabled {
            self.load_all(cfg, max_plugins, &prev, &mut report)
        } else {
            Vec::new()
        };
        if refuse_on_required {
            if let Err(why) = report.fail_closed() {
                log::error!(
                    "plugins: reload refused, the running plugins and settings stay: {why}"
                );
                report.warnings.push(format!("reload refused: {why}"));
                report.loaded = prev.plugins.iter().map(|p| p.info.clone()).collect();
                for r in &mut report.refused {
                    r.kept_previous = r
                        .name
                        .as_deref()
                        .is_some_and(|n| prev.plugins.iter().any(|p| &*p.name == n));
                }
                return report;
            }
        }
        // Forget compiled modules nothing uses any more.
        {
            let keep: HashSet<[u8; 32]> = plugins.iter().map(|p| p.wasm_sha256).collect();
            self.shared
                .modules
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .retain(|k, _| keep.contains(k));
        }
        let gen = Arc::new(Generation {
            id: prev.id + 1,
            plugins,
            settings,
            kv_limits: kv_limits(cfg),
            nodes: prev.nodes.clone(),
        });
        self.shared.publish(gen.clone());
        report.applied = true;
        self.seed(cfg, &gen, &mut report);
        report.loaded = gen.plugins.iter().map(|p| p.info.clone()).collect();
        for w in &report.warnings {
            log::warn!("plugins: {w}");
        }
        for p in &report.loaded {
            log::info!(
                "plugin loaded: name={} version={} hooks={:?} sha256={} signed_by={} cached={}",
                p.name,
                p.version.as_deref().unwrap_or("-"),
                p.hooks.iter().map(|h| h.export_name()).collect::<Vec<_>>(),
                p.wasm_sha256,
                p.signed_by.as_deref().unwrap_or("-"),
                p.from_disk_cache
            );
        }
        report
    }

    /// Replaces the node names `route` results are checked against (the engine's config reload).
    pub fn set_node_names(&self, names: &[String]) {
        let _guard = self
            .shared
            .reload_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let prev = self.shared.current();
        self.shared.publish(Arc::new(Generation {
            id: prev.id + 1,
            plugins: prev.plugins.clone(),
            settings: prev.settings,
            kv_limits: prev.kv_limits,
            nodes: Arc::new(names.iter().cloned().collect()),
        }));
    }

    /// The loaded plugins, in call order.
    pub fn plugins(&self) -> Vec<PluginInfo> {
        self.shared
            .current()
            .plugins
            .iter()
            .map(|p| p.info.clone())
            .collect()
    }

    /// Reads a key of plugin `plugin`'s KV (admin `GET /plugins/{name}/kv/{key}`).
    pub fn kv_get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, KvError> {
        self.shared.kv.get(plugin, key)
    }

    /// Writes a key (admin `PUT`); ordered with plugin writes, replicated to every shard.
    pub fn kv_put(&self, plugin: &str, key: &[u8], value: &[u8]) -> Result<(), KvError> {
        self.shared.kv.write(plugin, key, Some(value), true)
    }

    /// Deletes a key (admin `DELETE`).
    pub fn kv_delete(&self, plugin: &str, key: &[u8]) -> Result<(), KvError> {
        self.shared.kv.write(plugin, key, None, true)
    }

    /// The plugin's keys, sorted.
    pub fn kv_list(&self, plugin: &str) -> Result<Vec<Vec<u8>>, KvError> {
        self.shared.kv.list(plugin)
    }

    /// Waits until the KV master has handled every write sent so far (and saved the store when
    /// `kv_persist_path` is set). For shutdown paths and tests.
    pub fn flush_kv(&self) {
        self.shared.kv.flush();
    }

    fn seed(&self, cfg: &PluginsConfig, gen: &Generation, report: &mut LoadReport) {
        for p in &gen.plugins {
            let Some(entry) = cfg.entries.iter().find(|e| {
                e.name.as_deref() == Some(&*p.name)
                    || (e.name.is_none() && cfg.resolve_source(&e.source) == p.info.source)
            }) else {
                continue;
            };
            for (k, v) in entry.config.iter().flatten() {
                let json = serde_json::to_vec(v).unwrap_or_default();
                if let Err(e) = self
                    .shared
                    .kv
                    .write(&p.name, k.as_bytes(), Some(&json), true)
                {
                    report.warnings.push(format!(
                        "plugin {}: config key {k:?} not seeded into KV: {e}",
                        p.name
                    ));
                }
            }
        }
    }

    fn load_all(
        &self,
        cfg: &PluginsConfig,
        max_plugins: usize,
        prev: &Generation,
        report: &mut LoadReport,
    ) -> Vec<Arc<LoadedPlugin>> {
        let trust = match &cfg.trust_root {
            None => Ok(None),
            Some(dir) => TrustRoot::load(dir).map(|(t, warnings)| {
                report.warnings.extend(warnings);
                Some(t)
            }),
        };
        let cache_dir = cfg
            .compiled_cache_dir
            .clone()
            .or_else(|| cfg.plugin_dir.as_ref().map(|d| d.join(".compiled")));
        let mut loaded: Vec<Arc<LoadedPlugin>> = Vec::new();
        for (source, entry) in candidates(cfg, report) {
            let optional = entry.as_ref().is_some_and(|e| e.optional);
            let result = match &trust {
                Err(e) => Err((
                    entry_name(&source, entry.as_ref()),
                    LoadError::TrustRoot(e.clone()),
                )),
                Ok(_) if loaded.len() >= max_plugins => Err((
                    entry_name(&source, entry.as_ref()),
                    LoadError::TooMany(max_plugins),
                )),
                Ok(trust) => self.load_one(
                    &source,
                    entry.as_ref(),
                    trust.as_ref(),
                    cache_dir.as_deref(),
                    &loaded,
                    prev,
                ),
            };
            match result {
                Ok(p) => loaded.push(p),
                Err((name, error)) => {
                    let keep = name
                        .as_deref()
                        .and_then(|n| prev.plugins.iter().find(|p| &*p.name == n))
                        .filter(|p| {
                            !loaded.iter().any(|l| l.name == p.name) && loaded.len() < max_plugins
                        })
                        .cloned();
                    log::error!(
                        "plugin refused: source={} name={} reason: {error}{}{}",
                        source.display(),
                        name.as_deref().unwrap_or("?"),
                        if optional {
                            " (optional = true: the proxy runs without it)"
                        } else {
                            " (required: start-up or reload fails)"
                        },
                        if keep.is_some() {
                            " (the previous version keeps running)"
                        } else {
                            ""
                        }
                    );
                    report.refused.push(Refusal {
                        source,
                        name,
                        error,
                        kept_previous: keep.is_some(),
                        optional,
                    });
                    if let Some(p) = keep {
                        loaded.push(p);
                    }
                }
            }
        }
        loaded
    }

    fn load_one(
        &self,
        source: &Path,
        entry: Option<&PluginEntry>,
        trust: Option<&TrustRoot>,
        cache_dir: Option<&Path>,
        loaded: &[Arc<LoadedPlugin>],
        prev: &Generation,
    ) -> Result<Arc<LoadedPlugin>, (Option<String>, LoadError)> {
        let configured_name = entry.and_then(|e| e.name.clone());
        let fail = |name: Option<String>, e: LoadError| (name, e);
        let art = artefact::read(source).map_err(|e| fail(configured_name.clone(), e.into()))?;
        let name = configured_name
            .clone()
            .unwrap_or_else(|| art.default_name());
        // Integrity and signature before anything compiles.
        let verification = art
            .verify(trust)
            .map_err(|e| fail(Some(name.clone()), e.into()))?;
        let signed_by = verification.signed_by.clone();
        if name.is_empty() || name.len() > 128 || name.contains(['/', '\\', '\0']) {
            return Err(fail(Some(name.clone()), LoadError::BadName(name)));
        }
        if loaded.iter().any(|p| *p.name == *name) {
            return Err(fail(Some(name.clone()), LoadError::DuplicateName(name)));
        }
        let mut on_error = [OnError::FailOpen; 4];
        for h in Hook::ALL {
            on_error[hook_index(h)] = entry
                .and_then(|e| e.on_error)
                .unwrap_or(default_on_error(h));
        }
        let (module, from_disk_cache) = self
            .module_for(&art, cache_dir)
            .map_err(|e| fail(Some(name.clone()), e))?;
        let hooks = effective_hooks(&art, &verification, entry, &module)
            .map_err(|e| fail(Some(name.clone()), e))?;
        let mut hook_flags = [false; 4];
        for h in &hooks {
            hook_flags[hook_index(*h)] = true;
        }
        // Unchanged plugin: keep the same Arc so shards keep their instances (and memory).
        if let Some(p) = prev.plugins.iter().find(|p| {
            *p.name == *name
                && p.wasm_sha256 == art.wasm_sha256
                && p.hooks == hook_flags
                && p.on_error == on_error
        }) {
            return Ok(p.clone());
        }
        check_abi_exports(&module).map_err(|e| fail(Some(name.clone()), e))?;
        let pre = self
            .shared
            .linker
            .instantiate_pre(&module)
            .map_err(|e| fail(Some(name.clone()), LoadError::Module(format!("{e:#}"))))?;
        let info = PluginInfo {
            name: name.clone(),
            version: art.manifest.as_ref().map(|m| m.version.clone()),
            source: source.to_path_buf(),
            hooks,
            wasm_sha256: art.sha256_hex(),
            signed_by,
            from_disk_cache,
        };
        Ok(Arc::new(LoadedPlugin {
            name: Arc::from(name.as_str()),
            info,
            hooks: hook_flags,
            on_error,
            pre,
            wasm_sha256: art.wasm_sha256,
        }))
    }

    fn module_for(
        &self,
        art: &Artefact,
        cache_dir: Option<&Path>,
    ) -> Result<(Module, bool), LoadError> {
        if let Some(m) = self
            .shared
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&art.wasm_sha256)
        {
            return Ok((m.clone(), false));
        }
        let cache_path = cache_dir.map(|dir| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            self.shared
                .engine
                .precompile_compatibility_hash()
                .hash(&mut h);
            dir.join(format!("{}-{:016x}.cwasm", art.sha256_hex(), h.finish()))
        });
        let mut from_disk = false;
        let mut module = None;
        if let Some(path) = cache_path.as_ref().filter(|p| p.exists()) {
            // SAFETY: the cache directory is as trusted as the proxy binary (documented on
            // `compiled_cache_dir`); wasmtime checks the file's engine compatibility.
            match unsafe { Module::deserialize_file(&self.shared.engine, path) } {
                Ok(m) => {
                    module = Some(m);
                    from_disk = true;
                }
                Err(e) => log::warn!(
                    "plugins: compiled cache {} unusable, recompiling: {e:#}",
                    path.display()
                ),
            }
        }
        let module = match module {
            Some(m) => m,
            None => {
                let m = Module::new(&self.shared.engine, &art.wasm)
                    .map_err(|e| LoadError::Module(format!("does not compile: {e:#}")))?;
                if let Some(path) = &cache_path {
                    if let Err(e) = write_cache(path, &m) {
                        log::warn!(
                            "plugins: cannot write compiled cache {}: {e}",
                            path.display()
                        );
                    }
                }
                m
            }
        };
        self.shared
            .modules
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(art.wasm_sha256, module.clone());
        Ok((module, from_disk))
    }
}

/// The epoch ticker enforces every plugin's time limit, and a looping plugin keeps a core busy
/// while it waits to be cut: when the machine is saturated the ticker must still get a CPU on
/// time. It sleeps 1 ms between ticks, so a real-time priority costs nothing else. Best effort:
/// SCHED_FIFO priority 1 (the lowest real-time priority) when permitted, else nice -10, else
/// unchanged (logged once).
fn raise_ticker_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain syscalls on the calling thread with valid arguments.
        let param = libc::sched_param { sched_priority: 1 };
        if unsafe { libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) }
            == 0
        {
            return;
        }
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
        if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, -10) } == 0 {
            log::info!("plugins: epoch ticker runs at nice -10 (no permission for SCHED_FIFO)");
            return;
        }
        log::info!(
            "plugins: epoch ticker runs at normal priority (no CAP_SYS_NICE); plugin time limits may overrun on a saturated machine"
        );
    }
}

/// The name a candidate will have as far as known without reading it.
fn entry_name(source: &Path, entry: Option<&PluginEntry>) -> Option<String> {
    entry.and_then(|e| e.name.clone()).or_else(|| {
        let file = source.file_name()?.to_string_lossy().into_owned();
        Some(
            file.trim_end_matches(".tar.gz")
                .trim_end_matches(".wasm")
                .to_owned(),
        )
    })
}

fn write_cache(path: &Path, m: &Module) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let bytes = m
        .serialize()
        .map_err(|e| std::io::Error::other(format!("{e:#}")))?;
    // Unique per process and call: concurrent loads of one module must not share a temp file.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = path.with_extension(format!(
        "tmp{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

fn settings(cfg: &PluginsConfig) -> CallSettings {
    CallSettings {
        timeout_ms: cfg.timeout_ms,
        timeout_ticks: cfg.timeout_ms + 1,
        memory_limit_bytes: (cfg.memory_limit_mb as usize) << 20,
        memory_limit_mb: cfg.memory_limit_mb,
        fuel: cfg.fuel_per_call,
    }
}

fn kv_limits(cfg: &PluginsConfig) -> KvLimits {
    KvLimits {
        max_value_bytes: cfg.kv_max_value_bytes,
        max_keys: cfg.kv_max_keys,
        max_total_bytes: cfg.kv_max_total_bytes,
    }
}

/// Configured entries in order, then artefacts found in `plugin_dir` that no entry names, by
/// file name.
fn candidates(cfg: &PluginsConfig, report: &mut LoadReport) -> Vec<(PathBuf, Option<PluginEntry>)> {
    let mut out: Vec<(PathBuf, Option<PluginEntry>)> = cfg
        .entries
        .iter()
        .map(|e| (cfg.resolve_source(&e.source), Some(e.clone())))
        .collect();
    if let Some(dir) = &cfg.plugin_dir {
        let canon = |p: &Path| p.canonicalize().unwrap_or_else(|_| p.to_path_buf());
        let named: HashSet<PathBuf> = out.iter().map(|(p, _)| canon(p)).collect();
        match std::fs::read_dir(dir) {
            Ok(rd) => {
                let mut found: Vec<PathBuf> = rd
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file())
                    .filter(|p| {
                        artefact::is_tar_gz(p) || p.extension().is_some_and(|x| x == "wasm")
                    })
                    .filter(|p| !named.contains(&canon(p)))
                    .collect();
                found.sort();
                out.extend(found.into_iter().map(|p| (p, None)));
            }
            Err(e) => report
                .warnings
                .push(format!("plugin_dir {}: {e}", dir.display())),
        }
    }
    out
}

fn is_hook_signature(ty: &ExternType) -> bool {
    let ExternType::Func(f) = ty else {
        return false;
    };
    let params: Vec<ValType> = f.params().collect();
    let results: Vec<ValType> = f.results().collect();
    params.len() == 2
        && params.iter().all(|p| matches!(p, ValType::I32))
        && results.len() == 1
        && matches!(results[0], ValType::I64)
}

fn check_abi_exports(module: &Module) -> Result<(), LoadError> {
    let missing = |what: &str| {
        Err(LoadError::Module(format!(
            "missing or mistyped export {what}"
        )))
    };
    if !matches!(module.get_export("memory"), Some(ExternType::Memory(_))) {
        return missing("memory");
    }
    match module.get_export("alloc") {
        Some(ExternType::Func(f))
            if f.params().map(|p| matches!(p, ValType::I32)).eq([true])
                && f.results().map(|r| matches!(r, ValType::I32)).eq([true]) => {}
        _ => return missing("alloc(i32) -> i32"),
    }
    match module.get_export("dealloc") {
        Some(ExternType::Func(f))
            if f.params()
                .map(|p| matches!(p, ValType::I32))
                .eq([true, true])
                && f.results().len() == 0 => {}
        _ => return missing("dealloc(i32, i32)"),
    }
    Ok(())
}

/// The hooks to enable: config ∩ manifest, else manifest, else exports; each must be exported.
/// With a trust root only a signed manifest counts (an unsigned one could switch off a hook of
/// signed code): the hooks then come from the config, else from the signed module's exports.
fn effective_hooks(
    art: &Artefact,
    verification: &Verification,
    entry: Option<&PluginEntry>,
    module: &Module,
) -> Result<Vec<Hook>, LoadError> {
    let exported = |h: Hook| {
        module
            .get_export(h.export_name())
            .is_some_and(|t| is_hook_signature(&t))
    };
    let trusted_manifest = art
        .manifest
        .as_ref()
        .filter(|_| verification.manifest_trusted());
    if art.manifest.is_some() && trusted_manifest.is_none() {
        log::info!(
            "plugins: {}: the manifest is not signed (no manifest.sig), so its hook list is not used; hooks come from the config entry or the signed module's exports",
            art.path.display()
        );
    }
    let declared: Option<Vec<Hook>> = trusted_manifest.map(|m| {
        m.hooks
            .iter()
            .filter_map(|h| {
                let hook = Hook::from_name(h);
                if hook.is_none() {
                    log::warn!(
                        "plugins: {}: manifest hook {h:?} is unknown to this proxy; ignored",
                        art.path.display()
                    );
                }
                hook
            })
            .collect()
    });
    let configured: Option<Vec<Hook>> = entry
        .and_then(|e| e.hooks.as_ref())
        .map(|v| v.iter().map(|h| hook_of(*h)).collect());
    let mut hooks = match (&configured, &declared) {
        (Some(c), Some(d)) => {
            if let Some(h) = c.iter().find(|h| !d.contains(h)) {
                return Err(LoadError::Hooks(format!(
                    "config enables {h} but the (signed) manifest does not declare it (declared: {})",
                    d.iter().map(|h| h.export_name()).collect::<Vec<_>>().join(", ")
                )));
            }
            c.clone()
        }
        (Some(c), None) => c.clone(),
        (None, Some(d)) => d.clone(),
        (None, None) => Hook::ALL.into_iter().filter(|h| exported(*h)).collect(),
    };
    hooks.sort();
    hooks.dedup();
    if let Some(h) = hooks.iter().find(|h| !exported(**h)) {
        return Err(LoadError::Hooks(format!(
            "{h} is enabled but the module does not export {h}(i32, i32) -> i64"
        )));
    }
    if hooks.is_empty() {
        return Err(LoadError::Hooks(
            "no hook enabled (the module exports none, or none is configured)".into(),
        ));
    }
    Ok(hooks)
}
