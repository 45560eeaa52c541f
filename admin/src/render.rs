//! Output formats: Prometheus text exposition, HdrHistogram's `.hgrm` percentile distribution,
//! and the JSON latency summary. Pure functions of an [`AdminState`] or a histogram.

use std::fmt::Write;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::snapshot::Metric;
use crate::state::{AdminState, Window};

/// Count, mean and percentiles of a histogram, in microseconds (None when it is empty).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencySummary {
    pub count: u64,
    pub min_us: Option<u64>,
    pub mean_us: Option<f64>,
    pub p50_us: Option<u64>,
    pub p90_us: Option<u64>,
    pub p99_us: Option<u64>,
    pub p99_9_us: Option<u64>,
    pub p99_99_us: Option<u64>,
    pub max_us: Option<u64>,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return LatencySummary {
                count: 0,
                min_us: None,
                mean_us: None,
                p50_us: None,
                p90_us: None,
                p99_us: None,
                p99_9_us: None,
                p99_99_us: None,
                max_us: None,
            };
        }
        let q = |q: f64| Some(h.value_at_quantile(q));
        LatencySummary {
            count: h.len(),
            min_us: Some(h.min()),
            mean_us: Some((h.mean() * 10.0).round() / 10.0),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p99_9_us: q(0.999),
            p99_99_us: q(0.9999),
            max_us: Some(h.max()),
        }
    }
}

/// HdrHistogram's percentile distribution text, exactly as Java's
/// `outputPercentileDistribution(out, 5, 1000.0)` prints it for a histogram recorded in
/// microseconds: values in milliseconds (the unit the HdrHistogram plotter labels its axis with
/// and `helios-loadtest --hgrm` writes), five ticks per half distance, and the `#[Mean …]`,
/// `#[Max …]`, `#[Buckets …]` footer.
pub fn hgrm(h: &Histogram<u64>) -> String {
    hgrm_scaled(h, 1000.0) // µs -> ms
}

/// [`hgrm`] for a histogram recorded in any unit: `units_per_ms` values make one millisecond
/// (1000 for microseconds, as the shards record; 1 000 000 for nanoseconds, as
/// `helios-loadtest` records).
pub fn hgrm_scaled(h: &Histogram<u64>, units_per_ms: f64) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / units_per_ms;
            if q < 1.0 {
                let _ = writeln!(
                    o,
                    "{:12.3} {:2.12} {:10} {:14.2}",
                    value,
                    q,
                    total,
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(o, "{:12.3} {:2.12} {:10}", value, q, total);
            }
        }
    }
    let _ = writeln!(
        o,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / units_per_ms,
        h.stdev() / units_per_ms
    );
    let max = if h.is_empty() { 0 } else { h.max() };
    let _ = writeln!(
        o,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        max as f64 / units_per_ms,
        h.len()
    );
    let _ = writeln!(
        o,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        // The crate keeps sub_bucket_count private; it is the power of two >= 2 * 10^sigfig.
        (2.0 * 10f64.powi(i32::from(h.sigfig())))
            .log2()
            .ceil()
            .exp2() as u64
    );
    o
}

/// Bucket upper bounds of the Prometheus histograms, in seconds: 100 µs to 60 s.
pub const PROMETHEUS_BUCKETS_S: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Quantiles of the Prometheus summaries.
pub const PROMETHEUS_QUANTILES: [f64; 5] = [0.5, 0.9, 0.99, 0.999, 0.9999];

fn metric_family(m: Metric) -> (&'static str, &'static str) {
    match m {
        Metric::Query => (
            "heliosproxy_query_duration_seconds",
            "Client-perceived query latency: first byte of the request to ReadyForQuery sent.",
        ),
        Metric::Checkout => (
            "heliosproxy_pool_checkout_wait_seconds",
            "Time clients waited for a server connection from the pool.",
        ),
        Metric::Server => (
            "heliosproxy_server_round_trip_seconds",
            "Server round trip: request forwarded to ReadyForQuery received.",
        ),
    }
}

/// A label value escaped for the text format (backslash, double quote, newline).
fn esc(v: &str) -> String {
    let mut o = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => o.push_str("\\\\"),
            '"' => o.push_str("\\\""),
            '\n' => o.push_str("\\n"),
            c => o.push(c),
        }
    }
    o
}

/// A float as the text format writes it (`+Inf`, `NaN`, shortest round-trip otherwise).
fn num(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

fn header(o: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(o, "# HELP {name} {help}");
    let _ = writeln!(o, "# TYPE {name} {kind}");
}

/// The topology's metrics (from `GET /topology`'s document, when some database has one):
/// node health, role, lag and overrides, and failovers.
pub fn prometheus_topology(o: &mut String, t: &serde_json::Value) {
    let nodes = t["nodes"].as_array().map(Vec::as_slice).unwrap_or_default();
    let name = |n: &serde_json::Value| esc(n["name"].as_str().unwrap_or_default());
    let flag = |v: &serde_json::Value| u8::from(v.as_bool().unwrap_or(false));
    header(
        o,
        "heliosproxy_topology_node_healthy",
        "gauge",
        "1 when the node takes new transactions (health checks pass, not forced down, not fenced).",
    );
    for n in nodes {
        let _ = writeln!(
            o,
            "heliosproxy_topology_node_healthy{{node=\"{}\"}} {}",
            name(n),
            flag(&n["healthy"])
        );
    }
    header(
        o,
        "heliosproxy_topology_node_role",
        "gauge",
        "1 for the node's current role (primary, replica, unknown).",
    );
    for n in nodes {
        let _ = writeln!(
            o,
            "heliosproxy_topology_node_role{{node=\"{}\",role=\"{}\"}} 1",
            name(n),
            esc(n["role"].as_str().unwrap_or("unknown"))
        );
    }
    header(
        o,
        "heliosproxy_topology_node_forced_down",
        "gauge",
        "1 while chaos (POST /api/chaos, DISABLE NODE) forces the node unhealthy.",
    );
    for n in nodes {
        let _ = writeln!(
            o,
            "heliosproxy_topology_node_forced_down{{node=\"{}\"}} {}",
            name(n),
            flag(&n["forcedDown"])
        );
    }
    for (metric, key, help) in [
        (
            "heliosproxy_topology_replica_lag_bytes",
            "lagBytes",
            "Bytes the replica's replay position is behind the primary's WAL position.",
        ),
        (
            "heliosproxy_topology_replica_lag_ms",
            "lagMs",
            "Age of the replica's last replayed transaction while received WAL waits to be replayed.",
        ),
    ] {
        header(o, metric, "gauge", help);
        for n in nodes {
            if let Some(v) = n[key].as_u64() {
                let _ = writeln!(o, "{metric}{{node=\"{}\"}} {v}", name(n));
            }
        }
    }
    header(
        o,
        "heliosproxy_topology_failovers_total",
        "counter",
        "Changes of a database's primary since start.",
    );
    let _ = writeln!(
        o,
        "heliosproxy_topology_failovers_total {}",
        t["failovers"].as_u64().unwrap_or(0)
    );
    if let Some(at) = t["lastFailoverAt"].as_u64() {
        header(
            o,
            "heliosproxy_topology_last_failover_timestamp_seconds",
            "gauge",
            "Unix time of the last failover.",
        );
        let _ = writeln!(
            o,
            "heliosproxy_topology_last_failover_timestamp_seconds {}",
            num(at as f64 / 1000.0)
        );
    }
}

/// The Prometheus text exposition format (version 0.0.4) of the whole state.
///
/// - Counters are per shard (`shard` label) so an unbalanced shard shows; `sum without (shard)`
///   gives the proxy.
/// - Latency, per database (`db` label): a histogram since start (or the last reset) with fixed
///   buckets from 100 µs to 60 s, and a summary `…_recent_seconds` whose quantiles cover the
///   latest snapshot interval of every shard (NaN when it saw no traffic) and whose `_sum` and
///   `_count` are cumulative like the histogram's, as Prometheus client libraries do.
pub fn prometheus(st: &AdminState) -> String {
    let mut o = String::with_capacity(16 * 1024);

    header(
        &mut o,
        "heliosproxy_shards",
        "gauge",
        "Shards (executors, one per core) the proxy runs.",
    );
    let _ = writeln!(o, "heliosproxy_shards {}", st.shards());
    header(
        &mut o,
        "heliosproxy_shards_reporting",
        "gauge",
        "Shards that have sent statistics to the admin thread.",
    );
    let _ = writeln!(o, "heliosproxy_shards_reporting {}", st.shards_reporting());

    type Get = fn(&crate::snapshot::Counters) -> u64;
    let counters: [(&str, &str, &str, Get); 10] = [
        (
            "heliosproxy_connections_accepted_total",
            "counter",
            "Client connections accepted.",
            |c| c.connections_accepted,
        ),
        (
            "heliosproxy_connections_refused_total",
            "counter",
            "Client connections refused before they were established.",
            |c| c.connections_refused,
        ),
        (
            "heliosproxy_queries_total",
            "counter",
            "Queries completed (ReadyForQuery sent to the client).",
            |c| c.queries,
        ),
        (
            "heliosproxy_transactions_total",
            "counter",
            "Transactions completed.",
            |c| c.transactions,
        ),
        (
            "heliosproxy_client_received_bytes_total",
            "counter",
            "Bytes read from clients.",
            |c| c.bytes_in,
        ),
        (
            "heliosproxy_client_sent_bytes_total",
            "counter",
            "Bytes written to clients.",
            |c| c.bytes_out,
        ),
        (
            "heliosproxy_clients_active",
            "gauge",
            "Clients connected now.",
            |c| c.clients_active,
        ),
        (
            "heliosproxy_ring_enters_total",
            "counter",
            "io_uring_enter calls on the shard's socket ring (0 on the glommio backend).",
            |c| c.ring_enters,
        ),
        (
            "heliosproxy_ring_waits_total",
            "counter",
            "Times the shard slept on its socket ring for the next completion (io.ring_wait_us).",
            |c| c.ring_waits,
        ),
        (
            "heliosproxy_ring_parks_total",
            "counter",
            "Times the shard's ring driver parked in glommio's reactor.",
            |c| c.ring_parks,
        ),
    ];
    for (name, kind, help, get) in counters {
        header(&mut o, name, kind, help);
        for (shard, c) in st.shard_counters() {
            let _ = writeln!(o, "{name}{{shard=\"{shard}\"}} {}", get(c));
        }
    }
    header(
        &mut o,
        "heliosproxy_errors_total",
        "counter",
        "Errors sent to clients, by SQLSTATE class.",
    );
    for (shard, c) in st.shard_counters() {
        for (class, n) in &c.errors_by_class {
            let _ = writeln!(
                o,
                "heliosproxy_errors_total{{shard=\"{shard}\",class=\"{}\"}} {n}",
                esc(class)
            );
        }
    }

    type PoolGet = fn(&crate::snapshot::PoolStats) -> f64;
    let pool: [(&str, &str, &str, PoolGet); 9] = [
        (
            "heliosproxy_pool_size",
            "gauge",
            "Server connections the shard may open for the pool.",
            |p| f64::from(p.pool_size),
        ),
        (
            "heliosproxy_pool_active_connections",
            "gauge",
            "Server connections checked out.",
            |p| f64::from(p.active),
        ),
        (
            "heliosproxy_pool_idle_connections",
            "gauge",
            "Server connections open and idle.",
            |p| f64::from(p.idle),
        ),
        (
            "heliosproxy_pool_waiting_clients",
            "gauge",
            "Clients waiting for a server connection.",
            |p| f64::from(p.waiting),
        ),
        (
            "heliosproxy_pool_max_wait_seconds",
            "gauge",
            "Longest wait of a client still waiting.",
            |p| p.max_wait_us as f64 / 1e6,
        ),
        (
            "heliosproxy_pool_checkouts_total",
            "counter",
            "Server connections checked out of the pool.",
            |p| p.total_checkouts as f64,
        ),
        (
            "heliosproxy_pool_checkout_timeouts_total",
            "counter",
            "Checkouts that gave up after the pool timeout.",
            |p| p.checkout_timeouts as f64,
        ),
        (
            "heliosproxy_pool_server_connects_total",
            "counter",
            "Server connections opened.",
            |p| p.server_connects as f64,
        ),
        (
            "heliosproxy_pool_connect_failures_total",
            "counter",
            "Server connection attempts that failed.",
            |p| p.connect_failures as f64,
        ),
    ];
    for (name, kind, help, get) in pool {
        header(&mut o, name, kind, help);
        for (shard, p) in st.pools() {
            let _ = writeln!(
                o,
                "{name}{{shard=\"{shard}\",db=\"{}\",user=\"{}\",mode=\"{}\"}} {}",
                esc(&p.database),
                esc(&p.user),
                esc(p.mode),
                num(get(p))
            );
        }
    }

    header(
        &mut o,
        "heliosproxy_node_up",
        "gauge",
        "1 when the most recent connection attempt to the node succeeded (or none was tried).",
    );
    for n in st.nodes() {
        let _ = writeln!(
            o,
            "heliosproxy_node_up{{node=\"{}\",role=\"{}\"}} {}",
            esc(&n.name),
            esc(n.role),
            u8::from(n.healthy)
        );
    }

    let dbs = st.databases();
    for metric in Metric::ALL {
        let (name, help) = metric_family(metric);
        header(&mut o, name, "histogram", help);
        for db in &dbs {
            let h = st.histogram(metric, Some(db), Window::Total);
            let db = esc(db);
            for le in PROMETHEUS_BUCKETS_S {
                let le_us = (le * 1e6).round() as u64;
                let n = if h.is_empty() {
                    0
                } else {
                    h.count_between(0, le_us)
                };
                let _ = writeln!(o, "{name}_bucket{{db=\"{db}\",le=\"{}\"}} {n}", num(le));
            }
            let _ = writeln!(o, "{name}_bucket{{db=\"{db}\",le=\"+Inf\"}} {}", h.len());
            let _ = writeln!(o, "{name}_sum{{db=\"{db}\"}} {}", num(sum_s(&h)));
            let _ = writeln!(o, "{name}_count{{db=\"{db}\"}} {}", h.len());
        }
        let recent = name.replace("_seconds", "_recent_seconds");
        header(
            &mut o,
            &recent,
            "summary",
            &format!("{help} Quantiles over the latest snapshot interval."),
        );
        for db in &dbs {
            let db_raw = db;
            let h = st.histogram(metric, Some(db), Window::Interval);
            let db = esc(db);
            for q in PROMETHEUS_QUANTILES {
                let v = if h.is_empty() {
                    f64::NAN
                } else {
                    h.value_at_quantile(q) as f64 / 1e6
                };
                let _ = writeln!(
                    o,
                    "{recent}{{db=\"{db}\",quantile=\"{}\"}} {}",
                    num(q),
                    num(v)
                );
            }
            let t = st.histogram(metric, Some(db_raw), Window::Total);
            let _ = writeln!(o, "{recent}_sum{{db=\"{db}\"}} {}", num(sum_s(&t)));
            let _ = writeln!(o, "{recent}_count{{db=\"{db}\"}} {}", t.len());
        }
    }
    o
}

/// Sum of the recorded values in seconds (HdrHistogram keeps no exact sum: this is the mean of
/// the equivalent values times the count, within the histogram's 1 %).
fn sum_s(h: &Histogram<u64>) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.mean() * h.len() as f64 / 1e6
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{new_histogram, record_us};

    #[test]
    fn hgrm_has_java_columns_and_footer() {
        let mut h = new_histogram();
        for us in 1..=10_000u64 {
            record_us(&mut h, us);
        }
        let text = hgrm(&h);
        let mut lines = text.lines();
        assert_eq!(
            lines.next().unwrap(),
            "       Value     Percentile TotalCount 1/(1-Percentile)"
        );
        assert_eq!(lines.next().unwrap(), "");
        let first: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
        assert_eq!(first, vec!["0.001", "0.000000000000", "1", "1.00"]);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3, "{last:?}");
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "10000");
        // p50 at 5 ms within the histogram's precision (1 %).
        let p50 = rows
            .iter()
            .find(|r| r[1] == "0.500000000000")
            .expect("a 50% row");
        let p50 = p50[0].parse::<f64>().unwrap();
        assert!((p50 - 5.0).abs() <= 0.05, "{p50}");
        assert!(text.contains("#[Mean    =        5.001, StdDeviation   =        2.887]"));
        assert!(text.contains("#[Max     =       10.047, Total count    =        10000]"));
        assert!(text.contains("SubBuckets     =          256]"));
    }

    #[test]
    fn summary_of_empty_is_null() {
        let s = LatencySummary::of(&new_histogram());
        assert_eq!(s.count, 0);
        assert_eq!(s.p99_us, None);
        let j = serde_json::to_value(&s).unwrap();
        assert!(j["p50_us"].is_null());
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(esc("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
        assert_eq!(num(f64::NAN), "NaN");
        assert_eq!(num(0.00025), "0.00025");
        assert_eq!(num(60.0), "60");
    }
}
