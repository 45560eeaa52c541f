//! What each shard sends to the admin thread every `admin.snapshot_interval_ms`, and what the
//! admin thread sends back. Plain data: no locks, no channels, nothing shared between threads.
//!
//! A shard owns its histograms and counters outright (no atomics on the hot path). Once per
//! interval it moves its interval histograms into a [`ShardSnapshot`], starts fresh ones (or
//! `reset()`s recycled ones), and `try_send`s the snapshot over a bounded crossbeam channel; if the
//! channel is full the admin thread is behind and the shard may drop that snapshot (the counters
//! are monotonic, so only one interval of latency is lost).

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Lowest value the latency histograms resolve (1 µs).
pub const HISTOGRAM_LOW_US: u64 = 1;
/// Highest value the latency histograms track (60 s); larger values are clamped to it.
pub const HISTOGRAM_HIGH_US: u64 = 60_000_000;
/// Significant decimal digits kept by the latency histograms (1 % relative error: enough to
/// tell latencies apart, and the counts fit in 20 KiB, so recording stays in cache).
pub const HISTOGRAM_SIGFIG: u8 = 2;

/// A latency histogram as the shards keep it: microseconds, 1 µs ..= 60 s, 2 significant digits,
/// allocated once (2,560 `u64` counts, 20 KiB) and never resized. A shard that hands its
/// histograms over each interval and allocates fresh ones pays that per (metric, database) per
/// interval; sending only the non-empty ones keeps it to the databases that had traffic.
///
/// Measured cost of [`record_us`] into it (`cargo bench -p helios-admin --bench record`, release,
/// the 2-core development VM shared with other builds): 6.2 ns per record with values spread
/// from 20 µs to 2 s (criterion interval 5.9–6.4 ns), 5.0 ns for a repeated value. Three records
/// per query (query, checkout, server) are about 20 ns, against a query round trip of tens of
/// microseconds.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(HISTOGRAM_LOW_US, HISTOGRAM_HIGH_US, HISTOGRAM_SIGFIG)
        .expect("constant histogram bounds are valid")
}

/// Records one latency in microseconds, clamping anything above 60 s to 60 s so a stuck query
/// cannot make recording fail (and the shard never has to handle an error here).
#[inline]
pub fn record_us(h: &mut Histogram<u64>, us: u64) {
    h.saturating_record(us);
}

/// Which latency a histogram measures.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, PartialOrd, Ord)]
pub enum Metric {
    /// Client-perceived: from the first byte of a request to the ReadyForQuery sent back.
    Query,
    /// Time a client waited for a server connection from the pool.
    Checkout,
    /// Server round trip: request forwarded to ReadyForQuery received from the server.
    Server,
}

impl Metric {
    pub const ALL: [Metric; 3] = [Metric::Query, Metric::Checkout, Metric::Server];

    /// The name used in URLs and JSON (`query`, `checkout`, `server`).
    pub fn name(self) -> &'static str {
        match self {
            Metric::Query => "query",
            Metric::Checkout => "checkout",
            Metric::Server => "server",
        }
    }

    pub fn parse(s: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == s)
    }
}

/// Counters of one shard, monotonic since the shard started (except the gauges).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Counters {
    pub connections_accepted: u64,
    /// Refused before authentication finished (limits, bad password, unknown database, …).
    pub connections_refused: u64,
    pub queries: u64,
    pub transactions: u64,
    /// Bytes read from clients.
    pub bytes_in: u64,
    /// Bytes written to clients.
    pub bytes_out: u64,
    /// Errors sent to clients, by SQLSTATE class (the first two characters, e.g. `"08"`).
    pub errors_by_class: BTreeMap<String, u64>,
    /// Gauge: clients connected right now.
    pub clients_active: u64,
    /// The shard's io_uring ring (all zero on the glommio backend): `io_uring_enter` calls,
    /// sleeps on the ring itself (`io.ring_wait_us`), and parks in glommio's reactor.
    pub ring_enters: u64,
    pub ring_waits: u64,
    pub ring_parks: u64,
}

impl Counters {
    /// Adds `other` into `self` (used to sum the shards).
    pub fn add(&mut self, other: &Counters) {
        self.connections_accepted += other.connections_accepted;
        self.connections_refused += other.connections_refused;
        self.queries += other.queries;
        self.transactions += other.transactions;
        self.bytes_in += other.bytes_in;
        self.bytes_out += other.bytes_out;
        for (class, n) in &other.errors_by_class {
            *self.errors_by_class.entry(class.clone()).or_default() += n;
        }
        self.clients_active += other.clients_active;
        self.ring_enters += other.ring_enters;
        self.ring_waits += other.ring_waits;
        self.ring_parks += other.ring_parks;
    }
}

/// One pool (database, user) on one shard.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PoolStats {
    pub database: String,
    pub user: String,
    /// `"session"` or `"transaction"`.
    pub mode: &'static str,
    /// Server connections this shard may open for the pool.
    pub pool_size: u32,
    /// Server connections checked out.
    pub active: u32,
    /// Server connections open and idle in the pool.
    pub idle: u32,
    /// Clients waiting for a server connection.
    pub waiting: u32,
    /// Longest wait of a client still waiting, in microseconds (0 when none waits).
    pub max_wait_us: u64,
    /// Monotonic since start.
    pub total_checkouts: u64,
    /// Monotonic since start: checkouts that gave up after the pool timeout.
    pub checkout_timeouts: u64,
    /// Monotonic since start: server connections opened.
    pub server_connects: u64,
    /// Monotonic since start: server connection attempts that failed.
    pub connect_failures: u64,
    /// Access contexts with `credentials`: the active lease's generation (0: no lease). Server
    /// connections of an older generation are draining (docs/contexts.md).
    pub lease_generation: u64,
    /// When the active lease expires (unix seconds).
    pub lease_expires_at: Option<u64>,
    /// The last credential refresh's failure, until one succeeds (never a secret).
    pub lease_error: Option<String>,
}

/// One client connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ClientInfo {
    /// The process id the proxy gave the client in BackendKeyData.
    pub id: i32,
    pub user: String,
    pub database: String,
    pub application_name: String,
    /// Peer address, `ip:port`.
    pub addr: String,
    /// `"active"` (holds a server connection), `"idle"` or `"waiting"` (for a server connection).
    pub state: &'static str,
    /// Unix time in seconds.
    pub connected_at: u64,
    pub shard: usize,
}

/// One server connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    /// The proxy's id for the connection (unique within its shard).
    pub id: u64,
    /// Name of the node (`[[nodes]] name`).
    pub node: String,
    pub database: String,
    pub user: String,
    /// `"active"` (checked out by a client) or `"idle"`.
    pub state: &'static str,
    /// The server's own process id (from its BackendKeyData).
    pub backend_pid: i32,
    /// Unix time in seconds.
    pub connected_at: u64,
}

/// One upstream node as one shard sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// The last connection attempt from this shard succeeded, or none was tried yet.
    pub healthy: bool,
    /// Error of the last failed attempt, while `healthy` is false.
    pub last_error: Option<String>,
    /// `"primary"` (the only role until replicas exist).
    pub role: &'static str,
    /// Unix time in milliseconds of this shard's last connection attempt (None: none yet).
    /// Shards disagree after a failure; the admin believes the most recent attempt.
    pub last_checked_at_ms: Option<u64>,
}

/// One plugin's counters on one shard (monotonic since the shard loaded it) and the time its hook
/// calls took during the interval.
#[derive(Clone, Debug)]
pub struct PluginShardStats {
    pub name: String,
    pub invocations: u64,
    pub errors: u64,
    pub timeouts: u64,
    pub last_error: Option<String>,
    /// Hook call durations of this interval, microseconds ([`new_histogram`]'s bounds).
    pub time_us: Histogram<u64>,
}

/// Everything one shard reports once per interval.
#[derive(Clone, Debug)]
pub struct ShardSnapshot {
    pub shard: usize,
    /// Histograms of this interval only (the shard resets its own after sending), in
    /// microseconds, per database alias. See [`Metric`].
    pub histograms: Vec<(Metric, String, Histogram<u64>)>,
    pub counters: Counters,
    pub pools: Vec<PoolStats>,
    pub clients: Vec<ClientInfo>,
    pub servers: Vec<ServerInfo>,
    pub nodes: Vec<NodeStatus>,
    /// Per plugin, in call order (empty without plugins).
    pub plugins: Vec<PluginShardStats>,
    /// Anomaly events detected since the last snapshot (empty without `[anomaly]`).
    pub anomalies: Vec<crate::signal::AnomalyEvent>,
}

impl ShardSnapshot {
    /// An empty snapshot for `shard`, to fill in.
    pub fn new(shard: usize) -> Self {
        ShardSnapshot {
            shard,
            histograms: Vec::new(),
            counters: Counters::default(),
            pools: Vec::new(),
            clients: Vec::new(),
            servers: Vec::new(),
            nodes: Vec::new(),
            plugins: Vec::new(),
            anomalies: Vec::new(),
        }
    }
}

/// What the admin thread asks of the engine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AdminCommand {
    /// Reload the configuration, as SIGHUP does.
    Reload,
    /// Someone reset the admin's histograms (`POST /histograms/reset`); shards may drop what they
    /// have recorded in the current interval.
    ResetHistograms,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_size_and_clamping() {
        let mut h = new_histogram();
        assert_eq!(h.distinct_values(), 20 * 128);
        record_us(&mut h, 0);
        record_us(&mut h, 3_600_000_000);
        assert_eq!(h.len(), 2);
        assert!(h.equivalent(h.max(), HISTOGRAM_HIGH_US));
        assert_eq!(Metric::parse("checkout"), Some(Metric::Checkout));
        assert_eq!(Metric::parse("Query"), None);
    }
}
