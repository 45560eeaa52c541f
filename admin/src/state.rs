//! The admin thread's merged view of every shard's snapshots. Pure: no I/O, no clock of its own
//! (callers pass `Instant`s), so the merge math is tested directly.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::snapshot::{
    ClientInfo, Counters, Metric, NodeStatus, PluginShardStats, PoolStats, ServerInfo,
    ShardSnapshot, HISTOGRAM_HIGH_US, HISTOGRAM_LOW_US, HISTOGRAM_SIGFIG,
};

/// Which stretch of time a merged histogram covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    /// The latest interval of each shard, merged.
    Interval,
    /// Every interval since start (or since the last reset), merged.
    Total,
}

impl Window {
    pub fn name(self) -> &'static str {
        match self {
            Window::Interval => "interval",
            Window::Total => "total",
        }
    }

    pub fn parse(s: &str) -> Option<Window> {
        match s {
            "interval" => Some(Window::Interval),
            "total" => Some(Window::Total),
            _ => None,
        }
    }
}

/// The latest snapshot of one shard, minus what was moved into the totals.
#[derive(Debug)]
struct ShardLatest {
    received_at: Instant,
    interval: Vec<(Metric, String, Histogram<u64>)>,
    counters: Counters,
    pools: Vec<PoolStats>,
    clients: Vec<ClientInfo>,
    servers: Vec<ServerInfo>,
    nodes: Vec<NodeStatus>,
    /// Counters only: each interval's call times went into `AdminState::plugin_time`.
    plugins: Vec<PluginShardStats>,
}

/// One plugin's counters summed over the shards, and its call times since start (or reset).
#[derive(Clone, Debug)]
pub struct MergedPlugin {
    pub name: String,
    pub invocations: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub last_error: Option<String>,
    pub time_us: Histogram<u64>,
}

/// A node merged across shards: the most recent observation wins.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MergedNode {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub role: &'static str,
    pub healthy: bool,
    pub last_error: Option<String>,
    pub last_checked_at_ms: Option<u64>,
    /// Shards whose own last attempt failed.
    pub unhealthy_shards: Vec<usize>,
}

/// `GET /topology`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Topology {
    /// Name of the primary node (None before any shard has reported one).
    pub current_primary: Option<String>,
    pub healthy_nodes: usize,
    pub unhealthy_nodes: usize,
    pub total_nodes: usize,
    /// Unix milliseconds of the last failover; always None until failover exists.
    pub last_failover_at: Option<u64>,
}

/// The merged view. Counters and lists come from each shard's latest snapshot; latency comes
/// from two sets of histograms: the latest interval of each shard (merged on demand), and the
/// running total that every interval is added into as it arrives.
#[derive(Debug)]
pub struct AdminState {
    shards: usize,
    latest: BTreeMap<usize, ShardLatest>,
    /// Since start (or reset), keyed by (metric, database); `None` is every database together.
    total: BTreeMap<(Metric, Option<String>), Histogram<u64>>,
    /// Plugin hook call times since start (or reset), by plugin name.
    plugin_time: BTreeMap<String, Histogram<u64>>,
    reset_at: Option<Instant>,
    /// Anomaly events merged from every shard (admin/src/signal.rs).
    pub signal: crate::signal::SignalState,
}

/// A histogram that accepts anything the shards send (it resizes rather than refusing values).
fn merge_histogram() -> Histogram<u64> {
    let mut h = Histogram::new_with_bounds(HISTOGRAM_LOW_US, HISTOGRAM_HIGH_US, HISTOGRAM_SIGFIG)
        .expect("constant histogram bounds are valid");
    h.auto(true);
    h
}

fn add_into(dst: &mut Histogram<u64>, src: &Histogram<u64>) {
    // Only fails when the destination cannot resize, and merge histograms always can.
    if let Err(e) = dst.add(src) {
        log::warn!("admin: dropping a histogram that does not merge: {e:?}");
    }
}

impl AdminState {
    /// `shards` is how many shards the engine runs (reported even before they all report).
    pub fn new(shards: usize) -> Self {
        AdminState {
            shards,
            latest: BTreeMap::new(),
            total: BTreeMap::new(),
            plugin_time: BTreeMap::new(),
            reset_at: None,
            signal: Default::default(),
        }
    }

    /// Takes in one shard's snapshot: its interval histograms are added to the totals and kept as
    /// that shard's current interval; everything else replaces what the shard sent last.
    pub fn ingest(&mut self, mut snap: ShardSnapshot, now: Instant) {
        self.signal.ingest(std::mem::take(&mut snap.anomalies));
        for p in &mut snap.plugins {
            if !p.time_us.is_empty() {
                add_into(
                    self.plugin_time
                        .entry(p.name.clone())
                        .or_insert_with(merge_histogram),
                    &p.time_us,
                );
            }
            // Keep the counters only: the interval's times are in the totals now.
            p.time_us = Histogram::new(1).expect("1 significant digit is valid");
        }
        for (metric, db, h) in &snap.histograms {
            add_into(
                self.total
                    .entry((*metric, Some(db.clone())))
                    .or_insert_with(merge_histogram),
                h,
            );
            add_into(
                self.total
                    .entry((*metric, None))
                    .or_insert_with(merge_histogram),
                h,
            );
        }
        self.latest.insert(
            snap.shard,
            ShardLatest {
                received_at: now,
                interval: snap.histograms,
                counters: snap.counters,
                pools: snap.pools,
                clients: snap.clients,
                servers: snap.servers,
                nodes: snap.nodes,
                plugins: snap.plugins,
            },
        );
    }

    /// Forgets every latency recorded so far (totals and current intervals). Counters stay:
    /// they are the shards' own and monotonic.
    pub fn reset_histograms(&mut self, now: Instant) {
        self.total.clear();
        self.plugin_time.clear();
        for s in self.latest.values_mut() {
            s.interval.clear();
        }
        self.reset_at = Some(now);
    }

    /// When the histograms were last reset.
    pub fn reset_at(&self) -> Option<Instant> {
        self.reset_at
    }

    /// Shards the engine runs.
    pub fn shards(&self) -> usize {
        self.shards
    }

    /// Shards that have sent at least one snapshot.
    pub fn shards_reporting(&self) -> usize {
        self.latest.len()
    }

    /// Age of the oldest latest snapshot (None before every shard has reported): a shard whose
    /// snapshot grows old is stalled.
    pub fn oldest_snapshot_age(&self, now: Instant) -> Option<Duration> {
        if self.latest.len() < self.shards {
            return None;
        }
        self.latest
            .values()
            .map(|s| now.saturating_duration_since(s.received_at))
            .max()
    }

    /// Databases that have latency recorded, in the totals or a current interval.
    pub fn databases(&self) -> BTreeSet<String> {
        let mut out: BTreeSet<String> =
            self.total.keys().filter_map(|(_, db)| db.clone()).collect();
        for s in self.latest.values() {
            for (_, db, _) in &s.interval {
                out.insert(db.clone());
            }
        }
        out
    }

    /// The merged histogram of `metric` for database `db` (None: every database) over `window`.
    /// Empty (not None) when nothing was recorded.
    pub fn histogram(&self, metric: Metric, db: Option<&str>, window: Window) -> Histogram<u64> {
        let mut out = merge_histogram();
        match window {
            Window::Total => {
                if let Some(h) = self.total.get(&(metric, db.map(str::to_string))) {
                    add_into(&mut out, h);
                }
            }
            Window::Interval => {
                for s in self.latest.values() {
                    for (m, d, h) in &s.interval {
                        if *m == metric && db.is_none_or(|db| db == d) {
                            add_into(&mut out, h);
                        }
                    }
                }
            }
        }
        out
    }

    /// Counters summed over the shards.
    pub fn counters(&self) -> Counters {
        let mut sum = Counters::default();
        for s in self.latest.values() {
            sum.add(&s.counters);
        }
        sum
    }

    /// Each shard's own counters, by shard.
    pub fn shard_counters(&self) -> impl Iterator<Item = (usize, &Counters)> {
        self.latest.iter().map(|(i, s)| (*i, &s.counters))
    }

    /// Every pool of every shard, with its shard.
    pub fn pools(&self) -> impl Iterator<Item = (usize, &PoolStats)> {
        self.latest
            .iter()
            .flat_map(|(i, s)| s.pools.iter().map(move |p| (*i, p)))
    }

    /// Pools summed over the shards, by (database, user, mode); `max_wait_us` is the largest.
    pub fn pools_merged(&self) -> Vec<PoolStats> {
        let mut by: BTreeMap<(&str, &str, &'static str), PoolStats> = BTreeMap::new();
        for (_, p) in self.pools() {
            let m = by
                .entry((&p.database, &p.user, p.mode))
                .or_insert_with(|| PoolStats {
                    database: p.database.clone(),
                    user: p.user.clone(),
                    mode: p.mode,
                    ..PoolStats::default()
                });
            m.pool_size += p.pool_size;
            m.active += p.active;
            m.idle += p.idle;
            m.waiting += p.waiting;
            m.max_wait_us = m.max_wait_us.max(p.max_wait_us);
            m.total_checkouts += p.total_checkouts;
            m.checkout_timeouts += p.checkout_timeouts;
            m.server_connects += p.server_connects;
            m.connect_failures += p.connect_failures;
            // The lease is process-wide: every shard reports the same one.
            m.lease_generation = m.lease_generation.max(p.lease_generation);
            m.lease_expires_at = m.lease_expires_at.max(p.lease_expires_at);
            m.lease_error = m.lease_error.take().or_else(|| p.lease_error.clone());
        }
        by.into_values().collect()
    }

    /// Plugins summed over the shards (counters are each shard's totals since it loaded the
    /// plugin), in the order the first shard lists them.
    pub fn plugins_merged(&self) -> Vec<MergedPlugin> {
        let mut out: Vec<MergedPlugin> = Vec::new();
        for s in self.latest.values() {
            for p in &s.plugins {
                let i = match out.iter().position(|m| m.name == p.name) {
                    Some(i) => i,
                    None => {
                        out.push(MergedPlugin {
                            name: p.name.clone(),
                            invocations: 0,
                            errors: 0,
                            timeouts: 0,
                            last_error: None,
                            time_us: self
                                .plugin_time
                                .get(&p.name)
                                .cloned()
                                .unwrap_or_else(merge_histogram),
                        });
                        out.len() - 1
                    }
                };
                let m = &mut out[i];
                m.invocations += p.invocations;
                m.errors += p.errors;
                m.timeouts += p.timeouts;
                if p.last_error.is_some() {
                    m.last_error.clone_from(&p.last_error);
                }
            }
        }
        out
    }

    /// Every client of every shard.
    pub fn clients(&self) -> impl Iterator<Item = &ClientInfo> {
        self.latest.values().flat_map(|s| s.clients.iter())
    }

    /// Every server connection of every shard, with its shard.
    pub fn servers(&self) -> impl Iterator<Item = (usize, &ServerInfo)> {
        self.latest
            .iter()
            .flat_map(|(i, s)| s.servers.iter().map(move |c| (*i, c)))
    }

    /// Nodes merged across shards, in name order. A node's health is that of the most recent
    /// connection attempt any shard made (ties and attempts without a time: unhealthy wins only
    /// if no shard has a newer success).
    pub fn nodes(&self) -> Vec<MergedNode> {
        let mut by: BTreeMap<&str, (MergedNode, Option<u64>)> = BTreeMap::new();
        for (shard, s) in &self.latest {
            for n in &s.nodes {
                let entry = by.entry(&n.name).or_insert_with(|| {
                    (
                        MergedNode {
                            name: n.name.clone(),
                            host: n.host.clone(),
                            port: n.port,
                            role: n.role,
                            healthy: n.healthy,
                            last_error: n.last_error.clone(),
                            last_checked_at_ms: n.last_checked_at_ms,
                            unhealthy_shards: Vec::new(),
                        },
                        n.last_checked_at_ms,
                    )
                });
                if !n.healthy {
                    entry.0.unhealthy_shards.push(*shard);
                }
                let (merged, newest) = entry;
                // A newer observation wins; at equal times (or both untimed) a failure wins over
                // "none tried yet" but a success wins over an older failure.
                let newer = match (n.last_checked_at_ms, *newest) {
                    (Some(a), Some(b)) => a > b || (a == b && !n.healthy),
                    (Some(_), None) => true,
                    (None, Some(_)) => false,
                    (None, None) => !n.healthy,
                };
                if newer {
                    merged.healthy = n.healthy;
                    merged.last_error = n.last_error.clone();
                    merged.last_checked_at_ms = n.last_checked_at_ms;
                    merged.host = n.host.clone();
                    merged.port = n.port;
                    merged.role = n.role;
                    *newest = n.last_checked_at_ms;
                }
            }
        }
        by.into_values().map(|(n, _)| n).collect()
    }

    /// Counts of the merged nodes, and the primary.
    pub fn topology(&self) -> Topology {
        let nodes = self.nodes();
        let healthy = nodes.iter().filter(|n| n.healthy).count();
        Topology {
            current_primary: nodes
                .iter()
                .find(|n| n.role == "primary")
                .map(|n| n.name.clone()),
            healthy_nodes: healthy,
            unhealthy_nodes: nodes.len() - healthy,
            total_nodes: nodes.len(),
            last_failover_at: None,
        }
    }

    /// Ready to serve: some shard has reported, and some node is healthy.
    pub fn ready(&self) -> Result<(), &'static str> {
        if self.latest.is_empty() {
            return Err("no statistics from the shards yet");
        }
        if !self.nodes().iter().any(|n| n.healthy) {
            return Err("no healthy upstream node");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{new_histogram, record_us};

    fn snap(shard: usize, db: &str, values: &[u64]) -> ShardSnapshot {
        let mut s = ShardSnapshot::new(shard);
        let mut h = new_histogram();
        for v in values {
            record_us(&mut h, *v);
        }
        s.histograms.push((Metric::Query, db.to_string(), h));
        s
    }

    fn node(name: &str, healthy: bool, at: Option<u64>) -> NodeStatus {
        NodeStatus {
            name: name.into(),
            host: "127.0.0.1".into(),
            port: 5432,
            healthy,
            last_error: (!healthy).then(|| "connection refused".to_string()),
            role: "primary",
            last_checked_at_ms: at,
        }
    }

    #[test]
    fn two_shards_add_up_per_db_and_overall() {
        let now = Instant::now();
        let mut st = AdminState::new(2);
        st.ingest(snap(0, "app", &[100, 200, 300]), now);
        st.ingest(snap(1, "app", &[400]), now);
        st.ingest(snap(1, "other", &[5_000]), now); // replaces shard 1's interval
        let all = st.histogram(Metric::Query, None, Window::Total);
        assert_eq!(all.len(), 5);
        assert_eq!(
            st.histogram(Metric::Query, Some("app"), Window::Total)
                .len(),
            4
        );
        assert_eq!(
            st.histogram(Metric::Query, Some("other"), Window::Total)
                .len(),
            1
        );
        assert!(all.equivalent(all.max(), 5_000));
        // Interval: shard 0's only interval plus shard 1's latest.
        let iv = st.histogram(Metric::Query, None, Window::Interval);
        assert_eq!(iv.len(), 4);
        assert_eq!(
            st.histogram(Metric::Query, Some("app"), Window::Interval)
                .len(),
            3
        );
        assert_eq!(st.histogram(Metric::Checkout, None, Window::Total).len(), 0);
        assert_eq!(
            st.databases().into_iter().collect::<Vec<_>>(),
            vec!["app", "other"]
        );
    }

    #[test]
    fn interval_is_latest_of_each_shard_total_accumulates() {
        let now = Instant::now();
        let mut st = AdminState::new(1);
        for i in 1..=10u64 {
            st.ingest(snap(0, "app", &vec![i * 10; i as usize]), now);
        }
        assert_eq!(st.histogram(Metric::Query, None, Window::Total).len(), 55);
        let iv = st.histogram(Metric::Query, None, Window::Interval);
        assert_eq!(iv.len(), 10);
        assert_eq!(iv.min(), 100);
        assert_eq!(st.histogram(Metric::Query, None, Window::Total).min(), 10);
    }

    #[test]
    fn reset_clears_latency_keeps_counters() {
        let now = Instant::now();
        let mut st = AdminState::new(1);
        let mut s = snap(0, "app", &[1, 2, 3]);
        s.counters.queries = 3;
        st.ingest(s, now);
        st.reset_histograms(now);
        assert_eq!(st.histogram(Metric::Query, None, Window::Total).len(), 0);
        assert_eq!(st.histogram(Metric::Query, None, Window::Interval).len(), 0);
        assert_eq!(st.counters().queries, 3);
        assert_eq!(st.reset_at(), Some(now));
        st.ingest(snap(0, "app", &[7]), now);
        assert_eq!(st.histogram(Metric::Query, None, Window::Total).len(), 1);
    }

    #[test]
    fn values_past_the_range_still_merge() {
        let now = Instant::now();
        let mut st = AdminState::new(1);
        let mut s = ShardSnapshot::new(0);
        // A shard using a wider histogram than ours must not be refused.
        let mut h = Histogram::<u64>::new(3).unwrap();
        h.record(3_600_000_000).unwrap();
        s.histograms.push((Metric::Server, "app".into(), h));
        st.ingest(s, now);
        let t = st.histogram(Metric::Server, Some("app"), Window::Total);
        assert_eq!(t.len(), 1);
        assert!(t.max() >= 3_599_000_000);
    }

    #[test]
    fn counters_and_pools_sum() {
        let now = Instant::now();
        let mut st = AdminState::new(2);
        for shard in 0..2 {
            let mut s = ShardSnapshot::new(shard);
            s.counters.queries = 10 * (shard as u64 + 1);
            s.counters.errors_by_class.insert("08".into(), 1);
            s.pools.push(PoolStats {
                database: "app".into(),
                user: "u".into(),
                mode: "transaction",
                pool_size: 5,
                active: 1,
                max_wait_us: 100 * shard as u64,
                ..PoolStats::default()
            });
            st.ingest(s, now);
        }
        let c = st.counters();
        assert_eq!(c.queries, 30);
        assert_eq!(c.errors_by_class["08"], 2);
        let p = st.pools_merged();
        assert_eq!(p.len(), 1);
        assert_eq!(
            (p[0].pool_size, p[0].active, p[0].max_wait_us),
            (10, 2, 100)
        );
        assert_eq!(st.pools().count(), 2);
    }

    #[test]
    fn newest_node_observation_wins() {
        let now = Instant::now();
        let mut st = AdminState::new(3);
        assert_eq!(st.ready(), Err("no statistics from the shards yet"));
        let mut a = ShardSnapshot::new(0);
        a.nodes.push(node("pg1", false, Some(1_000)));
        let mut b = ShardSnapshot::new(1);
        b.nodes.push(node("pg1", true, Some(2_000)));
        let mut c = ShardSnapshot::new(2);
        c.nodes.push(node("pg1", true, None));
        st.ingest(a, now);
        st.ingest(b, now);
        st.ingest(c, now);
        let n = st.nodes();
        assert_eq!(n.len(), 1);
        assert!(n[0].healthy);
        assert_eq!(n[0].unhealthy_shards, vec![0]);
        assert_eq!(st.ready(), Ok(()));

        let mut b = ShardSnapshot::new(1);
        b.nodes.push(node("pg1", false, Some(3_000)));
        st.ingest(b, now);
        assert!(!st.nodes()[0].healthy);
        assert_eq!(st.ready(), Err("no healthy upstream node"));
        let t = st.topology();
        assert_eq!(t.current_primary.as_deref(), Some("pg1"));
        assert_eq!(
            (t.healthy_nodes, t.unhealthy_nodes, t.total_nodes),
            (0, 1, 1)
        );
    }

    #[test]
    fn plugin_counters_sum_and_times_accumulate() {
        let now = Instant::now();
        let mut st = AdminState::new(2);
        for (shard, calls, times) in [(0, 3, &[10u64, 20, 30][..]), (1, 2, &[1000, 2000][..])] {
            let mut s = ShardSnapshot::new(shard);
            let mut h = new_histogram();
            for t in times {
                record_us(&mut h, *t);
            }
            s.plugins.push(PluginShardStats {
                name: "audit".into(),
                invocations: calls,
                errors: shard as u64,
                timeouts: 0,
                last_error: (shard == 1).then(|| "trapped".to_string()),
                time_us: h,
            });
            st.ingest(s, now);
        }
        // A later snapshot of shard 0 with no calls keeps its counters and the times so far.
        let mut s = ShardSnapshot::new(0);
        s.plugins.push(PluginShardStats {
            name: "audit".into(),
            invocations: 3,
            errors: 0,
            timeouts: 0,
            last_error: None,
            time_us: new_histogram(),
        });
        st.ingest(s, now);
        let p = st.plugins_merged();
        assert_eq!(p.len(), 1);
        assert_eq!((p[0].invocations, p[0].errors), (5, 1));
        assert_eq!(p[0].last_error.as_deref(), Some("trapped"));
        assert_eq!(p[0].time_us.len(), 5);
        assert!(p[0].time_us.value_at_quantile(0.99) >= 1990);
        st.reset_histograms(now);
        assert_eq!(st.plugins_merged()[0].time_us.len(), 0);
        assert_eq!(st.plugins_merged()[0].invocations, 5);
    }

    #[test]
    fn untimed_failure_beats_none_tried_yet() {
        let now = Instant::now();
        let mut st = AdminState::new(2);
        let mut a = ShardSnapshot::new(0);
        a.nodes.push(node("pg1", true, None));
        let mut b = ShardSnapshot::new(1);
        b.nodes.push(node("pg1", false, None));
        st.ingest(a, now);
        st.ingest(b, now);
        assert!(!st.nodes()[0].healthy);
    }
}
