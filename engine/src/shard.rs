//! A shard: one glommio executor pinned to one CPU, owning its SO_REUSEPORT listeners, the
//! client sessions it accepted, its upstream pools and its prepared-statement registry.
//!
//! Shards share nothing mutable on the hot path. They talk over bounded crossbeam channels, one
//! inbox per shard, each with an `AtomicWaker` doorbell so a message wakes the shard without any
//! busy polling (glommio wakers may be woken from any thread). Later features hang their
//! per-shard state here too (anomaly windows, plugin instance caches, histograms).

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Poll, Waker};
use std::time::Duration;

use atomic_waker::AtomicWaker;
use crossbeam_channel::Sender;
use helios_config::{AuthMethod, Config, Secret, Userlist};

use crate::auth::ScramKeys;
use crate::backend::pool::{Pool, PoolSettings};
use crate::backend::server::{BackendKey, ServerTarget};
use crate::backend::topology::{Topology, TopologyHub};
use crate::ids::{BackendPid, ClientPid};

/// What every shard reads: the configuration as loaded (replaced whole on reload).
pub struct RuntimeConfig {
    pub config: Config,
    pub users: Userlist,
    pub shards: usize,
    /// Every node's addresses, by node name: resolved where the configuration is loaded
    /// (`runtime::runtime_config`, start-up and reload), never on a shard.
    pub addrs: HashMap<String, Vec<SocketAddr>>,
    /// `[tls]` with its certificates loaded (start-up and reload, never on a shard).
    pub client_tls: crate::net::tls::ClientTls,
    /// Each node's TLS settings, loaded (nodes with `tls = "disable"` are absent).
    pub node_tls: HashMap<String, crate::net::tls::UpstreamTls>,
    /// `auth.hba`, parsed (start-up and reload).
    pub hba: Option<Arc<helios_config::hba::Hba>>,
}

impl RuntimeConfig {
    /// This shard's share of `total`: the remainder goes to the lowest-numbered shards, and
    /// every shard gets at least one (so no shard refuses a client outright).
    pub fn share(&self, total: usize, shard: usize) -> usize {
        let base = total / self.shards;
        let extra = usize::from(shard < total % self.shards);
        (base + extra).max(usize::from(total > 0))
    }

    /// Pool settings on `shard` for clients of `alias` logging in as `user`, on the database's
    /// node or on `node` (a route plugin's choice).
    pub fn pool_settings(
        &self,
        alias: &str,
        user: &str,
        shard: usize,
        node: Option<&str>,
    ) -> Option<PoolSettings> {
        let db = self.config.databases.get(alias)?;
        let node = match node {
            Some(n) => self.config.nodes.iter().find(|x| x.name == n)?,
            None => self.config.node_for(db),
        };
        let (upstream_user, password) = match &db.user {
            Some(u) => (u.clone(), db.password.clone()),
            None => (
                user.to_string(),
                match self.users.get(user).map(|u| &u.secret) {
                    Some(Secret::Plain(p)) => Some(p.clone()),
                    _ => None,
                },
            ),
        };
        Some(PoolSettings {
            alias: alias.to_string(),
            mode: db.pool_mode,
            target: ServerTarget {
                node: node.name.clone(),
                host: node.host.clone(),
                port: node.port,
                addrs: self.addrs.get(&node.name).cloned().unwrap_or_default(),
                dbname: db.dbname.clone().unwrap_or_else(|| alias.to_string()),
                user: upstream_user,
                password,
                connect_timeout: Duration::from_millis(node.connect_timeout_ms),
                tls: self.node_tls.get(&node.name).cloned(),
                startup: db.context_startup(),
                lease: crate::backend::lease::cell(alias).map(crate::backend::lease::LeaseRef),
            },
            max_size: self.share(db.pool_size, shard),
            min_idle: match db.min_idle() {
                0 => 0,
                n => self.share(n, shard),
            },
            idle_timeout: Duration::from_millis(db.idle_timeout_ms()),
            max_lifetime: Duration::from_millis(db.max_lifetime_ms()),
            checkout_timeout: Duration::from_millis(db.checkout_timeout_ms),
            prepared_cap: db.prepared_statements_per_connection,
            max_frame: 1 << 30,
        })
    }

    pub fn auth_method(&self) -> AuthMethod {
        self.config.auth.method
    }
}

/// Messages between shards (and from the signal thread).
pub enum ShardMsg {
    /// A CancelRequest that arrived on another shard for a client of this one.
    Cancel { pid: ClientPid, secret: i32 },
    /// New configuration (SIGHUP).
    Reload(Arc<RuntimeConfig>),
    /// SIGTERM: stop accepting, let transactions finish, then close.
    Shutdown,
    /// `POST /histograms/reset`: drop what this interval recorded.
    ResetHistograms,
    /// Plugins were enabled by a reload: instantiate them on this shard.
    Plugins(helios_plugin_host::PluginRuntime),
    /// A client connection another shard accepted while it had more clients than this one
    /// (already counted in `Shared::sessions` for this shard).
    Adopt(std::net::TcpStream),
    /// The nodes' roles and health changed (health checker, chaos): route by this from now on.
    Topology(Arc<Topology>),
    /// Another shard's statements per tenant in its finished seconds: the rate windows judge a
    /// tenant against its whole traffic (docs/signal.md).
    Rates(Arc<crate::signal::RateReport>),
}

/// The process-wide part: channels to every shard and the global client count.
pub struct Shared {
    pub inboxes: Vec<Sender<ShardMsg>>,
    pub doorbells: Vec<Arc<AtomicWaker>>,
    pub clients: AtomicUsize,
    /// Client sessions per shard (including those handed over and not yet started): where
    /// a newly accepted client goes.
    pub sessions: Vec<AtomicUsize>,
    /// To the admin thread, if it runs: one snapshot per shard per interval.
    pub snapshots: Option<Sender<helios_admin::ShardSnapshot>>,
    pub snapshot_interval: Duration,
    /// What the psql console shows: the same snapshots, merged (locked once per shard per
    /// interval and per console command; never on the query path).
    pub console_state: std::sync::Mutex<helios_admin::AdminState>,
    /// Console PAUSE/RESUME, read by every shard's pools.
    pub pauses: Arc<crate::backend::pool::Pauses>,
    /// Nodes disabled through the admin API, read by every shard's pools at checkout.
    pub node_switches: Arc<helios_admin::NodeSwitches>,
    /// The health checker's results and the chaos overrides (never read on the query path:
    /// shards route by their own copy, `Shard::topology`).
    pub topology: Arc<TopologyHub>,
    /// The write journal's sink (`[journal] enabled`; pipeline/journal.rs).
    pub journal: Option<crate::journal::JournalSink>,
    /// The signal plane's board and audit queue (docs/signal.md).
    pub signal: crate::signal::SignalShared,
}

impl Shared {
    /// Delivers `msg` to shard `to`; false if its inbox is full or gone.
    ///
    /// Measured: 477 ns per message one way between two glommio executors, 13.8 µs per round trip (benches/benches/channel.rs).
    pub fn send(&self, to: usize, msg: ShardMsg) -> bool {
        let Some(tx) = self.inboxes.get(to) else {
            return false;
        };
        let ok = tx.try_send(msg).is_ok();
        self.doorbells[to].wake();
        ok
    }

    /// The shard with the fewest clients if it has fewer than `from` (the kernel spreads
    /// connections over the shards' listeners by a hash of their addresses, which leaves one
    /// shard with noticeably more clients than another, and with them its share of the pool).
    pub fn lighter_than(&self, from: usize) -> Option<usize> {
        let mine = self.sessions[from].load(Ordering::Relaxed);
        let (to, least) = self
            .sessions
            .iter()
            .map(|n| n.load(Ordering::Relaxed))
            .enumerate()
            .min_by_key(|&(i, n)| (n, i != from))?;
        (least < mine).then_some(to)
    }

    pub fn broadcast(&self, msg: impl Fn() -> ShardMsg) {
        for i in 0..self.inboxes.len() {
            if !self.send(i, msg()) {
                log::error!("shard {i}: inbox full, control message dropped");
            }
        }
    }
}

/// A one-shot, many-waiter flag for shutdown.
#[derive(Default)]
pub struct Latch {
    set: Cell<bool>,
    waiters: RefCell<Vec<Waker>>,
}

impl Latch {
    pub fn set(&self) {
        self.set.set(true);
        for w in self.waiters.borrow_mut().drain(..) {
            w.wake();
        }
    }

    pub fn is_set(&self) -> bool {
        self.set.get()
    }

    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> Poll<()> {
        if self.set.get() {
            return Poll::Ready(());
        }
        // Long-lived tasks (the accept loops) poll this again and again: keep one waker each.
        let mut w = self.waiters.borrow_mut();
        if !w.iter().any(|x| x.will_wake(cx.waker())) {
            w.push(cx.waker().clone());
        }
        Poll::Pending
    }

    pub async fn wait(&self) {
        std::future::poll_fn(|cx| self.poll(cx)).await
    }
}

/// A client's cancel key, the backend currently serving it, and what `/clients` and
/// `SHOW CLIENTS` show of it.
pub struct CancelEntry {
    pub secret: i32,
    pub target: Rc<Cell<Option<BackendKey>>>,
    pub meta: Rc<ClientMeta>,
}

/// A client as the admin surfaces show it.
pub struct ClientMeta {
    pub user: String,
    pub database: String,
    pub application_name: String,
    pub addr: String,
    /// Unix seconds.
    pub connected_at: u64,
    /// `idle`, `waiting` (for a server connection) or `active` (holds one).
    pub state: Cell<&'static str>,
    /// The server connection it holds: id, backend pid, unix seconds it was opened.
    pub server: Cell<Option<(u64, BackendPid, u64)>>,
    /// The session task's waker, woken at shutdown.
    pub waker: RefCell<Option<Waker>>,
}

pub use crate::proto::prepared::{Statement, StatementRegistry};

pub struct Shard {
    pub id: usize,
    pub shared: Arc<Shared>,
    pub config: RefCell<Arc<RuntimeConfig>>,
    /// Keyed by (alias, upstream user, node).
    pools: RefCell<HashMap<(String, String, String), Rc<Pool>>>,
    server_ids: Rc<Cell<u64>>,
    pub cancels: RefCell<HashMap<ClientPid, CancelEntry>>,
    next_client: Cell<u32>,
    pub statements: RefCell<StatementRegistry>,
    /// SCRAM verifiers derived from plain-text userlist passwords (4096 PBKDF2 rounds each:
    /// derived once per user and password, not per login).
    pub scram_cache: RefCell<HashMap<String, (String, ScramKeys)>>,
    pub shutdown: Latch,
    /// Client sessions alive on this shard.
    pub sessions: Cell<usize>,
    /// The shard's io_uring ring (`io.backend = "uring"` on a kernel that has what it needs).
    pub ring: RefCell<Option<Rc<helios_uring::Ring>>>,
    /// Histograms and counters, sent to the admin thread every snapshot interval.
    pub stats: crate::stats::ShardStats,
    /// This shard's plugin instances (`[plugins] enabled`).
    pub plugins: RefCell<Option<helios_plugin_host::ShardPlugins>>,
    /// Tables / read-only verdicts per statement fingerprint, for plugin inputs.
    pub analysis: RefCell<crate::sql::analyze::AnalysisCache>,
    /// Request ids for plugin hooks (the shard id is in the top bits).
    pub request_seq: Cell<u64>,
    /// Clients' start-up session settings, shared between clients that sent the same ones:
    /// a server connection last used by any of them then matches with a pointer comparison.
    param_sets: RefCell<Vec<Rc<ParamMap>>>,
    /// This shard's copy of the topology (`ShardMsg::Topology`): what the route stage reads.
    pub topology: RefCell<Arc<Topology>>,
    /// The shard's turn counter for spreading reads over replicas.
    pub route_seq: Cell<u64>,
    /// Anomaly detection's windows, fingerprints and pending events (docs/signal.md).
    pub signal: RefCell<crate::signal::ShardSignal>,
}

/// Session parameters by name, values quoted as SQL literals.
pub use crate::proto::prepared::ParamMap;

/// Distinct start-up settings kept for sharing; more only cost a full comparison per checkout.
const MAX_PARAM_SETS: usize = 64;

impl Shard {
    pub fn new(id: usize, shared: Arc<Shared>, config: Arc<RuntimeConfig>) -> Rc<Shard> {
        Rc::new(Shard {
            id,
            config: RefCell::new(config),
            pools: RefCell::new(HashMap::new()),
            server_ids: Rc::new(Cell::new((id as u64) << 48)),
            cancels: RefCell::new(HashMap::new()),
            next_client: Cell::new(0),
            statements: RefCell::new(StatementRegistry::default()),
            scram_cache: RefCell::new(HashMap::new()),
            shutdown: Latch::default(),
            sessions: Cell::new(0),
            ring: RefCell::new(None),
            stats: crate::stats::ShardStats::default(),
            plugins: RefCell::new(None),
            analysis: RefCell::new(Default::default()),
            request_seq: Cell::new(0),
            param_sets: RefCell::new(Vec::new()),
            topology: RefCell::new(shared.topology.snapshot()),
            route_seq: Cell::new(0),
            signal: RefCell::new(crate::signal::ShardSignal::new(id)),
            shared,
        })
    }

    /// `params`, shared with earlier clients that started with the same settings.
    pub fn shared_params(&self, params: ParamMap) -> Rc<ParamMap> {
        let mut sets = self.param_sets.borrow_mut();
        if let Some(p) = sets.iter().find(|p| ***p == params) {
            return p.clone();
        }
        let p = Rc::new(params);
        if sets.len() == MAX_PARAM_SETS {
            sets.remove(0);
        }
        sets.push(p.clone());
        p
    }

    pub fn config(&self) -> Arc<RuntimeConfig> {
        self.config.borrow().clone()
    }

    /// The pool for (alias, user), created on first use: on the database's node, or — for a
    /// database with a topology — its current primary, else its first usable node (a client
    /// logging in during a failover is not refused for the node that went down).
    pub fn pool(&self, alias: &str, user: &str) -> Option<Rc<Pool>> {
        let node = {
            let t = self.topology.borrow();
            let cfg = self.config();
            let db = cfg.config.databases.get(alias)?;
            if db.nodes.len() > 1 || db.read_write_split {
                t.primary_of(alias).map(|n| n.name.clone()).or_else(|| {
                    cfg.config
                        .nodes_of(db)
                        .iter()
                        .find(|n| t.index(&n.name).is_some_and(|i| t.nodes[i].usable()))
                        .map(|n| n.name.clone())
                })
            } else {
                None
            }
        };
        self.pool_on(alias, user, node.as_deref())
    }

    /// The pool for (alias, user) on `node` instead of the database's own node.
    pub fn pool_on(&self, alias: &str, user: &str, node: Option<&str>) -> Option<Rc<Pool>> {
        let cfg = self.config();
        let settings = cfg.pool_settings(alias, user, self.id, node)?;
        let key = (
            alias.to_string(),
            settings.target.user.clone(),
            settings.target.node.clone(),
        );
        let mut pools = self.pools.borrow_mut();
        Some(
            pools
                .entry(key)
                .or_insert_with(|| {
                    Rc::new(
                        Pool::new(
                            settings,
                            self.server_ids.clone(),
                            self.ring.borrow().clone(),
                        )
                        .with_pauses(self.shared.pauses.clone())
                        .with_switches(self.shared.node_switches.clone()),
                    )
                })
                .clone(),
        )
    }

    pub fn pools(&self) -> Vec<Rc<Pool>> {
        self.pools.borrow().values().cloned().collect()
    }

    /// A fresh cancel key for a client: the process id names this shard in its top byte.
    pub fn register_client(
        &self,
        target: Rc<Cell<Option<BackendKey>>>,
        meta: Rc<ClientMeta>,
    ) -> (ClientPid, i32) {
        let mut cancels = self.cancels.borrow_mut();
        loop {
            let seq = self.next_client.get().wrapping_add(1) & 0x3F_FFFF;
            self.next_client.set(seq);
            let pid = ClientPid::new(self.id, seq);
            if pid.0 != 0 && !cancels.contains_key(&pid) {
                let secret: i32 = rand::random();
                cancels.insert(
                    pid,
                    CancelEntry {
                        secret,
                        target,
                        meta,
                    },
                );
                return (pid, secret);
            }
        }
    }

    pub fn unregister_client(&self, pid: ClientPid) {
        self.cancels.borrow_mut().remove(&pid);
    }

    /// The shard that owns a proxy-issued process id.
    pub fn owner_of(pid: ClientPid) -> usize {
        pid.shard()
    }

    /// Forwards a cancel to the backend serving the client, if the key matches.
    pub fn cancel_local(&self, pid: ClientPid, secret: i32) {
        let key = {
            let cancels = self.cancels.borrow();
            match cancels.get(&pid) {
                Some(e) if e.secret == secret => e.target.get(),
                _ => {
                    log::debug!("cancel for unknown client key {pid}");
                    None
                }
            }
        };
        if let Some(key) = key {
            glommio::spawn_local(async move {
                if let Err(e) = send_cancel(key).await {
                    log::warn!("cancel to {}: {e}", key.addr);
                }
            })
            .detach();
        }
    }

    /// A new topology snapshot: routing uses it from the next statement on; pools to nodes
    /// that stopped being usable lose their idle connections.
    pub fn set_topology(&self, t: Arc<Topology>) {
        let old = std::mem::replace(&mut *self.topology.borrow_mut(), t.clone());
        // A node that failed its health checks (not one forced down by chaos): statements
        // waiting on its connections end now (their sessions see the socket close and tell
        // their clients 08006), instead of hanging on a server that does not answer.
        let cfg = self.config();
        for n in t.nodes.iter().filter(|n| !n.healthy) {
            let was_healthy = old
                .nodes
                .iter()
                .find(|o| o.name == n.name)
                .is_some_and(|o| o.healthy);
            let Some(addrs) = cfg.addrs.get(&n.name).filter(|_| was_healthy) else {
                continue;
            };
            let mut cut = 0;
            for e in self.cancels.borrow().values() {
                if let Some(k) = e.target.get() {
                    if k.fd >= 0 && addrs.contains(&k.addr) {
                        // SAFETY: the session holds this connection while its cancel target
                        // is set (both change together, on this thread).
                        unsafe { libc::shutdown(k.fd, libc::SHUT_RDWR) };
                        cut += 1;
                    }
                }
            }
            if cut > 0 {
                log::warn!(
                    "shard {}: node {} failed its health checks: ended {cut} statements waiting on it",
                    self.id,
                    n.name
                );
            }
        }
        for n in t.nodes.iter().filter(|n| !n.usable()) {
            let was_up = old
                .nodes
                .iter()
                .find(|o| o.name == n.name)
                .is_none_or(|o| o.usable());
            if !was_up {
                continue;
            }
            for ((_, _, node), pool) in self.pools.borrow().iter() {
                if node == &n.name {
                    let closed = pool.drain_idle();
                    if closed > 0 {
                        log::info!(
                            "shard {}: node {node} is down: closed {closed} idle connections",
                            self.id
                        );
                    }
                }
            }
        }
    }

    /// Applies a new configuration: pool sizes and targets change in place, open
    /// connections stay.
    pub fn reload(&self, cfg: Arc<RuntimeConfig>) {
        for ((alias, user, node), pool) in self.pools.borrow().iter() {
            match cfg.pool_settings(alias, user, self.id, Some(node.as_str())) {
                Some(mut s) => {
                    let old = pool.settings.borrow().clone();
                    // A pool keyed by its upstream user keeps that user.
                    s.target.user = old.target.user.clone();
                    if s != old {
                        log::info!(
                            "shard {}: pool {alias}/{user}: size {} -> {}, node {}:{} -> {}:{}",
                            self.id,
                            old.max_size,
                            s.max_size,
                            old.target.host,
                            old.target.port,
                            s.target.host,
                            s.target.port
                        );
                        *pool.settings.borrow_mut() = s;
                    }
                }
                None => log::warn!(
                    "shard {}: database {alias} was removed from the configuration; its open connections stay until their clients leave",
                    self.id
                ),
            }
        }
        self.scram_cache.borrow_mut().clear();
        *self.config.borrow_mut() = cfg;
    }
}

async fn send_cancel(key: BackendKey) -> std::io::Result<()> {
    use futures_lite::AsyncWriteExt;
    let mut s = glommio::net::TcpStream::connect(key.addr).await?;
    let mut b = Vec::with_capacity(16);
    b.extend_from_slice(&16i32.to_be_bytes());
    b.extend_from_slice(&crate::net::codec::CANCEL_REQUEST.to_be_bytes());
    b.extend_from_slice(&key.pid.0.to_be_bytes());
    b.extend_from_slice(&key.secret.to_be_bytes());
    s.write_all(&b).await?;
    s.flush().await?;
    // The server closes the connection once it has read the request.
    let mut buf = [0u8; 1];
    let _ = futures_lite::AsyncReadExt::read(&mut s, &mut buf).await;
    Ok(())
}
