//! WardenSense drift over the audit summaries: per (context, user) and window of
//! `drift.window_s` seconds, the features session_count, query_count, error_rate and the
//! average and p95 statement latency; each closed window is compared with the previous
//! `baseline_windows` windows of the same key. Rules:
//!
//! - `error_rate_high`: the window's error rate ≥ `error_rate_high`;
//! - `error_rate_drift`, `latency_drift` (average or p95), `query_volume_drift`: |z| ≥ `z`
//!   against the baseline — once the baseline is full; a baseline whose standard deviation is
//!   0 is stable and raises nothing.
//!
//! Plain data driven by the caller's clock ([`Drift::tick`]): the audit thread passes the wall
//! clock, tests a simulated one.

use std::collections::{BTreeMap, VecDeque};

use helios_admin::DriftAlert;
use helios_config::signal::DriftConfig;

use super::audit::{Latencies, Summary};

/// One window's accumulated activity.
#[derive(Default, Clone, Debug)]
struct Acc {
    sessions: u64,
    queries: u64,
    errors: u64,
    latency: Latencies,
}

/// A closed window's features (`None`: nothing ran, so no rate or latency).
#[derive(Clone, Copy, Debug)]
struct Features {
    sessions: f64,
    queries: f64,
    error_rate: Option<f64>,
    avg_us: Option<f64>,
    p95_us: Option<f64>,
}

impl Acc {
    fn features(&self) -> Features {
        Features {
            sessions: self.sessions as f64,
            queries: self.queries as f64,
            error_rate: (self.queries > 0).then(|| self.errors as f64 / self.queries as f64),
            avg_us: self.latency.avg_us().map(|v| v as f64),
            p95_us: self.latency.p95_us().map(|v| v as f64),
        }
    }
}

#[derive(Default, Debug)]
struct Key {
    /// Open windows by index (`end_s / window_s`).
    open: BTreeMap<u64, Acc>,
    /// Closed windows, oldest first, at most `baseline_windows`.
    history: VecDeque<Features>,
    /// The last window index evaluated.
    evaluated: Option<u64>,
}

pub struct Drift {
    cfg: DriftConfig,
    keys: BTreeMap<(String, String), Key>,
}

/// Keys tracked at most (a new one past this is ignored, and logged once).
const MAX_KEYS: usize = 10_000;

fn z_of(v: f64, base: impl Iterator<Item = f64>) -> Option<Option<f64>> {
    let xs: Vec<f64> = base.collect();
    if xs.len() < 2 {
        return None;
    }
    let n = xs.len() as f64;
    let mean = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - mean) * (x - mean)).sum::<f64>() / n;
    let sd = var.sqrt();
    // A stable baseline: no z.
    Some((sd > 1e-9).then(|| (v - mean) / sd))
}

impl Drift {
    pub fn new(cfg: DriftConfig) -> Drift {
        Drift {
            cfg,
            keys: BTreeMap::new(),
        }
    }

    pub fn tick_s(&self) -> u64 {
        self.cfg.tick_s
    }

    /// One summary, into the window its end falls in.
    pub fn add(&mut self, s: &Summary) {
        let key = (s.context.clone(), s.user.clone());
        if !self.keys.contains_key(&key) && self.keys.len() >= MAX_KEYS {
            return;
        }
        let w = (s.end_ms / 1000) / self.cfg.window_s;
        let k = self.keys.entry(key).or_default();
        if k.evaluated.is_some_and(|e| w <= e) {
            // A late summary of a window already evaluated: into the current one instead.
            return;
        }
        let acc = k.open.entry(w).or_default();
        acc.sessions += u64::from(s.last);
        acc.queries += s.statements;
        acc.errors += s.errors;
        acc.latency.add(&s.latency);
    }

    /// Evaluates every window that closed by `now_s`; the alerts, stamped `at_ms`.
    pub fn tick(&mut self, now_s: u64, at_ms: u64) -> Vec<DriftAlert> {
        let ws = self.cfg.window_s;
        let closed_below = now_s / ws; // windows with index < this are over
        let mut out = Vec::new();
        for ((context, user), k) in self.keys.iter_mut() {
            let first = match (k.evaluated, k.open.keys().next()) {
                (Some(e), _) => e + 1,
                (None, Some(w)) => *w,
                (None, None) => continue,
            };
            for w in first..closed_below {
                let acc = k.open.remove(&w).unwrap_or_default();
                let f = acc.features();
                let full = k.history.len() >= self.cfg.baseline_windows;
                let mut alert =
                    |rule: &'static str, reason: String, z: BTreeMap<&'static str, Option<f64>>| {
                        let mut value = BTreeMap::new();
                        value.insert("session_count", f.sessions);
                        value.insert("query_count", f.queries);
                        if let Some(v) = f.error_rate {
                            value.insert("error_rate", v);
                        }
                        if let Some(v) = f.avg_us {
                            value.insert("latency_avg_us", v);
                        }
                        if let Some(v) = f.p95_us {
                            value.insert("latency_p95_us", v);
                        }
                        out.push(DriftAlert {
                            at_ms,
                            rule,
                            context: context.clone(),
                            user: user.clone(),
                            window_start: w * ws,
                            window_end: (w + 1) * ws,
                            reason,
                            z,
                            value,
                        });
                    };
                if let Some(er) = f.error_rate {
                    if er >= self.cfg.error_rate_high {
                        alert(
                            "error_rate_high",
                            format!(
                                "error rate {:.3} ≥ {} ({} errors in {} statements)",
                                er, self.cfg.error_rate_high, acc.errors, acc.queries
                            ),
                            BTreeMap::new(),
                        );
                    }
                }
                if full {
                    let h = &k.history;
                    let zmap = |name: &'static str, z: Option<Option<f64>>| {
                        let mut m = BTreeMap::new();
                        m.insert(name, z.flatten());
                        m
                    };
                    if let Some(er) = f.error_rate {
                        let z = z_of(er, h.iter().filter_map(|x| x.error_rate));
                        if let Some(Some(zv)) = z {
                            if zv.abs() >= self.cfg.z {
                                alert(
                                    "error_rate_drift",
                                    format!("error rate {er:.3}: z = {zv:.2} against the last {} windows", h.len()),
                                    zmap("error_rate", z),
                                );
                            }
                        }
                    }
                    let za = f
                        .avg_us
                        .and_then(|v| z_of(v, h.iter().filter_map(|x| x.avg_us)));
                    let zp = f
                        .p95_us
                        .and_then(|v| z_of(v, h.iter().filter_map(|x| x.p95_us)));
                    let big =
                        |z: Option<Option<f64>>| z.flatten().is_some_and(|v| v.abs() >= self.cfg.z);
                    if big(za) || big(zp) {
                        let mut m = zmap("latency_avg_us", za);
                        m.insert("latency_p95_us", zp.flatten());
                        alert(
                            "latency_drift",
                            format!(
                                "latency avg {} µs, p95 {} µs against the last {} windows",
                                f.avg_us.unwrap_or(0.0),
                                f.p95_us.unwrap_or(0.0),
                                h.len()
                            ),
                            m,
                        );
                    }
                    let zq = z_of(f.queries, h.iter().map(|x| x.queries));
                    if big(zq) {
                        alert(
                            "query_volume_drift",
                            format!(
                                "{} statements: z = {:.2} against the last {} windows",
                                f.queries,
                                zq.flatten().unwrap_or(0.0),
                                h.len()
                            ),
                            zmap("query_count", zq),
                        );
                    }
                }
                if k.history.len() == self.cfg.baseline_windows {
                    k.history.pop_front();
                }
                k.history.push_back(f);
                k.evaluated = Some(w);
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signal::audit::{Identity, Tally};

    fn cfg() -> DriftConfig {
        DriftConfig {
            enabled: true,
            window_s: 60,
            tick_s: 10,
            baseline_windows: 20,
            z: 3.0,
            error_rate_high: 0.2,
        }
    }

    /// A summary of `queries` statements (`errors` of them failing, each taking `lat_us`)
    /// ending at `end_s`.
    fn summary(end_s: u64, queries: u64, errors: u64, lat_us: u64) -> Summary {
        let t = Tally::new(Identity {
            context: "app".into(),
            user: "alice".into(),
            upstream_user: "alice".into(),
            upstream_role: "alice".into(),
            client_addr: "127.0.0.1:1".into(),
            tls: false,
            started_ms: end_s * 1000 - 500,
            drift: true,
        });
        for i in 0..queries {
            t.executed(1, (i < errors).then_some("23505"), lat_us);
        }
        t.cut(end_s * 1000, 0, true)
    }

    /// Runs a scripted series on a simulated clock: window `w` gets what `f(w)` says.
    fn run(windows: u64, f: impl Fn(u64) -> Vec<(u64, u64, u64)>) -> Vec<(u64, &'static str)> {
        let mut d = Drift::new(cfg());
        let mut alerts = Vec::new();
        for w in 0..windows {
            // Four sessions a window, spread inside it; a tick every tick_s.
            let mut per = f(w).into_iter();
            for s in 0..6 {
                let now = w * 60 + s * 10;
                if let Some((q, e, l)) = per.next() {
                    d.add(&summary(now + 5, q, e, l));
                }
                for a in d.tick(now, now * 1000) {
                    alerts.push((a.window_start / 60, a.rule));
                }
            }
        }
        for a in d.tick(windows * 60, 0) {
            alerts.push((a.window_start / 60, a.rule));
        }
        alerts
    }

    #[test]
    fn a_steady_series_raises_nothing() {
        // Identical windows: every baseline has stddev 0 → stable.
        assert_eq!(run(30, |_| vec![(100, 0, 1000); 4]), vec![]);
        // Gentle variation: nothing reaches |z| 3.
        let alerts = run(40, |w| vec![(100 + (w % 5), w % 2, 1000 + 10 * (w % 3)); 4]);
        assert_eq!(alerts, vec![]);
    }

    #[test]
    fn a_baseline_that_never_varied_raises_nothing_even_on_a_large_deviation() {
        // 25 identical windows (stddev 0), then one with 10× the latency and 5× the volume:
        // a z-score against a constant is not defined, and the rule calls it stable. (Without
        // the stddev-0 rule this window's z would be infinite.)
        let alerts = run(30, |w| match w {
            25 => vec![(500, 0, 10_000); 4],
            _ => vec![(100, 0, 1000); 4],
        });
        assert_eq!(alerts, vec![]);
    }

    #[test]
    fn a_scripted_series_gives_exactly_the_expected_alerts() {
        let alerts = run(30, |w| match w {
            // Window 22: ten times the latency.
            22 => vec![(100 + (w % 5), 0, 10_000); 4],
            // Window 25: five times the volume.
            25 => vec![(500, 0, 1000 + 10 * (w % 3)); 4],
            // Window 27: half the statements fail.
            27 => vec![(100, 50, 1000); 4],
            _ => vec![(100 + (w % 5), w % 2, 1000 + 10 * (w % 3)); 4],
        });
        assert_eq!(
            alerts,
            vec![
                (22, "latency_drift"),
                (25, "query_volume_drift"),
                (27, "error_rate_high"),
                (27, "error_rate_drift"),
            ]
        );
    }

    #[test]
    fn no_drift_rule_before_the_baseline_is_full() {
        // Only error_rate_high can fire in the first 20 windows.
        let alerts = run(21, |w| match w {
            5 => vec![(1000, 500, 50_000); 4],
            _ => vec![(100 + (w % 5), 0, 1000 + 10 * (w % 3)); 4],
        });
        assert_eq!(alerts, vec![(5, "error_rate_high")]);
    }
}
