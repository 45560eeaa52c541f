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
//! replica, not disabled (`POST /nodes/{name}/disable`), and whose lag is within
//! `max_replica_lag_bytes` and `max_replica_lag_ms`, picked by
//! `load_balance`; with none, the primary.
//!
//! Read-your-writes (`read_your_writes_ms`): the stage notes a transaction that ran a statement
//! that may write (`sql::read::may_write`); when it ends, the session reads the primary's WAL position on the same
//! server connection ([`Commit`]) before releasing it: the insert position
//! (`pg_current_wal_insert_lsn()`), at or past the commit record even with
//! `synchronous_commit = off`, where the write position may not have reached it yet. Until the window closes, a replica is
//! eligible for this client only if its replay position (last probe) has reached that
//! position; while the position is being read, or if reading it failed, reads go to the
//! primary. Exact, not timed: a replica's replay position only grows. "The primary" is the database's primary in the topology (sticky: see
//! `TopologyHub::update`); with none usable, the session waits for one when it attaches, up to
//! `failover.timeout_ms`, then SQLSTATE 08006. The decision reads only the shard's own
//! topology copy.

use std::cell::Cell;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use helios_config::{Config, LoadBalance, PoolMode};

use super::{Execution, Stage};
use crate::backend::pool::Pool;
use crate::backend::topology::{Role, Topology};
use crate::error::ProxyError;
use crate::shard::Shard;
use crate::sql::read::{is_read, may_write, route_hint, Hint};
use crate::sql::{self, SessionCommand};

pub struct RouteStage {
    alias: String,
    user: String,
    split: bool,
    balance: LoadBalance,
    max_lag: u64,
    max_lag_ms: u64,
    /// `read_your_writes_ms` (zero: off).
    ryw_window: Duration,
    /// A statement that is not a read ran since the last [`RouteStage::take_commit`].
    wrote: bool,
    /// The last write's commit position and when the window closes.
    ryw: Option<(Commit, Instant)>,
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
            max_lag_ms: db.max_replica_lag_ms,
            ryw_window: Duration::from_millis(if db.read_write_split {
                db.read_your_writes_ms
            } else {
                0
            }),
            wrote: false,
            ryw: None,
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

    fn eligible(&self, shard: &Shard, t: &Topology, i: usize) -> bool {
        let n = &t.nodes[i];
        n.role == Role::Replica
            && n.usable()
            // `POST /nodes/{name}/disable`: one atomic load while no node is disabled.
            && !shard.shared.node_switches.is_disabled(&n.name)
            && (self.max_lag == 0 || n.lag_bytes.is_some_and(|l| l <= self.max_lag))
            && (self.max_lag_ms == 0 || n.lag_ms.is_some_and(|l| l <= self.max_lag_ms))
            && self.ryw.as_ref().is_none_or(|(c, _)| match c.lsn() {
                Some(at) => n.replay_lsn.is_some_and(|r| r >= at),
                None => false,
            })
    }

    /// The session calls this when a transaction ended on a server connection: if read-your-
    /// writes is on and the transaction wrote, the position to fill in (the session reads
    /// `pg_current_wal_insert_lsn()` on that connection) — from now on this client's reads wait for
    /// replicas to reach it.
    fn take_commit(&mut self) -> Option<Commit> {
        if !std::mem::take(&mut self.wrote) {
            return None;
        }
        let c = Commit::default();
        self.ryw = Some((c.clone(), Instant::now() + self.ryw_window));
        Some(c)
    }

    fn replica(&mut self, shard: &Shard, t: &Topology) -> Option<usize> {
        let count = self
            .members
            .iter()
            .filter(|&&i| self.eligible(shard, t, i))
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
                    .filter(|&i| self.eligible(shard, t, i))
                    .nth(k)
            }
            LoadBalance::Weighted => {
                let total: u64 = self
                    .members
                    .iter()
                    .filter(|&&i| self.eligible(shard, t, i))
                    .map(|&i| u64::from(t.nodes[i].weight))
                    .sum();
                let mut k = seq % total.max(1);
                for &i in &self.members {
                    if !self.eligible(shard, t, i) {
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
                    if !self.eligible(shard, t, i) {
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

    fn transaction_ended(&mut self) -> Option<Commit> {
        self.take_commit()
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
        if !self.ryw_window.is_zero() {
            self.wrote |= may_write(&ex.sql, &self.read_only_functions);
            if self
                .ryw
                .as_ref()
                .is_some_and(|(_, end)| Instant::now() >= *end)
            {
                self.ryw = None;
            }
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

/// The primary's WAL position after a client's write: unknown while the session reads it,
/// then the position, or `u64::MAX` (reads go to the primary for the window) if it could not.
#[derive(Clone, Debug, Default)]
pub struct Commit(Rc<Cell<Option<u64>>>);

impl Commit {
    pub fn lsn(&self) -> Option<u64> {
        self.0.get()
    }

    pub fn set(&self, lsn: Option<u64>) {
        self.0.set(Some(lsn.unwrap_or(u64::MAX)));
    }
}
