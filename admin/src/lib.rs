//! The admin thread: one blocking thread, on no shard, that merges the statistics snapshots every
//! shard sends and serves them over a small HTTP API (`docs/admin-api.md`).
//!
//! Data flows one way on the hot path: each shard owns its counters and histograms, and once per
//! `admin.snapshot_interval_ms` moves them into a [`ShardSnapshot`] sent over a bounded crossbeam
//! channel. The admin thread never touches shard memory; it answers from its merged
//! [`AdminState`]. Commands go the other way over a second channel ([`AdminCommand`]).
//!
//! The thread runs until every `Sender<ShardSnapshot>` is dropped (the engine has stopped), then
//! closes its socket and returns.
//!
//! This crate does not depend on the engine (the engine depends on it).

pub mod api;
pub mod http;
pub mod openapi;
pub mod render;
pub mod replay;
pub mod signal;
pub mod snapshot;
pub mod sql;
pub mod state;

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TryRecvError};
use helios_config::AdminConfig;

pub use api::Api;
pub use render::{hgrm, hgrm_scaled, prometheus, LatencySummary};
pub use signal::{AnomalyEvent, DriftAlert, SignalBoard};
pub use snapshot::{
    new_histogram, record_us, AdminCommand, ClientInfo, Counters, Metric, NodeStatus,
    PluginShardStats, PoolStats, ServerInfo, ShardSnapshot,
};
pub use state::{AdminState, MergedNode, Topology, Window};

/// Why a plugin KV request failed, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvFailure {
    /// No loaded plugin has this name (404).
    UnknownPlugin(String),
    /// A cap refused the write (413 for a value or key too large, 507 for a full namespace).
    TooLarge(String),
    Full(String),
    /// The store is behind or stopped (503).
    Unavailable(String),
}

/// The plugins' KV store as the admin API reaches it: the engine implements this over the plugin
/// host, so the admin crate stays free of wasmtime. Keys and values are bytes; the API takes
/// keys from the path (percent-decoded) and values from the request body.
pub trait PluginKv: Send + Sync + std::fmt::Debug {
    fn get(&self, plugin: &str, key: &[u8]) -> Result<Option<Vec<u8>>, KvFailure>;
    fn put(&self, plugin: &str, key: &[u8], value: &[u8]) -> Result<(), KvFailure>;
    fn delete(&self, plugin: &str, key: &[u8]) -> Result<(), KvFailure>;
    /// The plugins loaded now, in call order (`GET /plugins`).
    fn catalog(&self) -> Vec<PluginMeta>;
}

/// What `GET /plugins` says about a loaded plugin besides its counters.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct PluginMeta {
    pub name: String,
    pub version: Option<String>,
    pub hooks: Vec<String>,
    /// Trust-root label of the signer (null: unsigned, no trust root configured).
    pub signer: Option<String>,
    pub sha256: String,
    pub source: String,
}

/// Why a chaos request was refused, with the HTTP status it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChaosFailure {
    /// A body that is not `{"action": …}` as documented (400).
    Malformed(String),
    /// No configured node has that name (404).
    UnknownNode(String),
    /// No database has a topology, so no routing would change (503).
    NotEnabled(String),
}

/// The engine's topology as the admin API reaches it (`/topology`, `/api/chaos`): the engine
/// implements this over its topology hub, whose overrides act on every shard's routing.
pub trait TopologyControl: Send + Sync + std::fmt::Debug {
    /// `GET /topology` when some database has a topology (None: the shards' view is served).
    fn topology(&self) -> Option<serde_json::Value>;
    /// `GET /api/chaos`: the overrides in force.
    fn chaos_state(&self) -> Result<serde_json::Value, ChaosFailure>;
    /// `POST /api/chaos`.
    fn chaos(&self, body: &[u8]) -> Result<serde_json::Value, ChaosFailure>;
}

/// Nodes an operator disabled (`POST /nodes/{name}/disable`): one state for the admin thread
/// and every shard. A shard's pool reads it at each checkout: one atomic load while no node is
/// disabled, a mutex only while one is.
#[derive(Debug, Default)]
pub struct NodeSwitches {
    any: std::sync::atomic::AtomicBool,
    disabled: std::sync::Mutex<std::collections::BTreeSet<String>>,
}

impl NodeSwitches {
    /// Enables or disables `node`; true if that changed anything.
    pub fn set(&self, node: &str, enabled: bool) -> bool {
        let mut d = self.disabled.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if enabled {
            d.remove(node)
        } else {
            d.insert(node.to_string())
        };
        self.any
            .store(!d.is_empty(), std::sync::atomic::Ordering::Release);
        changed
    }

    pub fn is_disabled(&self, node: &str) -> bool {
        if !self.any.load(std::sync::atomic::Ordering::Acquire) {
            return false;
        }
        self.disabled
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(node)
    }
}

/// The configuration as JSON (secrets already redacted), replaced by the engine on reload.
pub type LiveConfig = std::sync::Arc<std::sync::RwLock<serde_json::Value>>;

/// Wraps a configuration value for [`StaticInfo::config_json`].
pub fn live_config(v: serde_json::Value) -> LiveConfig {
    std::sync::Arc::new(std::sync::RwLock::new(v))
}

/// What the admin serves that never changes while the process runs (the configuration is
/// swapped in place on reload).
#[derive(Clone, Debug)]
pub struct StaticInfo {
    pub version: String,
    /// The configuration, secrets already redacted by the engine.
    pub config_json: LiveConfig,
    /// The plugin KV store, when plugins are enabled (`/plugins/{name}/kv/{key}`; 503 without).
    pub plugin_kv: Option<std::sync::Arc<dyn PluginKv>>,
    pub shards: usize,
    /// Shared with the shards' pools: `POST /nodes/{name}/enable|disable`.
    pub node_switches: std::sync::Arc<NodeSwitches>,
    /// The engine's topology (`/topology`, `/api/chaos`; 503 without).
    pub topology: Option<std::sync::Arc<dyn TopologyControl>>,
    /// The signal plane's shared state (`/anomalies`, `/drift`; 503 while off).
    pub signal: Option<std::sync::Arc<SignalBoard>>,
}

/// Binds `cfg.listen` and starts the admin thread.
///
/// Fails (for the engine to report at start-up) if the address does not parse, is taken, or is
/// not loopback while no token is configured. Does not look at `cfg.enabled`: the caller
/// decides whether to start the admin at all.
pub fn spawn(
    cfg: &AdminConfig,
    snapshots: Receiver<ShardSnapshot>,
    commands: Sender<AdminCommand>,
    info: StaticInfo,
) -> io::Result<JoinHandle<()>> {
    let addrs: Vec<SocketAddr> = cfg
        .listen
        .to_socket_addrs()
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("admin.listen = {:?}: {e}", cfg.listen),
            )
        })?
        .collect();
    if cfg.token.is_none() {
        if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("admin.listen = {a} is not loopback and admin.token is not set"),
            ));
        }
    }
    let listener = TcpListener::bind(&addrs[..]).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("admin API cannot listen on {}: {e}", cfg.listen),
        )
    })?;
    spawn_on(listener, cfg, snapshots, commands, info)
}

/// Starts the admin thread on a socket the caller bound (tests bind port 0 and read the port
/// from the listener before handing it over). `cfg.listen` is not used.
pub fn spawn_on(
    listener: TcpListener,
    cfg: &AdminConfig,
    snapshots: Receiver<ShardSnapshot>,
    commands: Sender<AdminCommand>,
    info: StaticInfo,
) -> io::Result<JoinHandle<()>> {
    let local = listener.local_addr()?;
    if cfg.token.is_none() && !local.ip().is_loopback() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("admin API on {local} is not loopback and admin.token is not set"),
        ));
    }
    listener.set_nonblocking(true)?;
    let api = Api::new(info, commands, cfg.token.as_deref(), Instant::now())
        .with_sql(sql::SqlSettings {
            user: cfg.sql_user.clone(),
            password: cfg.sql_password.clone(),
            max_rows: cfg.sql_max_rows,
            timeout: Duration::from_millis(cfg.sql_timeout_ms),
        })
        .with_snapshots(snapshots.clone());
    let max_body = cfg.max_body_bytes;
    let tick = Duration::from_millis(cfg.snapshot_interval_ms.clamp(10, 100));
    std::thread::Builder::new()
        .name("helios-admin".into())
        .spawn(move || {
            log::info!("admin API listening on http://{local}");
            run(listener, api, snapshots, max_body, tick);
            log::info!("admin API on {local} stopped");
        })
}

/// Ingests every snapshot waiting; false once every sender is gone.
fn drain(rx: &Receiver<ShardSnapshot>, state: &mut AdminState) -> bool {
    loop {
        match rx.try_recv() {
            Ok(s) => state.ingest(s, Instant::now()),
            Err(TryRecvError::Empty) => return true,
            Err(TryRecvError::Disconnected) => return false,
        }
    }
}

/// Waits until `listener` has a connection or `tick` passes.
fn wait_readable(listener: &TcpListener, tick: Duration) {
    let mut pfd = libc::pollfd {
        fd: listener.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call. EINTR and timeouts both just
    // return to the loop.
    unsafe { libc::poll(&mut pfd, 1, tick.as_millis() as libc::c_int) };
}

fn run(
    listener: TcpListener,
    mut api: Api,
    snapshots: Receiver<ShardSnapshot>,
    max_body: usize,
    tick: Duration,
) {
    let mut streams = Streams::default();
    while drain(&snapshots, &mut api.state) {
        streams.push_events(&mut api);
        wait_readable(&listener, tick);
        loop {
            match listener.accept() {
                Ok((stream, _)) => {
                    if let Some(s) = serve(stream, &mut api, &snapshots, max_body) {
                        streams.add(s);
                    }
                    if !drain(&snapshots, &mut api.state) {
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Out of descriptors and the like: do not spin on a listener that stays
                    // readable.
                    log::warn!("admin API accept: {e}");
                    std::thread::sleep(tick);
                    break;
                }
            }
        }
    }
}

/// Open `/anomalies/stream` connections: each new event (and drift alert) is written to every
/// one as a server-sent event. Writes never block the admin thread: a client that does not
/// keep up (its socket buffer full) or went away is dropped.
#[derive(Default)]
struct Streams {
    open: Vec<TcpStream>,
    /// When the last keep-alive comment went out.
    ping: Option<Instant>,
}

/// Most `/anomalies/stream` clients at once; a new one replaces the oldest.
const MAX_STREAMS: usize = 8;

impl Streams {
    fn add(&mut self, s: TcpStream) {
        if self.open.len() == MAX_STREAMS {
            self.open.remove(0);
        }
        self.open.push(s);
    }

    fn push_events(&mut self, api: &mut Api) {
        if self.open.is_empty() {
            return;
        }
        let mut out = Vec::new();
        for e in api.state.signal.take_fresh() {
            out.extend_from_slice(b"event: anomaly\ndata: ");
            out.extend_from_slice(&serde_json::to_vec(&e).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        }
        for a in api.drift_alerts_fresh() {
            out.extend_from_slice(b"event: drift\ndata: ");
            out.extend_from_slice(&serde_json::to_vec(&a).unwrap_or_default());
            out.extend_from_slice(b"\n\n");
        }
        if out.is_empty()
            && self
                .ping
                .is_some_and(|p| p.elapsed() < Duration::from_secs(15))
        {
            return;
        }
        if out.is_empty() {
            out.extend_from_slice(b": keep-alive\n\n");
        }
        self.ping = Some(Instant::now());
        self.open.retain_mut(|s| {
            use std::io::Write;
            matches!(s.write(&out), Ok(n) if n == out.len())
        });
    }
}

/// Serves one request; a `/anomalies/stream` connection is handed back to stay open.
fn serve(
    mut stream: TcpStream,
    api: &mut Api,
    snapshots: &Receiver<ShardSnapshot>,
    max_body: usize,
) -> Option<TcpStream> {
    if stream.set_nonblocking(false).is_err() {
        return None;
    }
    let _ = stream.set_nodelay(true);
    match http::read_request(&mut stream, max_body) {
        Ok(req) => {
            drain(snapshots, &mut api.state);
            let resp = api.handle(&req, Instant::now());
            if resp.status == 200 && resp.content_type == api::EVENT_STREAM && req.method == "GET" {
                use std::io::Write;
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\nConnection: keep-alive\r\n\r\n{}",
                    String::from_utf8_lossy(&resp.body)
                );
                let _ = stream.set_write_timeout(Some(http::REQUEST_DEADLINE));
                if stream.write_all(head.as_bytes()).is_err()
                    || stream.set_nonblocking(true).is_err()
                {
                    return None;
                }
                return Some(stream);
            }
            http::write_response(&mut stream, &resp, req.method == "HEAD", false);
        }
        Err(http::ReadError::Reject(resp)) => {
            http::write_response(&mut stream, &resp, false, true);
        }
        Err(http::ReadError::Io(e)) => log::debug!("admin API: reading a request: {e}"),
    }
    None
}
