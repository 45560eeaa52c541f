//! The route stage: which node a database's transaction runs on, for databases with a topology
//! (`nodes` with more than one entry, or `read_write_split`). It runs after the plugin stage, so
//! a plugin's `node`, `primary` or `replica` (`standby`) result is what it acts on.
//!
//! The statement that takes a server connection decides; the session attaches the chosen node's
//! pool only when no server connection is attached, so a transaction stays on its node from its
//! first statement. In order:
//! 1. a plugin chose a node (`node{target}`): that node (a configured one, checked at attach);
//! 2. a plugin said `primary` / `replica`;
//! 3. a leading `/* helios:route=primary|replica */` comment;
//! 4. the session's `SET helios.route = primary|replica` (`default` or `RESET` clears it);
//! 5. with `read_write_split`: a plain read or `BEGIN READ ONLY` (sql/read.rs) → a replica;
//! 6. otherwise the primary.
//!
//! "A replica" is a usable (healthy, not forced down) node of the database whose role is
//! replica and whose lag is within `max_replica_lag_bytes`, picked by `load_balance`; with none,
//! the primary. "The primary" is the database's primary in the topology (sticky: see
//! `TopologyHub::update`); with none usable, the session waits for one when it attaches, up to
//! `failover.timeout_ms`, then SQLSTATE 08006. The decision reads only the shard's own
//! topology copy.

use std::rc::Rc;
use std::sync::Arc;

use helios_config::{Config, LoadBalance, PoolMode};

use super::{Execution, Stage};
use crate::backend::pool::Pool;
use crate::backend::topology::{Role, Topology};
use crate::error::ProxyError;
use crate::shard::Shard;
use crate::sql::read::{is_read, route_hint, Hint};
use crate::sql::{self, SessionCommand};

pub struct RouteStage {
    alias: String,
    user: String,
    split: bool,
    balance: LoadBalance,
    max_lag: u64,
    read_only_functions: Vec<String>,
    /// The database's nodes (by name, in its order).
    nodes: Vec<String>,
    /// `SET helios.route`.
    session: Option<Hint>,
    /// The topology `members` was resolved against.
    seen: Option<Arc<Topology>>,
    /// Indices into `seen.nodes` of the database's nodes.
    members: Vec<usize>,
    /// least_connections: this shard's pool per member (opened lazily).
    pools: Vec<Option<Rc<Pool>>>,
    /// The database's primary in `seen`.
    primary: Option<usize>,
}

impl RouteStage {
    /// The stage for clients of `alias` (logging in as `user`), if the database has a topology.
    pub fn configured(cfg: &Config, alias: &str, user: &str) -> Option<RouteStage> {
        let db = cfg.databases.get(alias)?;
        if db.nodes.len() < 2 && !db.read_write_split {
            return None;
        }
        Some(RouteStage {
            alias: alias.to_string(),
            user: user.to_string(),
            split: db.read_write_split && db.pool_mode == PoolMode::Transaction,
            balance: db.load_balance,
            max_lag: db.max_replica_lag_bytes,
            read_only_functions: db
                .read_only_functions
                .iter()
                .map(|f| f.to_ascii_lowercase())
                .collect(),
            nodes: cfg.nodes_of(db).iter().map(|n| n.name.clone()).collect(),
            session: None,
            seen: None,
            members: Vec::new(),
            pools: Vec::new(),
            primary: None,
        })
    }

    /// Where `sql` goes, by the rules in the module header (without a plugin's say).
    pub fn want(&self, sql: &str, plugin: Option<Hint>) -> Hint {
        if let Some(h) = plugin.or_else(|| route_hint(sql)).or(self.session) {
            return h;
        }
        if self.split && is_read(sql, &self.read_only_functions) {
            Hint::Replica
        } else {
            Hint::Primary
        }
    }

    /// The node index for `want` in `t` (after [`RouteStage::resolve`]).
    pub fn pick(&mut self, shard: &Shard, t: &Topology, want: Hint) -> Option<usize> {
        if want == Hint::Replica {
            if let Some(i) = self.replica(shard, t) {
                return Some(i);
            }
        }
        self.primary(t)
    }

    /// The database's primary (the hub's sticky choice), if usable now.
    fn primary(&self, t: &Topology) -> Option<usize> {
        self.primary.filter(|&i| t.nodes[i].usable())
    }

    fn eligible(&self, t: &Topology, i: usize) -> bool {
        let n = &t.nodes[i];
        n.role == Role::Replica
            && n.usable()
            && (self.max_lag == 0 || n.lag_bytes.is_some_and(|l| l <= self.max_lag))
    }

    fn replica(&mut self, shard: &Shard, t: &Topology) -> Option<usize> {
        let count = self
            .members
            .iter()
            .filter(|&&i| self.eligible(t, i))
            .count();
        if count == 0 {
            return None;
        }
        let seq = shard.route_seq.get();
        shard.route_seq.set(seq.wrapping_add(1));
        match self.balance {
            LoadBalance::RoundRobin => {
                let k = (seq % count as u64) as usize;
                self.members
                    .iter()
                    .copied()
                    .filter(|&i| self.eligible(t, i))
                    .nth(k)
            }
            LoadBalance::Weighted => {
                let total: u64 = self
                    .members
                    .iter()
                    .filter(|&&i| self.eligible(t, i))
                    .map(|&i| u64::from(t.nodes[i].weight))
                    .sum();
                let mut k = seq % total.max(1);
                for &i in &self.members {
                    if !self.eligible(t, i) {
                        continue;
                    }
                    let w = u64::from(t.nodes[i].weight);
                    if k < w {
                        return Some(i);
                    }
                    k -= w;
                }
                None
            }
            LoadBalance::LeastConnections => {
                let mut best: Option<(usize, usize)> = None;
                for j in 0..self.members.len() {
                    let i = self.members[j];
                    if !self.eligible(t, i) {
                        continue;
                    }
                    let busy = self.busy(shard, j, &t.nodes[i].name);
                    // Ties go in turn, so an idle start does not pile on the first replica.
                    let better = match best {
                        None => true,
                        Some((_, b)) => busy < b,
                    };
                    if better {
                        best = Some((i, busy));
                    }
                }
                best.map(|(i, _)| i)
            }
        }
    }

    /// Server connections in use on this shard towards member `j`.
    fn busy(&mut self, shard: &Shard, j: usize, node: &str) -> usize {
        if self.pools[j].is_none() {
            self.pools[j] = shard.pool_on(&self.alias, &self.user, Some(node));
        }
        self.pools[j]
            .as_ref()
            .map_or(0, |p| p.total().saturating_sub(p.idle_count()))
    }

    /// Resolves the database's node names against `t` when the topology changed.
    pub fn resolve(&mut self, t: &Arc<Topology>) {
        if self.seen.as_ref().is_some_and(|s| Arc::ptr_eq(s, t)) {
            return;
        }
        let same_nodes = self.seen.as_ref().is_some_and(|s| {
            s.nodes.len() == t.nodes.len()
                && s.nodes.iter().zip(&t.nodes).all(|(a, b)| a.name == b.name)
        });
        if !same_nodes {
            self.members = self.nodes.iter().filter_map(|n| t.index(n)).collect();
            self.pools = vec![None; self.members.len()];
        }
        self.primary = t
            .db_primary
            .iter()
            .find(|(a, _)| *a == self.alias)
            .and_then(|(_, i)| *i);
        self.seen = Some(t.clone());
    }
}

impl Stage for RouteStage {
    fn active(&self, _shard: &Shard) -> bool {
        true
    }

    fn before(&mut self, shard: &Shard, ex: &mut Execution) -> Result<(), ProxyError> {
        match sql::session_command(&ex.sql) {
            Some(SessionCommand::Set { name, value }) if name == "helios.route" => {
                self.session = Hint::parse(&value);
            }
            Some(SessionCommand::Reset { name }) if name == "helios.route" => self.session = None,
            Some(SessionCommand::ResetAll | SessionCommand::DiscardAll) => self.session = None,
            _ => {}
        }
        if ex.node.is_some() {
            return Ok(());
        }
        // The shard's copy, borrowed: no lock and no reference count on the query path.
        let t = shard.topology.borrow();
        self.resolve(&t);
        let want = self.want(&ex.sql, ex.route);
        match self.pick(shard, &t, want) {
            Some(i) => ex.node = Some(t.nodes[i].name.clone()),
            // No usable primary (and, for a read, no replica): the session waits for one at
            // attach, up to failover.timeout_ms.
            None => ex.await_primary = true,
        }
        Ok(())
    }
}
