//! Latency histograms, the report structures, and the output formats (text, `.hgrm`, JSON).
//!
//! Latencies are recorded in nanoseconds with 3 significant digits (HdrHistogram's usual
//! setting: 0.1% value error at every magnitude, a few hundred KiB per histogram); reports show
//! microseconds. Every worker thread owns its histogram and they are merged once at the end, so
//! recording is a plain array increment with no sharing.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// The highest trackable latency: one hour. Longer values are clamped (and would be obvious).
const MAX_NS: u64 = 3_600_000_000_000;

/// A new latency histogram (ns, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds are valid")
}

/// Records `d`, clamping into the trackable range instead of failing.
pub fn record(h: &mut Histogram<u64>, d: Duration) {
    let ns = (d.as_nanos().min(MAX_NS as u128) as u64).max(1);
    h.saturating_record(ns);
}

/// The quantiles we quote, as (label, quantile).
pub const QUANTILES: [(&str, f64); 6] = [
    ("p50", 0.5),
    ("p90", 0.9),
    ("p99", 0.99),
    ("p99.9", 0.999),
    ("p99.99", 0.9999),
    ("p99.999", 0.99999),
];

/// A latency distribution summary, in microseconds.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Latency {
    pub count: u64,
    pub min_us: f64,
    pub mean_us: f64,
    pub stddev_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p99_9_us: f64,
    pub p99_99_us: f64,
    pub p99_999_us: f64,
    pub max_us: f64,
}

impl Latency {
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        let q = |q: f64| us(h.value_at_quantile(q));
        let empty = h.is_empty();
        Latency {
            count: h.len(),
            min_us: if empty { 0.0 } else { us(h.min()) },
            mean_us: h.mean() / 1000.0,
            stddev_us: h.stdev() / 1000.0,
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p99_9_us: q(0.999),
            p99_99_us: q(0.9999),
            p99_999_us: q(0.99999),
            max_us: if empty { 0.0 } else { us(h.max()) },
        }
    }

    /// The quoted percentiles followed by max, in the order of [`QUANTILES`].
    pub fn row(&self) -> [f64; 7] {
        [
            self.p50_us,
            self.p90_us,
            self.p99_us,
            self.p99_9_us,
            self.p99_99_us,
            self.p99_999_us,
            self.max_us,
        ]
    }
}

/// Everything measured against one target.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    /// The target URL with the password blanked.
    pub target: String,
    /// Successful transactions in the measured window.
    pub transactions: u64,
    /// Transactions that ended in an error (server SQLSTATE or client-side).
    pub failed: u64,
    /// Measured wall time (sum over slices in compare mode).
    pub elapsed_s: f64,
    /// Successful transactions per second.
    pub tps: f64,
    /// Error counts by SQLSTATE, or `client:connect` / `client:io` / `client:script`.
    pub errors: BTreeMap<String, u64>,
    /// Open loop: sends scheduled before the end that were never sent (the backlog left when
    /// the run stopped). Their latency is not in the histogram, so a non-zero value means the
    /// target could not keep up and the real tail is worse than reported.
    pub unsent: u64,
    /// Transaction latency. Open loop: from the *intended* send time (coordinated-omission
    /// corrected). Closed loop: from the actual send.
    pub latency: Latency,
    /// Open loop only: from the actual send, i.e. without queueing delay (the uncorrected view,
    /// for comparison — not the number to quote).
    pub service_latency: Option<Latency>,
}

/// The ratios `--compare` prints: B relative to A (A = direct, B = through the proxy).
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// tps(B) / tps(A).
    pub throughput_ratio: f64,
    pub p50_ratio: f64,
    pub p99_ratio: f64,
    pub p99_9_ratio: f64,
    /// p50(B) - p50(A), µs.
    pub p50_added_us: f64,
    pub p90_added_us: f64,
    pub p99_added_us: f64,
    pub p99_9_added_us: f64,
    pub mean_added_us: f64,
}

impl Comparison {
    pub fn of(a: &TargetReport, b: &TargetReport) -> Comparison {
        let ratio = |x: f64, y: f64| if x > 0.0 { y / x } else { f64::NAN };
        let (la, lb) = (&a.latency, &b.latency);
        Comparison {
            throughput_ratio: ratio(a.tps, b.tps),
            p50_ratio: ratio(la.p50_us, lb.p50_us),
            p99_ratio: ratio(la.p99_us, lb.p99_us),
            p99_9_ratio: ratio(la.p99_9_us, lb.p99_9_us),
            p50_added_us: lb.p50_us - la.p50_us,
            p90_added_us: lb.p90_us - la.p90_us,
            p99_added_us: lb.p99_us - la.p99_us,
            p99_9_added_us: lb.p99_9_us - la.p99_9_us,
            mean_added_us: lb.mean_us - la.mean_us,
        }
    }
}

/// The whole run, as written by `--json`.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub tool: &'static str,
    pub workload: String,
    pub protocol: String,
    /// `closed` or `open`.
    pub mode: String,
    /// Open loop: the target rate, transactions/s (over all clients).
    pub rate: Option<f64>,
    pub clients: usize,
    pub connect_per_transaction: bool,
    pub warmup_s: f64,
    pub duration_s: f64,
    /// Compare mode: how many alternating slices each target got.
    pub slices: Option<usize>,
    pub scale: Option<i64>,
    pub targets: Vec<TargetReport>,
    pub comparison: Option<Comparison>,
}

fn fmt_us(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}", v)
    } else {
        format!("{:.1}", v)
    }
}

impl Report {
    /// The human-readable summary printed on stdout.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let rate = self
            .rate
            .map(|r| format!(" at {r} tps (latency from intended send time)"))
            .unwrap_or_default();
        let _ = writeln!(
            o,
            "workload {}, protocol {}, {} loop{rate}, {} client(s){}, {} s measured, {} s warm-up{}",
            self.workload,
            self.protocol,
            self.mode,
            self.clients,
            if self.connect_per_transaction {
                ", connect per transaction"
            } else {
                ""
            },
            self.duration_s,
            self.warmup_s,
            self.slices
                .map(|s| format!(", {s} alternating slices per target"))
                .unwrap_or_default()
        );
        if let Some(s) = self.scale {
            let _ = writeln!(o, "scale {s}");
        }
        let names = ["A", "B"];
        for (i, t) in self.targets.iter().enumerate() {
            let label = if self.targets.len() > 1 {
                format!("[{}] ", names[i])
            } else {
                String::new()
            };
            let _ = writeln!(o, "\n{label}target {}", t.target);
            let _ = writeln!(
                o,
                "  transactions: {} ok, {} failed in {:.3} s",
                t.transactions, t.failed, t.elapsed_s
            );
            let _ = writeln!(o, "  throughput:   {:.1} tps", t.tps);
            if t.errors.is_empty() {
                let _ = writeln!(o, "  errors:       none");
            } else {
                let list: Vec<String> = t.errors.iter().map(|(k, v)| format!("{k}: {v}")).collect();
                let _ = writeln!(o, "  errors:       {}", list.join(", "));
            }
            if t.unsent > 0 {
                let _ = writeln!(
                    o,
                    "  unsent:       {} scheduled sends never went out (target overloaded; the tail is worse than shown)",
                    t.unsent
                );
            }
            o.push_str("  latency (µs)       p50        p90        p99      p99.9     p99.99    p99.999        max       mean\n");
            let mut line = |name: &str, l: &Latency| {
                let _ = write!(o, "  {name:<12}");
                for v in l.row() {
                    let _ = write!(o, " {:>10}", fmt_us(v));
                }
                let _ = writeln!(o, " {:>10}", fmt_us(l.mean_us));
            };
            line(
                if t.service_latency.is_some() {
                    "corrected"
                } else {
                    "latency"
                },
                &t.latency,
            );
            if let Some(s) = &t.service_latency {
                line("service", s);
            }
        }
        if let Some(c) = &self.comparison {
            let _ = writeln!(o, "\nB vs A (B/A ratios; added = B - A)");
            let _ = writeln!(o, "  throughput ratio: {:.4}", c.throughput_ratio);
            let _ = writeln!(
                o,
                "  p50   ratio {:.4}  added {:+.1} µs",
                c.p50_ratio, c.p50_added_us
            );
            let _ = writeln!(
                o,
                "  p99   ratio {:.4}  added {:+.1} µs",
                c.p99_ratio, c.p99_added_us
            );
            let _ = writeln!(
                o,
                "  p99.9 ratio {:.4}  added {:+.1} µs",
                c.p99_9_ratio, c.p99_9_added_us
            );
            let _ = writeln!(o, "  mean  added {:+.1} µs", c.mean_added_us);
        }
        o
    }
}

/// HdrHistogram's percentile-distribution text format (what Java's
/// `outputPercentileDistribution(out, 5, 1e6)` and wrk2 print, and what the HdrHistogram
/// plotter reads), values in milliseconds.
pub fn hgrm(h: &Histogram<u64>) -> String {
    // One writer for the format, shared with the admin API's /histograms?format=hgrm.
    helios_admin::hgrm_scaled(h, 1_000_000.0) // ns -> ms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_and_hgrm() {
        let mut h = new_histogram();
        for i in 1..=10_000u64 {
            record(&mut h, Duration::from_micros(i));
        }
        let l = Latency::of(&h);
        assert_eq!(l.count, 10_000);
        assert!((l.p50_us - 5000.0).abs() < 10.0, "{l:?}");
        assert!((l.p99_us - 9900.0).abs() < 15.0, "{l:?}");
        assert!((l.max_us - 10_000.0).abs() < 15.0, "{l:?}");
        let text = hgrm(&h);
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split_whitespace().collect())
            .collect();
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1].parse::<f64>().unwrap(), 1.0);
        assert_eq!(last[2], "10000");
        assert!(text.contains("Total count    =        10000"));
    }

    #[test]
    fn empty_histogram_is_fine() {
        let h = new_histogram();
        let l = Latency::of(&h);
        assert_eq!(l.count, 0);
        assert!(hgrm(&h).contains("Total count"));
    }

    #[test]
    fn clamps_instead_of_failing() {
        let mut h = new_histogram();
        record(&mut h, Duration::from_secs(100_000));
        record(&mut h, Duration::ZERO);
        assert_eq!(h.len(), 2);
    }
}
