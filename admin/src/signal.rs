//! The signal plane as the admin thread sees it (docs/signal.md): anomaly events the shards
//! send with their snapshots, merged here into one bounded buffer (`/anomalies`,
//! `/anomalies/stream`, the `heliosproxy_anomalies_total` counters), and the drift alerts the
//! audit thread publishes on a [`SignalBoard`] (`/drift`).
//!
//! Nothing here holds SQL text: an event carries a fingerprint (a hash of the statement with
//! its literals stripped), never the statement.

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

/// Events the admin keeps for `/anomalies` (the oldest go first).
pub const EVENT_BUFFER: usize = 1000;
/// Drift alerts kept for `/drift`.
pub const ALERT_BUFFER: usize = 500;

/// One detection.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct AnomalyEvent {
    /// Unix milliseconds.
    pub at_ms: u64,
    pub shard: usize,
    /// `sql_injection`, `rate_spike`, `credential_stuffing` or `novel_query`.
    pub kind: &'static str,
    /// The injection class (`tautology`, `union_probe`, `comment_truncation`, `stacked_query`,
    /// `time_based`, `catalog_probe`), or the kind again.
    pub class: &'static str,
    /// `log` or `block` (the statement or login was refused with 42501).
    pub action: &'static str,
    pub database: String,
    pub user: String,
    /// `SET helios.tenant_id`, else the user, else the client address.
    pub tenant: String,
    /// The client's IP address.
    pub address: String,
    /// How strong the signal is: z-score for a rate spike, failures for stuffing, 1 otherwise.
    pub score: f64,
    /// 16 hex digits: the statement's fingerprint (literals stripped, hashed). Empty for
    /// logins and rate spikes.
    pub fingerprint: String,
    /// What tripped it, in words (no statement text).
    pub detail: String,
}

/// One drift alert (advisory).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DriftAlert {
    /// Unix milliseconds of the evaluation.
    pub at_ms: u64,
    /// `error_rate_high`, `error_rate_drift`, `latency_drift` or `query_volume_drift`.
    pub rule: &'static str,
    /// The database alias (context).
    pub context: String,
    pub user: String,
    /// Unix seconds: the window's start and end.
    pub window_start: u64,
    pub window_end: u64,
    pub reason: String,
    /// Feature → z-score against the baseline (`null`: the baseline did not vary).
    pub z: BTreeMap<&'static str, Option<f64>>,
    /// Feature → this window's value.
    pub value: BTreeMap<&'static str, f64>,
}

/// Shared between the audit thread (writer) and the admin thread (reader); never touched by
/// a shard's query path.
#[derive(Debug, Default)]
pub struct SignalBoard {
    /// `[anomaly] enabled` as in effect (reload updates it).
    pub anomaly_enabled: AtomicBool,
    /// `[drift] enabled` (restart only).
    pub drift_enabled: AtomicBool,
    /// Audit summaries written by the sinks, dropped (queue full, endpoint failing), and
    /// HTTP batches that failed.
    pub audit_written: AtomicU64,
    pub audit_dropped: AtomicU64,
    pub audit_http_failures: AtomicU64,
    alerts: Mutex<Alerts>,
}

#[derive(Debug, Default)]
struct Alerts {
    recent: VecDeque<DriftAlert>,
    total: u64,
    /// Alerts not yet streamed.
    fresh: Vec<DriftAlert>,
}

impl SignalBoard {
    pub fn push_alerts(&self, alerts: Vec<DriftAlert>) {
        let mut a = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        for x in alerts {
            if a.recent.len() == ALERT_BUFFER {
                a.recent.pop_front();
            }
            a.total += 1;
            a.recent.push_back(x.clone());
            if a.fresh.len() < ALERT_BUFFER {
                a.fresh.push(x);
            }
        }
    }

    /// Newest first, and how many there were in all.
    pub fn alerts(&self, limit: usize) -> (Vec<DriftAlert>, u64) {
        let a = self.alerts.lock().unwrap_or_else(|e| e.into_inner());
        (
            a.recent.iter().rev().take(limit).cloned().collect(),
            a.total,
        )
    }

    /// Alerts since the last call (for the event stream).
    pub fn take_fresh(&self) -> Vec<DriftAlert> {
        std::mem::take(&mut self.alerts.lock().unwrap_or_else(|e| e.into_inner()).fresh)
    }
}

/// The admin's merge of the shards' events.
#[derive(Debug, Default)]
pub struct SignalState {
    events: VecDeque<AnomalyEvent>,
    /// Events received since start.
    pub total: u64,
    /// (kind, class) → events since start.
    pub counts: BTreeMap<(&'static str, &'static str), u64>,
    /// Received and not yet streamed.
    fresh: Vec<AnomalyEvent>,
}

impl SignalState {
    /// Takes a snapshot's events.
    pub fn ingest(&mut self, events: Vec<AnomalyEvent>) {
        for e in events {
            *self.counts.entry((e.kind, e.class)).or_default() += 1;
            self.total += 1;
            if self.events.len() == EVENT_BUFFER {
                self.events.pop_front();
            }
            if self.fresh.len() < EVENT_BUFFER {
                self.fresh.push(e.clone());
            }
            self.events.push_back(e);
        }
    }

    /// Newest first.
    pub fn recent(&self, limit: usize) -> Vec<AnomalyEvent> {
        self.events.iter().rev().take(limit).cloned().collect()
    }

    pub fn buffered(&self) -> usize {
        self.events.len()
    }

    pub fn take_fresh(&mut self) -> Vec<AnomalyEvent> {
        std::mem::take(&mut self.fresh)
    }
}

/// Prometheus lines for the signal plane.
pub fn prometheus(out: &mut String, state: &SignalState, board: Option<&SignalBoard>) {
    use std::fmt::Write;
    out.push_str("# HELP heliosproxy_anomalies_total Anomaly events by kind and class.\n");
    out.push_str("# TYPE heliosproxy_anomalies_total counter\n");
    for ((kind, class), n) in &state.counts {
        let _ = writeln!(
            out,
            "heliosproxy_anomalies_total{{kind=\"{kind}\",class=\"{class}\"}} {n}"
        );
    }
    if let Some(b) = board {
        for (name, help, v) in [
            (
                "heliosproxy_audit_written_total",
                "Audit summaries written by the sink.",
                &b.audit_written,
            ),
            (
                "heliosproxy_audit_dropped_total",
                "Audit summaries dropped (queue full or the endpoint failing).",
                &b.audit_dropped,
            ),
            (
                "heliosproxy_audit_http_failures_total",
                "Audit HTTP batches the endpoint did not accept.",
                &b.audit_http_failures,
            ),
        ] {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            let _ = writeln!(out, "{name} {}", v.load(Ordering::Relaxed));
        }
        let (_, total) = b.alerts(0);
        let _ = writeln!(
            out,
            "# HELP heliosproxy_drift_alerts_total Drift alerts raised.\n# TYPE heliosproxy_drift_alerts_total counter\nheliosproxy_drift_alerts_total {total}"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(i: u64) -> AnomalyEvent {
        AnomalyEvent {
            at_ms: i,
            shard: 0,
            kind: "sql_injection",
            class: "tautology",
            action: "log",
            database: "d".into(),
            user: "u".into(),
            tenant: "u".into(),
            address: "127.0.0.1".into(),
            score: 1.0,
            fingerprint: "00".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn buffer_is_bounded_newest_first_and_counts_everything() {
        let mut s = SignalState::default();
        s.ingest((0..EVENT_BUFFER as u64 + 5).map(ev).collect());
        assert_eq!(s.buffered(), EVENT_BUFFER);
        assert_eq!(s.total, EVENT_BUFFER as u64 + 5);
        let r = s.recent(2);
        assert_eq!(r[0].at_ms, EVENT_BUFFER as u64 + 4);
        assert_eq!(r[1].at_ms, EVENT_BUFFER as u64 + 3);
        let mut m = String::new();
        prometheus(&mut m, &s, None);
        assert!(m.contains(
            "heliosproxy_anomalies_total{kind=\"sql_injection\",class=\"tautology\"} 1005"
        ));
    }
}
