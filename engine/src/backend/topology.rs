//! The nodes' roles and health as every shard routes by them: immutable snapshots
//! ([`Topology`], shared by `Arc`) built by the health checker (backend/health.rs) and the chaos
//! overrides, handed to each shard over its inbox (`ShardMsg::Topology`). A shard reads its own
//! copy (`Shard::topology`, a `RefCell` on that thread): no lock on the query path.
//!
//! [`TopologyHub`] is the one place where the checker's results and the operator's overrides
//! meet; it lives in `Shared` so the admin thread, the psql console and the checker reach it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use helios_config::{Config, NodeRole, TagValue};

/// A node's role as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Primary,
    Replica,
    /// `role = "auto"` and no probe has answered yet: it serves nothing.
    Unknown,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Unknown => "unknown",
        }
    }
}

/// One node in a snapshot.
#[derive(Clone, Debug)]
pub struct NodeState {
    pub name: String,
    pub configured: NodeRole,
    pub role: Role,
    /// By the health checker's thresholds.
    pub healthy: bool,
    /// Chaos: forced unhealthy by the operator (`TopologyHub::force_unhealthy`).
    pub forced_down: bool,
    /// It says it is a primary while another node of one of its databases is that database's
    /// primary (an old primary back after a failover): nothing is routed to it.
    pub fenced: bool,
    /// Bytes the replica's replay position is behind the primary's current WAL position.
    pub lag_bytes: Option<u64>,
    /// Milliseconds since the replica replayed its last transaction while it has received WAL
    /// it has not replayed (0 when it has replayed everything it received).
    pub lag_ms: Option<u64>,
    /// The replica's replay position at its last probe (read-your-writes compares commit
    /// positions with it).
    pub replay_lsn: Option<u64>,
    pub weight: u32,
    pub tags: BTreeMap<String, TagValue>,
    /// Why the last probe failed, if it did.
    pub last_error: Option<String>,
    /// Unix milliseconds of the last probe (0: none yet).
    pub checked_at_ms: u64,
}

impl NodeState {
    /// Whether new transactions may go to it.
    pub fn usable(&self) -> bool {
        self.healthy && !self.forced_down && !self.fenced
    }
}

/// What every shard routes by.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    /// In configuration order.
    pub nodes: Vec<NodeState>,
    /// Bumped by every publication.
    pub version: u64,
    /// Unix milliseconds of the last change of the current primary (none yet).
    pub last_failover_at_ms: Option<u64>,
    /// Changes of a database's primary since start.
    pub failovers: u64,
    /// Each database's primary (alias, node index): sticky — it stays while it answers as a
    /// primary, so a second node claiming to be one is fenced, never written to.
    pub db_primary: Vec<(String, Option<usize>)>,
}

impl Topology {
    /// The configured view before any probe: static roles healthy, `auto` nodes unknown.
    pub fn from_config(cfg: &Config) -> Topology {
        Topology {
            nodes: cfg
                .nodes
                .iter()
                .map(|n| NodeState {
                    name: n.name.clone(),
                    configured: n.role,
                    role: match n.role {
                        NodeRole::Primary => Role::Primary,
                        NodeRole::Replica => Role::Replica,
                        NodeRole::Auto => Role::Unknown,
                    },
                    healthy: n.role != NodeRole::Auto,
                    forced_down: false,
                    fenced: false,
                    lag_bytes: None,
                    lag_ms: None,
                    replay_lsn: None,
                    weight: n.weight,
                    tags: n.tags.clone(),
                    last_error: None,
                    checked_at_ms: 0,
                })
                .collect(),
            version: 0,
            last_failover_at_ms: None,
            failovers: 0,
            db_primary: Vec::new(),
        }
    }

    /// The usable primary of database `alias`.
    pub fn primary_of(&self, alias: &str) -> Option<&NodeState> {
        let (_, i) = self.db_primary.iter().find(|(a, _)| a == alias)?;
        self.nodes.get((*i)?).filter(|n| n.usable())
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// The first usable primary, in configuration order.
    pub fn current_primary(&self) -> Option<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.role == Role::Primary && n.usable())
    }

    /// The first usable node whose tag `tag` is set (`vector = true`).
    pub fn tagged(&self, tag: &str) -> Option<&NodeState> {
        self.nodes
            .iter()
            .find(|n| n.usable() && n.tags.get(tag).is_some_and(TagValue::is_set))
    }
}

/// Chaos on a node the configuration does not name.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("no node is named {0:?}")]
pub struct UnknownNode(pub String);

/// Why a chaos request was refused: the admin API answers 400 or 404 with the message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChaosError {
    /// HTTP 400.
    #[error("{0}")]
    Malformed(String),
    /// HTTP 404.
    #[error(transparent)]
    UnknownNode(#[from] UnknownNode),
}

/// What the health checker reads before each round.
pub struct HealthInput {
    pub config: Config,
    /// Every node's addresses, resolved where the configuration was loaded.
    pub addrs: HashMap<String, Vec<SocketAddr>>,
    /// Each node's TLS settings, loaded (the checker connects as the pools do).
    pub node_tls: HashMap<String, crate::net::tls::UpstreamTls>,
}

type Publish = Box<dyn Fn(Arc<Topology>) + Send + Sync>;

struct HubState {
    /// The checker's last view (no overrides).
    probed: Topology,
    /// Nodes the operator forced unhealthy.
    forced: BTreeSet<String>,
    /// Each database's current (or last) primary, by node name.
    sticky: BTreeMap<String, String>,
    /// What the shards have: `probed` with the overrides.
    published: Arc<Topology>,
}

/// Where the checker's results and the operator's overrides meet (thread-safe; never touched
/// by the query path).
pub struct TopologyHub {
    state: Mutex<HubState>,
    input: Mutex<Option<Arc<HealthInput>>>,
    publish: Mutex<Option<Publish>>,
    /// The process is stopping: the checker ends.
    pub stopping: AtomicBool,
    /// The checker thread was started.
    pub running: AtomicBool,
}

impl TopologyHub {
    pub fn new(input: HealthInput) -> TopologyHub {
        let probed = Topology::from_config(&input.config);
        let hub = TopologyHub {
            state: Mutex::new(HubState {
                published: Arc::new(probed.clone()),
                probed,
                forced: BTreeSet::new(),
                sticky: BTreeMap::new(),
            }),
            input: Mutex::new(Some(Arc::new(input))),
            publish: Mutex::new(None),
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(false),
        };
        // Each database's primary as configured, until the checker says otherwise.
        let first = hub.lock().probed.clone();
        hub.update(first);
        hub
    }

    /// How snapshots reach the shards (the runtime sends each over every shard's inbox).
    pub fn set_publisher(&self, f: impl Fn(Arc<Topology>) + Send + Sync + 'static) {
        *self.publish.lock().unwrap_or_else(|e| e.into_inner()) = Some(Box::new(f));
    }

    /// The snapshot the shards route by now.
    pub fn snapshot(&self) -> Arc<Topology> {
        self.lock().published.clone()
    }

    /// A hub with no nodes (benchmarks, tests that build a `Shared` by hand).
    pub fn empty() -> TopologyHub {
        TopologyHub {
            state: Mutex::new(HubState {
                probed: Topology::default(),
                forced: BTreeSet::new(),
                sticky: BTreeMap::new(),
                published: Arc::new(Topology::default()),
            }),
            input: Mutex::new(None),
            publish: Mutex::new(None),
            stopping: AtomicBool::new(false),
            running: AtomicBool::new(false),
        }
    }

    pub fn input(&self) -> Option<Arc<HealthInput>> {
        self.input.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// A reload: nodes that stay keep their state, new ones start from their configuration,
    /// removed ones go (and their overrides with them).
    pub fn reconfigure(&self, input: HealthInput) {
        let mut fresh = Topology::from_config(&input.config);
        {
            let mut st = self.lock();
            for n in fresh.nodes.iter_mut() {
                if let Some(old) = st.probed.nodes.iter().find(|o| o.name == n.name) {
                    if old.configured == n.configured {
                        n.role = old.role;
                        n.healthy = old.healthy;
                        n.lag_bytes = old.lag_bytes;
                        n.lag_ms = old.lag_ms;
                        n.replay_lsn = old.replay_lsn;
                        n.last_error.clone_from(&old.last_error);
                        n.checked_at_ms = old.checked_at_ms;
                    }
                }
            }
            fresh.last_failover_at_ms = st.probed.last_failover_at_ms;
            fresh.failovers = st.probed.failovers;
            let names: BTreeSet<String> = fresh.nodes.iter().map(|n| n.name.clone()).collect();
            st.forced.retain(|n| names.contains(n));
        }
        *self.input.lock().unwrap_or_else(|e| e.into_inner()) = Some(Arc::new(input));
        self.update(fresh);
    }

    /// The checker's new view; published if anything routing depends on changed. Each
    /// database keeps its primary while that node answers as a primary; when it stops, the
    /// first of its nodes that answers as a primary takes over (a failover, timed); any other
    /// node claiming to be a primary is fenced.
    pub fn update(&self, mut probed: Topology) {
        let input = self.input();
        let mut st = self.lock();
        probed.last_failover_at_ms = st.probed.last_failover_at_ms;
        probed.failovers = st.probed.failovers;
        let mut primaries = Vec::new();
        if let Some(input) = &input {
            let cfg = &input.config;
            for (alias, db) in &cfg.databases {
                let members: Vec<usize> = cfg
                    .nodes_of(db)
                    .iter()
                    .filter_map(|n| probed.index(&n.name))
                    .collect();
                let claims = |i: &usize| {
                    let n = &probed.nodes[*i];
                    n.role == Role::Primary && n.healthy
                };
                let before = st.sticky.get(alias).and_then(|n| probed.index(n));
                let now = before
                    .filter(|i| members.contains(i) && claims(i))
                    .or_else(|| members.iter().copied().find(claims));
                let claimants: Vec<usize> = members.iter().copied().filter(claims).collect();
                for i in claimants {
                    if Some(i) != now {
                        let name = &probed.nodes[i].name;
                        let was = st.probed.nodes.iter().any(|o| &o.name == name && o.fenced);
                        if !was {
                            log::error!(
                                "topology: node {} answers as a primary while {} is database {alias}'s primary: fenced, nothing is routed to it",
                                probed.nodes[i].name,
                                now.map_or("none", |p| probed.nodes[p].name.as_str())
                            );
                        }
                        probed.nodes[i].fenced = true;
                    }
                }
                if let (Some(b), Some(n)) = (before, now) {
                    if b != n {
                        log::warn!(
                            "topology: database {alias}'s primary is now {} (was {})",
                            probed.nodes[n].name,
                            probed.nodes[b].name
                        );
                        probed.last_failover_at_ms = Some(crate::backend::pool::unix_ms());
                        probed.failovers += 1;
                    }
                }
                match now {
                    Some(n) => {
                        st.sticky
                            .insert(alias.clone(), probed.nodes[n].name.clone());
                    }
                    // No primary now: the last one stays remembered, so the one that answers
                    // next is a failover (or the same node back).
                    None if before.is_none() => {
                        st.sticky.remove(alias);
                    }
                    None => {}
                }
                primaries.push((alias.clone(), now));
            }
        }
        probed.db_primary = primaries;
        st.probed = probed;
        self.republish(&mut st, false);
    }

    /// Chaos: the node gets no new transactions on any shard until restored (or reset).
    pub fn force_unhealthy(&self, node: &str) -> Result<(), UnknownNode> {
        self.override_node(node, true)
    }

    /// Chaos: undoes [`TopologyHub::force_unhealthy`]; the checker's view applies again.
    pub fn restore(&self, node: &str) -> Result<(), UnknownNode> {
        self.override_node(node, false)
    }

    /// Chaos: every override removed.
    pub fn reset(&self) {
        let mut st = self.lock();
        st.forced.clear();
        self.republish(&mut st, true);
    }

    /// The nodes forced unhealthy.
    pub fn overrides(&self) -> Vec<String> {
        self.lock().forced.iter().cloned().collect()
    }

    /// `POST /api/chaos` for the admin thread: `{"action":"force_unhealthy"|"restore",
    /// "target_node":"…"}` or `{"action":"reset"}`. Effective on every shard once each has
    /// read its inbox (microseconds). `Ok` carries the overrides now in force.
    pub fn chaos(&self, body: &[u8]) -> Result<serde_json::Value, ChaosError> {
        let v: serde_json::Value = serde_json::from_slice(body)
            .map_err(|e| ChaosError::Malformed(format!("body is not JSON: {e}")))?;
        let action = v
            .get("action")
            .and_then(|a| a.as_str())
            .ok_or_else(|| ChaosError::Malformed("\"action\" (a string) is required".into()))?;
        let node = || {
            v.get("target_node")
                .and_then(|n| n.as_str())
                .ok_or_else(|| {
                    ChaosError::Malformed(format!(
                        "{action}: \"target_node\" (a string) is required"
                    ))
                })
        };
        match action {
            "force_unhealthy" => self.force_unhealthy(node()?)?,
            "restore" => self.restore(node()?)?,
            "reset" => self.reset(),
            a => {
                return Err(ChaosError::Malformed(format!(
                    "unknown action {a:?}: force_unhealthy, restore or reset"
                )))
            }
        }
        Ok(serde_json::json!({ "overrides": self.overrides() }))
    }

    /// `GET /api/chaos`: the overrides in force.
    pub fn chaos_state(&self) -> serde_json::Value {
        serde_json::json!({ "overrides": self.overrides() })
    }

    /// `GET /topology` for the admin thread: the current primary, counts, the last failover
    /// (unix milliseconds), and each node's role, health, lag and tags.
    pub fn topology_json(&self) -> serde_json::Value {
        let t = self.snapshot();
        let healthy = t.nodes.iter().filter(|n| n.usable()).count();
        serde_json::json!({
            "currentPrimary": t.current_primary().map(|n| n.name.clone()),
            "healthyNodes": healthy,
            "unhealthyNodes": t.nodes.len() - healthy,
            "totalNodes": t.nodes.len(),
            "lastFailoverAt": t.last_failover_at_ms,
            "failovers": t.failovers,
            "version": t.version,
            "nodes": t.nodes.iter().map(|n| serde_json::json!({
                "name": n.name,
                "role": n.role.as_str(),
                "configuredRole": format!("{:?}", n.configured).to_lowercase(),
                "healthy": n.usable(),
                "probeHealthy": n.healthy,
                "forcedDown": n.forced_down,
                "fenced": n.fenced,
                "lagBytes": n.lag_bytes,
                "lagMs": n.lag_ms,
                "replayLsn": n.replay_lsn.map(|l| format!("{:X}/{:X}", l >> 32, l & 0xffff_ffff)),
                "weight": n.weight,
                "tags": n.tags.iter().map(|(k, v)| (k.clone(), serde_json::Value::String(v.to_string()))).collect::<serde_json::Map<_, _>>(),
                "lastError": n.last_error,
                "checkedAt": n.checked_at_ms,
            })).collect::<Vec<_>>(),
        })
    }

    fn override_node(&self, node: &str, down: bool) -> Result<(), UnknownNode> {
        let mut st = self.lock();
        if st.probed.index(node).is_none() {
            return Err(UnknownNode(node.to_string()));
        }
        if down {
            st.forced.insert(node.to_string());
        } else {
            st.forced.remove(node);
        }
        log::warn!(
            "chaos: node {node} {}",
            if down { "forced unhealthy" } else { "restored" }
        );
        self.republish(&mut st, true);
        Ok(())
    }

    fn republish(&self, st: &mut HubState, always: bool) {
        let mut next = st.probed.clone();
        for n in next.nodes.iter_mut() {
            n.forced_down = st.forced.contains(&n.name);
        }
        if !always && same_routing(&next, &st.published) {
            // Only probe times or errors changed: keep what the shards have, refresh the copy
            // the console and the admin API show.
            next.version = st.published.version;
            st.published = Arc::new(next);
            return;
        }
        next.version = st.published.version + 1;
        let snap = Arc::new(next);
        st.published = snap.clone();
        if let Some(p) = self
            .publish
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            p(snap);
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HubState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }
}

/// Whether two snapshots route the same (lag counts: replicas over a limit are skipped; replay
/// positions count: read-your-writes compares them).
fn same_routing(a: &Topology, b: &Topology) -> bool {
    a.nodes.len() == b.nodes.len()
        && a.last_failover_at_ms == b.last_failover_at_ms
        && a.failovers == b.failovers
        && a.db_primary == b.db_primary
        && a.nodes.iter().zip(&b.nodes).all(|(x, y)| {
            x.name == y.name
                && x.role == y.role
                && x.healthy == y.healthy
                && x.forced_down == y.forced_down
                && x.fenced == y.fenced
                && x.lag_bytes == y.lag_bytes
                && x.lag_ms == y.lag_ms
                && x.replay_lsn == y.replay_lsn
                && x.weight == y.weight
                && x.tags == y.tags
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;
    use std::sync::atomic::AtomicUsize;

    fn cfg() -> Config {
        Config::parse(
            r#"
            [auth]
            method = "trust"
            [[nodes]]
            name = "p"
            host = "127.0.0.1"
            [[nodes]]
            name = "r"
            host = "127.0.0.1"
            role = "replica"
            tags = { vector = true }
            [[nodes]]
            name = "a"
            host = "127.0.0.1"
            role = "auto"
            [databases.app]
            nodes = ["p", "r", "a"]
            "#,
            Path::new("t.toml"),
            &|_| None,
        )
        .unwrap()
    }

    #[test]
    fn overrides_publish_at_once_and_survive_probes() {
        let hub = TopologyHub::new(HealthInput {
            config: cfg(),
            addrs: HashMap::new(),
            node_tls: HashMap::new(),
        });
        let sent = Arc::new(AtomicUsize::new(0));
        let s = sent.clone();
        hub.set_publisher(move |_| {
            s.fetch_add(1, Ordering::Relaxed);
        });
        let t = hub.snapshot();
        assert_eq!(t.current_primary().unwrap().name, "p");
        assert_eq!(t.nodes[2].role, Role::Unknown);
        assert_eq!(t.tagged("vector").unwrap().name, "r");
        hub.force_unhealthy("r").unwrap();
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        assert!(!hub.snapshot().nodes[1].usable());
        assert!(hub.snapshot().tagged("vector").is_none());
        assert_eq!(
            hub.force_unhealthy("ghost"),
            Err(UnknownNode("ghost".into()))
        );
        // A probe round that changes nothing keeps the override and sends nothing.
        hub.update(Topology::from_config(&cfg()));
        assert_eq!(sent.load(Ordering::Relaxed), 1);
        assert!(hub.snapshot().nodes[1].forced_down);
        hub.restore("r").unwrap();
        assert!(hub.snapshot().nodes[1].usable());
        hub.force_unhealthy("p").unwrap();
        hub.reset();
        assert!(hub.overrides().is_empty());
        assert!(hub.snapshot().nodes[0].usable());
        assert_eq!(sent.load(Ordering::Relaxed), 4);
    }

    #[test]
    fn the_admin_surface_answers_in_json() {
        let hub = TopologyHub::new(HealthInput {
            config: cfg(),
            addrs: HashMap::new(),
            node_tls: HashMap::new(),
        });
        assert_eq!(
            hub.chaos(br#"{"action":"force_unhealthy","target_node":"r"}"#)
                .unwrap()["overrides"][0],
            "r"
        );
        let t = hub.topology_json();
        assert_eq!(t["currentPrimary"], "p");
        assert_eq!(t["totalNodes"], 3);
        // r forced down, a unknown until probed.
        assert_eq!(t["healthyNodes"], 1);
        assert_eq!(t["nodes"][1]["tags"]["vector"], "true");
        assert_eq!(t["nodes"][1]["forcedDown"], true);
        assert!(matches!(
            hub.chaos(br#"{"action":"restore","target_node":"ghost"}"#),
            Err(ChaosError::UnknownNode(_))
        ));
        for bad in [
            &b"nope"[..],
            br#"{"action":"restore"}"#,
            br#"{"action":"boom"}"#,
            br#"{}"#,
        ] {
            assert!(
                matches!(hub.chaos(bad), Err(ChaosError::Malformed(_))),
                "{bad:?}"
            );
        }
        hub.chaos(br#"{"action":"reset"}"#).unwrap();
        assert_eq!(hub.chaos_state()["overrides"], serde_json::json!([]));
    }

    #[test]
    fn a_new_primary_is_a_failover() {
        let hub = TopologyHub::new(HealthInput {
            config: cfg(),
            addrs: HashMap::new(),
            node_tls: HashMap::new(),
        });
        let mut t = Topology::from_config(&cfg());
        t.nodes[0].healthy = false;
        t.nodes[2].role = Role::Primary;
        t.nodes[2].healthy = true;
        hub.update(t);
        let s = hub.snapshot();
        assert_eq!(s.current_primary().unwrap().name, "a");
        assert_eq!(s.primary_of("app").unwrap().name, "a");
        let failed_over_at = s.last_failover_at_ms;
        assert!(failed_over_at.is_some());
        // The old primary comes back, still a primary: it is fenced, never written to.
        let mut t = Topology::from_config(&cfg());
        t.nodes[2].role = Role::Primary;
        t.nodes[2].healthy = true;
        hub.update(t);
        let s = hub.snapshot();
        assert!(s.nodes[0].fenced && !s.nodes[0].usable());
        assert_eq!(s.primary_of("app").unwrap().name, "a");
        assert_eq!(s.last_failover_at_ms, failed_over_at);
        // No primary answers: none, and the next that does is the new one.
        let mut t = Topology::from_config(&cfg());
        t.nodes[0].healthy = false;
        hub.update(t);
        assert!(hub.snapshot().primary_of("app").is_none());
    }
}
