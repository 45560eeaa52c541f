//! Process start-up: budgets, one pinned glommio executor per shard, and the signal thread
//! (SIGHUP reloads, SIGTERM/SIGINT drain).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use atomic_waker::AtomicWaker;
use glommio::{CpuSet, LocalExecutorBuilder, Placement};
use helios_config::{Apply, Config, Userlist};

use crate::backend::topology::{HealthInput, TopologyHub};
use crate::shard::{RuntimeConfig, Shard, ShardMsg, Shared};

mod shard_task;
use shard_task::{log_budget, run_shard};

/// How often glommio takes its loop back from a busy run queue (see the executor builder).
const PREEMPT_EVERY: Duration = Duration::from_millis(1);
/// glommio's registered I/O buffer memory per executor. The proxy does no file I/O, so it is
/// kept small: it counts against RLIMIT_MEMLOCK together with the rings.
const IO_MEMORY: usize = 256 * 1024;
/// What each executor locks beyond IO_MEMORY (its three rings), measured: ≥ 512 KiB.
const RING_MEMLOCK: u64 = 768 * 1024;
/// Room in each shard's inbox.
const INBOX: usize = 1024;

/// Loads a config file and its userlist into what the shards read.
pub fn load_runtime(path: &Path, shards_override: Option<usize>) -> Result<RuntimeConfig> {
    let config = Config::load(path).map_err(|e| anyhow!("{e}"))?;
    let users = match &config.auth.userlist {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("reading userlist {}", p.display()))?;
            helios_config::parse_userlist(&text, p).map_err(|e| anyhow!("{e}"))?
        }
        None => Userlist::new(),
    };
    let shards = shards_override.unwrap_or_else(|| config.server.cores.resolve());
    runtime_config(config, users, shards)
}

/// What the shards read, with every node's host name resolved here, on the thread that loads
/// the configuration (start-up, and the signal thread on reload): a shard opening a server
/// connection never blocks on DNS. A name that does not resolve is an error naming the node.
pub fn runtime_config(config: Config, users: Userlist, shards: usize) -> Result<RuntimeConfig> {
    let addrs = resolve_nodes(&config)?;
    let client_tls = crate::net::tls::client_tls(&config.tls)?;
    let mut node_tls = HashMap::new();
    for n in &config.nodes {
        if let Some(t) =
            crate::net::tls::upstream_tls(n).with_context(|| format!("node {:?}", n.name))?
        {
            node_tls.insert(n.name.clone(), t);
        }
    }
    let hba = match &config.auth.hba {
        Some(p) => Some(Arc::new(
            helios_config::hba::Hba::load(p, &config.auth.groups).map_err(|e| anyhow!("{e}"))?,
        )),
        None => None,
    };
    Ok(RuntimeConfig {
        hba,
        node_tls,
        config,
        users,
        shards,
        addrs,
        client_tls,
    })
}

/// Every node's `host:port` as socket addresses, by node name (blocking: not for a shard).
pub fn resolve_nodes(config: &Config) -> Result<HashMap<String, Vec<SocketAddr>>> {
    use std::net::ToSocketAddrs;
    let mut out = HashMap::new();
    for n in &config.nodes {
        let addrs: Vec<SocketAddr> = (n.host.as_str(), n.port)
            .to_socket_addrs()
            .with_context(|| format!("node {:?}: cannot resolve host {:?}", n.name, n.host))?
            .collect();
        if addrs.is_empty() {
            bail!(
                "node {:?}: host {:?} resolves to no address",
                n.name,
                n.host
            );
        }
        if n.host.parse::<std::net::IpAddr>().is_err() {
            log::info!("node {}: {} resolves to {addrs:?}", n.name, n.host);
        }
        out.insert(n.name.clone(), addrs);
    }
    Ok(out)
}

/// Makes sure the executors' locked memory fits, raising the soft limit if allowed.
fn check_memlock(shards: usize) -> Result<()> {
    let need = shards as u64 * (IO_MEMORY as u64 + RING_MEMLOCK);
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid struct pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) != 0 {
            return Ok(());
        }
        if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
            let want = if lim.rlim_max == libc::RLIM_INFINITY {
                need.max(64 << 20)
            } else {
                lim.rlim_max
            };
            let raised = libc::rlimit {
                rlim_cur: want,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_MEMLOCK, &raised) == 0 {
                lim.rlim_cur = want;
            }
        }
    }
    if lim.rlim_cur != libc::RLIM_INFINITY && lim.rlim_cur < need {
        bail!(
            "locked-memory limit is {} KiB but {shards} shards need about {} KiB for their io_uring rings: \
             raise it (`ulimit -l {}` or LimitMEMLOCK= in the systemd unit) or lower server.cores",
            lim.rlim_cur / 1024,
            need / 1024,
            need / 1024
        );
    }
    Ok(())
}

enum Started {
    Ready(usize),
    /// The shard could not start serving (a listener did not bind): why.
    Failed(usize, String),
    Exited(usize, std::result::Result<(), String>),
}

/// Starts the shards and serves until SIGTERM/SIGINT.
pub fn run(rt: RuntimeConfig, config_path: Option<PathBuf>) -> Result<()> {
    let shards = rt.shards;
    // The health checker's executor locks memory as a shard's does.
    check_memlock(shards + usize::from(rt.config.has_topology()))?;
    log_budget(&rt);
    log_tls(&rt);
    // Access contexts' credential leases: fetched before any shard opens a connection.
    crate::backend::lease::configure(&rt.config);
    let plugins = start_plugins(&rt)?;
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    let mut doorbells = Vec::new();
    for _ in 0..shards {
        let (tx, rx) = crossbeam_channel::bounded(INBOX);
        inboxes.push(tx);
        receivers.push(rx);
        doorbells.push(Arc::new(AtomicWaker::new()));
    }
    let (snap_tx, snap_rx) = crossbeam_channel::bounded(shards * 4);
    let (cmd_tx, cmd_rx) = crossbeam_channel::bounded(16);
    let admin_cfg = rt.config.admin.clone();
    let journal = if rt.config.journal.enabled {
        Some(
            crate::journal::start(&rt.config.journal)
                .map_err(|e| anyhow!("journal: {}: {e}", rt.config.journal.path.display()))?,
        )
    } else {
        None
    };
    let shared = Arc::new(Shared {
        inboxes,
        doorbells: doorbells.clone(),
        clients: AtomicUsize::new(0),
        sessions: (0..shards).map(|_| AtomicUsize::new(0)).collect(),
        snapshots: admin_cfg.enabled.then_some(snap_tx),
        snapshot_interval: Duration::from_millis(admin_cfg.snapshot_interval_ms),
        console_state: std::sync::Mutex::new(helios_admin::AdminState::new(shards)),
        pauses: Default::default(),
        node_switches: Default::default(),
        topology: Arc::new(TopologyHub::new(HealthInput {
            config: rt.config.clone(),
            addrs: rt.addrs.clone(),
            node_tls: rt.node_tls.clone(),
        })),
        journal,
        signal: start_signal(&rt.config)?,
    });
    {
        // Snapshots go to every shard's inbox; each shard routes by its own copy.
        let to = shared.clone();
        shared.topology.set_publisher(move |t| {
            to.broadcast(|| ShardMsg::Topology(t.clone()));
        });
    }
    if rt.config.has_topology() {
        start_checker(&shared, &rt.config)?;
    }
    let live_config =
        helios_admin::live_config(serde_json::to_value(&rt.config).unwrap_or_default());
    if admin_cfg.enabled {
        let info = helios_admin::StaticInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            // Secrets (passwords, the admin token) are never serialized.
            config_json: live_config.clone(),
            plugin_kv: plugins.clone().map(|p| {
                std::sync::Arc::new(PluginKvBridge(p)) as std::sync::Arc<dyn helios_admin::PluginKv>
            }),
            shards,
            node_switches: shared.node_switches.clone(),
            topology: Some(std::sync::Arc::new(TopologyBridge(shared.topology.clone()))),
            signal: Some(shared.signal.board.clone()),
        };
        helios_admin::spawn(&admin_cfg, snap_rx, cmd_tx, info).map_err(|e| anyhow!("{e}"))?;
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("helios-admin-cmd".into())
            .spawn(move || {
                for cmd in cmd_rx {
                    match cmd {
                        // The signal thread owns reloading: the admin asks it the same way
                        // an operator does.
                        helios_admin::AdminCommand::Reload => unsafe {
                            libc::kill(libc::getpid(), libc::SIGHUP);
                        },
                        helios_admin::AdminCommand::ResetHistograms => {
                            shared.broadcast(|| ShardMsg::ResetHistograms)
                        }
                    }
                }
            })?;
    }
    let rt = Arc::new(rt);
    // The CPUs the shards are bound to: none when `server.pin_shards = false` (every shard is
    // then unbound, see `shard_placement`).
    let mut cpus: Vec<usize> = if rt.config.server.pin_shards {
        CpuSet::online()
            .map(|s| s.into_iter().map(|l| l.cpu).collect())
            .unwrap_or_default()
    } else {
        log::info!("shards are not bound to CPUs (server.pin_shards = false)");
        Vec::new()
    };
    cpus.sort_unstable();
    if !cpus.is_empty() && shards > cpus.len() {
        log::warn!(
            "{shards} shards on {} CPUs: some CPUs run two shards",
            cpus.len()
        );
    }
    let (events_tx, events) = crossbeam_channel::unbounded();
    for (i, rx) in receivers.into_iter().enumerate() {
        let placement = shard_placement(i, shards, &cpus);
        let shared = shared.clone();
        let doorbell = doorbells[i].clone();
        let rt = rt.clone();
        let ready = events_tx.clone();
        let plugins = plugins.clone();
        let handle = LocalExecutorBuilder::new(placement)
            .name(&format!("shard-{i}"))
            .io_memory(IO_MEMORY)
            // The ring driver keeps the run queue busy under load (it blocks on its own ring
            // instead of parking in glommio): this is how often glommio still gets its loop
            // back for timers, other threads' wake-ups and its own sockets (accept, connect).
            .preempt_timer(PREEMPT_EVERY)
            .spawn(move || async move {
                request_sched_slice(i, rt.config.server.sched_slice_us);
                let shard = Shard::new(i, shared, rt);
                // Ready once the listeners are bound: "listening" in the log means it.
                let started = move |r: std::result::Result<(), String>| {
                    let _ = ready.send(match r {
                        Ok(()) => Started::Ready(i),
                        Err(why) => Started::Failed(i, why),
                    });
                };
                run_shard(shard, rx, doorbell, plugins, started).await;
            })
            .map_err(|e| anyhow!("shard {i}: cannot start its executor: {e}"))?;
        let exited = events_tx.clone();
        std::thread::spawn(move || {
            let r = handle.join().map_err(|e| e.to_string());
            let _ = exited.send(Started::Exited(i, r));
        });
    }
    let mut started = vec![false; shards];
    while started.contains(&false) {
        match events.recv_timeout(Duration::from_secs(15)) {
            Ok(Started::Ready(i)) => {
                log::debug!("shard {i} started");
                started[i] = true;
            }
            Ok(Started::Failed(i, why)) => {
                // The other shards stop too (those still starting once they are up; the failed
                // one is gone, so its inbox refuses); the caller reports the error.
                for j in 0..shards {
                    let _ = shared.send(j, ShardMsg::Shutdown);
                }
                bail!("shard {i}: {why}");
            }
            Ok(Started::Exited(i, r)) => {
                let why = r.err().unwrap_or_else(|| "exited".into());
                bail!(
                    "shard {i} failed to start: {why} (io_uring needs locked memory: check `ulimit -l`, \
                     or lower server.cores)"
                );
            }
            Err(_) => {
                let late: Vec<usize> = (0..shards).filter(|&i| !started[i]).collect();
                bail!("shards {late:?} did not start within 15 s");
            }
        }
    }
    log::info!(
        "heliosproxy listening on {} with {shards} shard{}",
        rt.config.server.listen.join(", "),
        if shards == 1 { "" } else { "s" }
    );
    signal_loop(
        &shared,
        &rt,
        config_path,
        shards,
        &events,
        plugins.as_ref(),
        &live_config,
    )
}

/// Starts the health checker thread (once; a reload that configures a topology starts it).
fn start_checker(shared: &Arc<Shared>, config: &Config) -> Result<()> {
    let hub = &shared.topology;
    if hub.running.swap(true, std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    crate::backend::health::spawn(hub.clone(), IO_MEMORY)
        .map_err(|e| anyhow!("health checker: {e}"))?;
    log::info!(
        "health checker: probing {} nodes every {} ms",
        config.nodes.len(),
        config.health.interval_ms
    );
    Ok(())
}

/// Loads the plugins (`[plugins] enabled`). Fail closed: a plugin that fails to load stops the
/// start (the error names it and why) unless its entry says `optional = true`; an optional one
/// is logged and left out.
fn start_plugins(rt: &RuntimeConfig) -> Result<Option<helios_plugin_host::PluginRuntime>> {
    let cfg = &rt.config.plugins;
    if !cfg.enabled {
        return Ok(None);
    }
    let opts = helios_plugin_host::RuntimeOptions {
        shards: rt.shards,
        node_names: rt.config.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    let (runtime, report) =
        helios_plugin_host::PluginRuntime::new(cfg, opts).map_err(|e| anyhow!("{e}"))?;
    log_plugin_report(&report);
    report.fail_closed().map_err(|e| anyhow!("plugins: {e}"))?;
    Ok(Some(runtime))
}

/// `heliosproxy --check`: loads and verifies every plugin as start-up would (integrity,
/// signatures, compilation, hooks) and fails naming each required plugin that does not load.
/// Returns one line per loaded plugin.
pub fn check_plugins(rt: &RuntimeConfig) -> Result<Vec<String>> {
    let cfg = &rt.config.plugins;
    if !cfg.enabled {
        return Ok(Vec::new());
    }
    let opts = helios_plugin_host::RuntimeOptions {
        shards: 1,
        node_names: rt.config.nodes.iter().map(|n| n.name.clone()).collect(),
    };
    // A check must not touch the running proxy's KV file (the runtime saves it when dropped).
    let mut cfg = cfg.clone();
    cfg.kv_persist_path = None;
    let (_runtime, report) =
        helios_plugin_host::PluginRuntime::new(&cfg, opts).map_err(|e| anyhow!("{e}"))?;
    report.fail_closed().map_err(|e| anyhow!("plugins: {e}"))?;
    let mut lines: Vec<String> = report
        .loaded
        .iter()
        .map(|p| {
            format!(
                "plugin {} OK (hooks {}, sha256 {}{})",
                p.name,
                p.hooks
                    .iter()
                    .map(|h| h.export_name())
                    .collect::<Vec<_>>()
                    .join(","),
                &p.wasm_sha256[..12.min(p.wasm_sha256.len())],
                p.signed_by
                    .as_ref()
                    .map(|s| format!(", signed by {s}"))
                    .unwrap_or_default()
            )
        })
        .collect();
    lines.extend(
        report
            .refused
            .iter()
            .map(|r| format!("optional {r} — the proxy would run without it")),
    );
    Ok(lines)
}

fn log_plugin_report(report: &helios_plugin_host::LoadReport) {
    for p in &report.loaded {
        log::info!(
            "plugin {} loaded from {} (hooks {:?}, sha256 {}{})",
            p.name,
            p.source.display(),
            p.hooks,
            &p.wasm_sha256[..12.min(p.wasm_sha256.len())],
            p.signed_by
                .as_ref()
                .map(|s| format!(", signed by {s}"))
                .unwrap_or_default()
        );
    }
    for r in &report.refused {
        log::error!("plugin {} refused: {}", r.source.display(), r.error);
    }
    for w in &report.warnings {
        log::warn!("plugins: {w}");
    }
}

/// Says loudly when clients may connect in plain text.
fn log_tls(rt: &RuntimeConfig) {
    use helios_config::TlsMode;
    match rt.client_tls.mode {
        TlsMode::Disable => log::warn!(
            "TLS is off: clients connect in PLAIN TEXT (passwords and data unencrypted); \
             set [tls] cert and key to require TLS (docs/tls.md)"
        ),
        TlsMode::Prefer => {
            log::warn!("tls.mode = prefer: clients that do not ask for TLS connect in plain text")
        }
        TlsMode::Require => log::info!(
            "TLS required for clients (min {:?}{})",
            rt.config.tls.min_version,
            if rt.config.tls.client_ca.is_some() {
                format!(", client certificates {:?}", rt.config.tls.client_cert)
            } else {
                String::new()
            }
        ),
    }
}

/// The signal plane's shared part: the board the admin reads and, with `[audit] sink` or
/// `[drift] enabled`, the audit thread (docs/signal.md).
fn start_signal(c: &helios_config::Config) -> Result<crate::signal::SignalShared> {
    use std::sync::atomic::Ordering::Relaxed;
    let board = Arc::new(helios_admin::SignalBoard::default());
    board.anomaly_enabled.store(c.anomaly.enabled, Relaxed);
    board.drift_enabled.store(c.drift.enabled, Relaxed);
    let sink = c.audit.parsed_sink().map_err(|e| anyhow!("{e}"))?;
    let (audit, audit_thread) = if sink.is_some() || c.drift.enabled {
        if let Some(s) = &sink {
            log::info!("audit: session summaries to {s:?}");
        }
        // The HTTP sink's host is resolved here, once, like the nodes' (never on another
        // thread); one that does not resolve stops the start.
        let http_addrs = match &sink {
            Some(helios_config::signal::AuditSink::Http { authority, .. }) => {
                use std::net::ToSocketAddrs;
                let a: Vec<std::net::SocketAddr> = authority
                    .to_socket_addrs()
                    .map_err(|e| anyhow!("audit.sink: {authority}: {e}"))?
                    .collect();
                if a.is_empty() {
                    bail!("audit.sink: {authority} has no address");
                }
                a
            }
            _ => Vec::new(),
        };
        let (tx, t) = crate::signal::audit::start(
            sink,
            http_addrs,
            c.audit.max_file_bytes,
            c.drift.enabled.then(|| c.drift.clone()),
            board.clone(),
        )?;
        (Some(tx), Some(t))
    } else {
        (None, None)
    };
    Ok(crate::signal::SignalShared {
        board,
        audit,
        audit_interval_ms: c.audit.interval_s.saturating_mul(1000),
        audit_thread,
    })
}

fn signal_loop(
    shared: &Arc<Shared>,
    rt: &Arc<RuntimeConfig>,
    config_path: Option<PathBuf>,
    shards: usize,
    events: &crossbeam_channel::Receiver<Started>,
    plugins: Option<&helios_plugin_host::PluginRuntime>,
    live_config: &helios_admin::LiveConfig,
) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGHUP, SIGINT, SIGTERM])?;
    let mut current = rt.clone();
    let mut plugins = plugins.cloned();
    for sig in signals.forever() {
        match sig {
            SIGHUP => match &config_path {
                Some(path) => match load_runtime(path, Some(shards)) {
                    Ok(mut new) => {
                        // Plugins first: a required plugin that fails to load refuses the whole
                        // reload, before anything else changes.
                        let mut started_plugins = None;
                        match &plugins {
                            Some(p) => {
                                let report = p.reload(&new.config.plugins);
                                log_plugin_report(&report);
                                if !report.applied {
                                    log::error!(
                                        "reload REFUSED, keeping the running configuration: {}",
                                        report
                                            .fail_closed()
                                            .err()
                                            .unwrap_or_else(|| report.warnings.join("; "))
                                    );
                                    continue;
                                }
                            }
                            None if new.config.plugins.enabled => match start_plugins(&new) {
                                Ok(p) => started_plugins = p,
                                Err(e) => {
                                    log::error!(
                                        "reload REFUSED, keeping the running configuration: {e:#}"
                                    );
                                    continue;
                                }
                            },
                            None => {}
                        }
                        report_changes(&current.config, &new.config);
                        // What the shards, the console and /config see is what is in effect.
                        new.config.keep_restart_only(&current.config);
                        let new = Arc::new(new);
                        log_budget(&new);
                        log_tls(&new);
                        crate::backend::lease::configure(&new.config);
                        *live_config.write().unwrap_or_else(|e| e.into_inner()) =
                            serde_json::to_value(&new.config).unwrap_or_default();
                        shared.broadcast(|| ShardMsg::Reload(new.clone()));
                        shared.signal.board.anomaly_enabled.store(
                            new.config.anomaly.enabled,
                            std::sync::atomic::Ordering::Relaxed,
                        );
                        shared.topology.reconfigure(HealthInput {
                            config: new.config.clone(),
                            addrs: new.addrs.clone(),
                            node_tls: new.node_tls.clone(),
                        });
                        if new.config.has_topology() {
                            if let Err(e) = start_checker(shared, &new.config) {
                                log::error!("{e:#}");
                            }
                        }
                        match (&plugins, started_plugins) {
                            (Some(p), _) => {
                                // Shards pick the new plugin set (reloaded above) up at their
                                // next hook call; connections stay open.
                                let names: Vec<String> =
                                    new.config.nodes.iter().map(|n| n.name.clone()).collect();
                                p.set_node_names(&names);
                            }
                            (None, Some(p)) => {
                                // Started without plugins: give every shard its instances;
                                // open sessions use them at once.
                                shared.broadcast(|| ShardMsg::Plugins(p.clone()));
                                plugins = Some(p);
                            }
                            (None, None) => {}
                        }
                        current = new;
                        log::info!("configuration reloaded from {}", path.display());
                    }
                    Err(e) => {
                        log::error!("reload failed, keeping the running configuration: {e:#}")
                    }
                },
                None => log::info!("SIGHUP: no configuration file to reload (quick-start mode)"),
            },
            _ => {
                log::info!("shutting down: no new connections; waiting for running transactions");
                shared.broadcast(|| ShardMsg::Shutdown);
                shared.topology.stop();
                let grace = Duration::from_millis(current.config.server.shutdown_timeout_ms)
                    + Duration::from_secs(2);
                let deadline = std::time::Instant::now() + grace;
                let mut exited = 0;
                while exited < shards {
                    let left = deadline.saturating_duration_since(std::time::Instant::now());
                    match events.recv_timeout(left) {
                        Ok(Started::Exited(..)) => exited += 1,
                        Ok(Started::Ready(_) | Started::Failed(..)) => {}
                        Err(_) => break,
                    }
                }
                // The sessions' last audit summaries are queued: write them.
                shared.signal.finish();
                log::info!("shutdown complete");
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Logs what a reload changes: a warning for each restart-only key (its running value stays),
/// one line naming the keys that apply now. Which is which: `helios_config::reload::APPLY`.
fn report_changes(old: &Config, new: &Config) {
    let mut applied = Vec::new();
    for (key, apply) in helios_config::changed_keys(old, new) {
        match apply {
            Apply::Restart => {
                log::warn!("{key} changed: needs a restart; the old value stays in effect")
            }
            Apply::Reload => applied.push(key),
        }
    }
    if !applied.is_empty() {
        log::info!("reload applies changes to {}", applied.join(", "));
    }
}

/// The admin API's `/topology` and `/api/chaos` over the topology hub: overrides act on every
/// shard's routing. Only while some database has a topology (the configuration in force).
struct TopologyBridge(Arc<crate::backend::topology::TopologyHub>);

impl std::fmt::Debug for TopologyBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TopologyBridge")
    }
}

impl TopologyBridge {
    fn enabled(&self) -> Result<(), helios_admin::ChaosFailure> {
        match self.0.input() {
            Some(i) if i.config.has_topology() => Ok(()),
            _ => Err(helios_admin::ChaosFailure::NotEnabled(
                "no database has a topology (a `nodes` list of two or more, or \
                 read_write_split): overrides would change no routing"
                    .into(),
            )),
        }
    }
}

impl helios_admin::TopologyControl for TopologyBridge {
    fn topology(&self) -> Option<serde_json::Value> {
        self.enabled().ok()?;
        Some(self.0.topology_json())
    }

    fn chaos_state(&self) -> Result<serde_json::Value, helios_admin::ChaosFailure> {
        self.enabled()?;
        Ok(self.0.chaos_state())
    }

    fn chaos(&self, body: &[u8]) -> Result<serde_json::Value, helios_admin::ChaosFailure> {
        use crate::backend::topology::ChaosError;
        self.enabled()?;
        self.0.chaos(body).map_err(|e| match e {
            ChaosError::Malformed(m) => helios_admin::ChaosFailure::Malformed(m),
            ChaosError::UnknownNode(n) => helios_admin::ChaosFailure::UnknownNode(n.to_string()),
        })
    }
}

/// The admin API's `/plugins/{name}/kv/{key}` over the plugin host's KV store.
struct PluginKvBridge(helios_plugin_host::PluginRuntime);

impl std::fmt::Debug for PluginKvBridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PluginKvBridge")
    }
}

fn kv_failure(e: helios_plugin_host::KvError) -> helios_admin::KvFailure {
    use helios_admin::KvFailure as F;
    use helios_plugin_host::KvError as E;
    let m = e.to_string();
    match e {
        E::UnknownPlugin(_) => F::UnknownPlugin(m),
        E::KeyTooLong { .. } | E::ValueTooLarge { .. } => F::TooLarge(m),
        E::TooManyKeys { .. } | E::NamespaceFull { .. } => F::Full(m),
        _ => F::Unavailable(m),
    }
}

impl helios_admin::PluginKv for PluginKvBridge {
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, helios_admin::KvFailure> {
        self.0.kv_get(plugin, key).map_err(kv_failure)
    }
    fn put(&self, plugin: &str, key: &[u8], value: &[u8]) -> Result<(), helios_admin::KvFailure> {
        self.0.kv_put(plugin, key, value).map_err(kv_failure)
    }
    fn delete(&self, plugin: &str, key: &[u8]) -> Result<(), helios_admin::KvFailure> {
        self.0.kv_delete(plugin, key).map_err(kv_failure)
    }
    fn catalog(&self) -> Vec<helios_admin::PluginMeta> {
        self.0
            .plugins()
            .into_iter()
            .map(|p| helios_admin::PluginMeta {
                name: p.name,
                version: p.version,
                hooks: p.hooks.iter().map(|h| h.to_string()).collect(),
                signer: p.signed_by,
                sha256: p.wasm_sha256,
                source: p.source.display().to_string(),
            })
            .collect()
    }
}

/// Asks the scheduler to give the calling (shard) thread `us`-microsecond slices
/// (`server.sched_slice_us`), keeping its policy and nice value. 0 leaves the kernel's default.
fn request_sched_slice(shard: usize, us: u32) {
    if us == 0 {
        return;
    }
    let size = std::mem::size_of::<libc::sched_attr>() as u32;
    // SAFETY: sched_attr is plain data; the kernel fills at most `size` bytes of it.
    let mut attr: libc::sched_attr = unsafe { std::mem::zeroed() };
    let got = unsafe { libc::syscall(libc::SYS_sched_getattr, 0, &mut attr, size, 0) };
    if got != 0 {
        log::warn!(
            "shard {shard}: sched_getattr failed ({}): keeping the kernel's time slice",
            std::io::Error::last_os_error()
        );
        return;
    }
    let policy = attr.sched_policy as i32;
    if policy != libc::SCHED_OTHER && policy != libc::SCHED_BATCH {
        log::info!("shard {shard}: scheduling policy {policy} set from outside: slice left alone");
        return;
    }
    attr.size = size;
    attr.sched_runtime = u64::from(us) * 1000;
    // SAFETY: a valid sched_attr for this thread (pid 0), policy and nice as read above.
    let set = unsafe { libc::syscall(libc::SYS_sched_setattr, 0, &attr, 0) };
    if set != 0 {
        log::warn!(
            "shard {shard}: asking for a {us} µs time slice failed ({}): kernel default kept",
            std::io::Error::last_os_error()
        );
    } else if shard == 0 {
        log::info!("shard threads run with a {us} µs scheduler time slice");
    }
}

/// Where shard `i` of `shards` runs: on a CPU of its own when there are at least as many shards
/// as CPUs (round robin beyond that); with fewer shards, on its share of the CPUs (every
/// `shards`-th), so that one shard on a two-CPU host can run wherever the scheduler finds room
/// instead of waiting behind the backends on CPU 0 while CPU 1 idles (measured: docs/io-uring.md,
/// session 5). With no CPUs given (not pinned, or the list is unknown) it runs anywhere.
fn shard_placement(i: usize, shards: usize, cpus: &[usize]) -> Placement {
    if cpus.is_empty() {
        return Placement::Unbound;
    }
    if shards >= cpus.len() {
        return Placement::Fixed(cpus[i % cpus.len()]);
    }
    let mine: Vec<usize> = cpus.iter().copied().skip(i).step_by(shards).collect();
    log::info!("shard {i} runs on CPUs {mine:?}");
    match CpuSet::online() {
        Ok(set) => Placement::Fenced(set.filter(|l| mine.contains(&l.cpu))),
        Err(_) => Placement::Fixed(mine[0]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str) -> Config {
        let text = format!(
            "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"up\"\nhost = \"{host}\"\nport = 6543\n[databases.app]\n"
        );
        Config::parse(&text, Path::new("t.toml"), &|_| None).unwrap()
    }

    #[test]
    fn node_names_resolve_when_the_config_is_loaded() {
        let rt = runtime_config(config("localhost"), Userlist::new(), 1).unwrap();
        let addrs = &rt.addrs["up"];
        assert!(
            !addrs.is_empty()
                && addrs
                    .iter()
                    .all(|a| a.ip().is_loopback() && a.port() == 6543),
            "{addrs:?}"
        );
        // What a pool connects to is what was resolved here.
        let s = rt.pool_settings("app", "u", 0, None).unwrap();
        assert_eq!(&s.target.addrs, addrs);
        let e = runtime_config(config("no-such-host.invalid"), Userlist::new(), 1)
            .map(|_| ())
            .unwrap_err();
        let e = format!("{e:#}");
        assert!(
            e.contains("node \"up\"") && e.contains("no-such-host.invalid"),
            "{e}"
        );
    }

    /// Name resolution blocks: only this module (the thread that loads the configuration) may
    /// do it, never code that runs on a shard.
    #[test]
    fn only_the_config_loader_resolves_names() {
        fn scan(dir: &Path, hits: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    scan(&p, hits);
                } else if p.extension().is_some_and(|x| x == "rs") && !p.ends_with("runtime/mod.rs")
                {
                    let text = std::fs::read_to_string(&p).unwrap();
                    for needle in ["to_socket_addrs", "lookup_host", "getaddrinfo"] {
                        if text.contains(needle) {
                            hits.push(format!("{}: {needle}", p.display()));
                        }
                    }
                }
            }
        }
        let mut hits = Vec::new();
        scan(
            &Path::new(env!("CARGO_MANIFEST_DIR")).join("src"),
            &mut hits,
        );
        assert!(
            hits.is_empty(),
            "name resolution outside runtime/mod.rs: {hits:?}"
        );
    }
}
