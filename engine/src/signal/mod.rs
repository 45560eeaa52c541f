//! The signal plane (docs/signal.md): anomaly detection, per-session audit summaries and drift.
//!
//! Detection runs on the shard, in the statement pipeline's first stage
//! (`pipeline::signal::SignalStage`, before the plugins' `pre_query`) and at login
//! (`frontend::login`): each shard keeps its own windows, fingerprints and pending events in a
//! [`ShardSignal`] (no locks, nothing shared), and hands the events to the admin thread with
//! its snapshot, which merges them (`helios_admin::signal`). Audit summaries go to the audit
//! thread ([`audit`]) over a bounded channel; drift ([`drift`]) runs there.
//!
//! Deterministic, explainable statistics only; detection never refuses anything unless a
//! class's `action` is `block`; nothing here keeps SQL text, parameters or values (events carry
//! a fingerprint, the hash of the statement's literal-free shape).

pub mod audit;
pub mod drift;
pub mod inject;
pub mod windows;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::Sender;
use helios_admin::{AnomalyEvent, SignalBoard};
use helios_config::signal::{AnomalyAction, AnomalyConfig};

use inject::Class;
use windows::{Rate, RateWindow, Seen, Stuffed, Stuffing};

/// Events a shard holds between two snapshots; more are counted as dropped.
pub const MAX_PENDING: usize = 1000;
/// Tenants whose rate windows a shard keeps (idle ones are swept first).
const MAX_TENANTS: usize = 10_000;
/// Statements of a session before a catalog reference counts as unusual.
pub const CATALOG_WARMUP: u32 = 10;

/// The instant every shard counts its seconds from, so that second `n` is the same second on
/// every shard (their rate reports name seconds).
pub fn epoch() -> std::time::Instant {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(std::time::Instant::now)
}

/// One shard's statements per tenant in the seconds that ended since its last report, for the
/// other shards' rate windows (`ShardMsg::Rates`, sent every [`RATE_REPORT_MS`]).
#[derive(Debug, Default)]
pub struct RateReport {
    pub from: usize,
    /// (tenant, second, statements).
    pub counts: Vec<(String, u64, u32)>,
}

/// How often a shard reports its finished seconds to the others.
pub const RATE_REPORT_MS: u64 = 250;

/// What every shard shares of the signal plane: the board the admin reads and the audit
/// thread's queue.
#[derive(Clone, Default)]
pub struct SignalShared {
    pub board: Arc<SignalBoard>,
    /// The audit thread's queue (`[audit] sink` or `[drift] enabled`).
    pub audit: Option<Sender<audit::Summary>>,
    /// `audit.interval_s` in milliseconds (0: only at the end).
    pub audit_interval_ms: u64,
    /// The audit thread, to stop (after writing what is queued) at shutdown.
    pub audit_thread: Option<Arc<audit::AuditThread>>,
}

impl SignalShared {
    /// At shutdown, once the shards have sent their last summaries: the audit thread writes
    /// what is queued, sends its last HTTP batch, and ends (waited for up to 5 s).
    pub fn finish(&self) {
        if let Some(t) = &self.audit_thread {
            t.stop(Duration::from_secs(5));
        }
    }

    /// Hands a summary to the audit thread; never waits (a full queue drops it, counted).
    pub fn audit(&self, s: audit::Summary) {
        if let Some(tx) = &self.audit {
            if tx.try_send(s).is_err() {
                self.board.audit_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

/// Unix milliseconds.
pub fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// A session as detection sees it (the stage keeps one per session).
#[derive(Debug, Clone)]
pub struct SessionView {
    pub database: String,
    pub user: String,
    /// The client's IP address.
    pub address: String,
    /// `SET helios.tenant_id`, else the user, else the address.
    pub tenant: String,
    pub statements: u32,
    /// The session used the catalog in its first [`CATALOG_WARMUP`] statements.
    pub uses_catalog: bool,
}

/// A verdict that refuses the statement: the class to name in the 42501.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocked(pub &'static str);

/// One shard's detection state.
#[derive(Default)]
pub struct ShardSignal {
    pub shard: usize,
    rates: HashMap<String, RateWindow>,
    stuffing: Stuffing,
    seen: Seen,
    /// Unix second this shard's detection first ran (novel shapes learn until `warmup_s`).
    since: Option<u64>,
    pending: Vec<AnomalyEvent>,
    /// Events past [`MAX_PENDING`] in one snapshot interval.
    pub dropped: u64,
    /// Seconds are counted from here (statements carry an `Instant`: no clock read).
    base: Option<std::time::Instant>,
    /// (unix second, events in it) for the log's rate limit.
    logged: (u64, u32),
}

/// What every logged anomaly event starts with.
pub const EVENT_LOG_PREFIX: &str = "anomaly event: ";
/// Anomaly events logged per second per shard (all are counted and kept for `/anomalies`).
const LOG_PER_SECOND: u32 = 20;

fn action_name(a: AnomalyAction) -> &'static str {
    match a {
        AnomalyAction::Log => "log",
        AnomalyAction::Block => "block",
    }
}

fn class_action(cfg: &AnomalyConfig, c: Class) -> AnomalyAction {
    let a = &cfg.action;
    match c {
        Class::Tautology => a.tautology,
        Class::UnionProbe => a.union_probe,
        Class::CommentTruncation => a.comment_truncation,
        Class::StackedQuery => a.stacked_query,
        Class::TimeBased => a.time_based,
        Class::CatalogProbe => a.catalog_probe,
    }
}

impl ShardSignal {
    pub fn new(shard: usize) -> ShardSignal {
        ShardSignal {
            shard,
            base: Some(epoch()),
            ..Default::default()
        }
    }

    /// Whole seconds from the process's [`epoch`] to `at`.
    pub fn seconds(&self, at: std::time::Instant) -> u64 {
        self.base
            .map_or(0, |b| at.saturating_duration_since(b).as_secs())
    }

    #[allow(clippy::too_many_arguments)]
    fn event(
        &mut self,
        kind: &'static str,
        class: &'static str,
        action: AnomalyAction,
        s: &SessionView,
        score: f64,
        fingerprint: Option<u64>,
        detail: String,
    ) {
        if self.pending.len() >= MAX_PENDING {
            self.dropped += 1;
            return;
        }
        let at_ms = unix_ms();
        self.log_event(at_ms, kind, class, action, s, score, fingerprint);
        self.pending.push(AnomalyEvent {
            at_ms,
            shard: self.shard,
            kind,
            class,
            action: action_name(action),
            database: s.database.clone(),
            user: s.user.clone(),
            tenant: s.tenant.clone(),
            address: s.address.clone(),
            score,
            fingerprint: fingerprint.map(|f| format!("{f:016x}")).unwrap_or_default(),
            detail,
        });
    }

    /// The tenant's rate window (made if new; idle ones are swept when there are too many).
    fn window(&mut self, tenant: &str, now_s: u64) -> &mut RateWindow {
        if self.rates.len() >= MAX_TENANTS && !self.rates.contains_key(tenant) {
            self.rates
                .retain(|_, w| now_s.saturating_sub(w.last_second()) < windows::BUCKETS as u64);
            if self.rates.len() >= MAX_TENANTS {
                self.rates.clear();
            }
        }
        if !self.rates.contains_key(tenant) {
            self.rates
                .insert(tenant.to_string(), RateWindow::new(now_s));
        }
        self.rates.get_mut(tenant).expect("inserted above")
    }

    /// This shard's per-tenant counts of the seconds that ended before `now_s` and were not
    /// reported yet (empty: nothing to send).
    pub fn rate_report(&mut self, now_s: u64) -> RateReport {
        let mut counts = Vec::new();
        let mut secs = Vec::new();
        for (tenant, w) in self.rates.iter_mut() {
            secs.clear();
            w.unreported(now_s, &mut secs);
            counts.extend(secs.iter().map(|&(t, n)| (tenant.clone(), t, n)));
        }
        RateReport {
            from: self.shard,
            counts,
        }
    }

    /// Another shard's report: its counts join this shard's baselines (the tenant's whole
    /// traffic), never the second being judged.
    pub fn merge_rates(&mut self, report: &RateReport) {
        for (tenant, sec, n) in &report.counts {
            self.window(tenant, *sec).remote(*sec, *n);
        }
    }

    /// Every event is logged (no statement text): warn for detections, debug for novel shapes,
    /// at most [`LOG_PER_SECOND`] lines a second per shard. The test harness's
    /// `HELIOS_TEST_ANOMALY=1` pass looks for [`EVENT_LOG_PREFIX`] in the proxy's log.
    #[allow(clippy::too_many_arguments)]
    fn log_event(
        &mut self,
        at_ms: u64,
        kind: &str,
        class: &str,
        action: AnomalyAction,
        s: &SessionView,
        score: f64,
        fingerprint: Option<u64>,
    ) {
        let level = if kind == "novel_query" {
            log::Level::Debug
        } else {
            log::Level::Warn
        };
        if !log::log_enabled!(level) {
            return;
        }
        let sec = at_ms / 1000;
        if self.logged.0 != sec {
            if self.logged.1 > LOG_PER_SECOND {
                log::warn!(
                    "shard {}: {} more anomaly events in one second not logged",
                    self.shard,
                    self.logged.1 - LOG_PER_SECOND
                );
            }
            self.logged = (sec, 0);
        }
        self.logged.1 += 1;
        if self.logged.1 > LOG_PER_SECOND {
            return;
        }
        log::log!(
            level,
            "{EVENT_LOG_PREFIX}kind={kind} class={class} action={} shard={} database={} user={} tenant={} address={} score={score:.1} fingerprint={}",
            action_name(action),
            self.shard,
            s.database,
            s.user,
            s.tenant,
            s.address,
            fingerprint.map(|f| format!("{f:016x}")).unwrap_or_default()
        );
    }

    /// Events since the last call (the snapshot takes them).
    pub fn take_events(&mut self) -> Vec<AnomalyEvent> {
        std::mem::take(&mut self.pending)
    }

    /// One execution's text, at `now_s`: records what it trips; `Err` if a class set to
    /// `block` tripped.
    pub fn statement(
        &mut self,
        cfg: &AnomalyConfig,
        s: &mut SessionView,
        sql: &str,
        now_s: u64,
    ) -> Result<(), Blocked> {
        let since = *self.since.get_or_insert(now_s);
        s.statements = s.statements.saturating_add(1);
        let mut verdict = Ok(());
        // Rate spike.
        let w = match self.rates.get_mut(&s.tenant) {
            Some(w) => w,
            None => self.window(&s.tenant, now_s),
        };
        match w.hit(now_s, cfg.z, cfg.min_count, cfg.warmup_s) {
            Rate::Normal => {}
            Rate::Spike(z) => {
                self.event(
                    "rate_spike",
                    "rate_spike",
                    cfg.action.rate_spike,
                    s,
                    if z.is_finite() { z } else { 1e9 },
                    None,
                    format!(
                        "tenant over {} statements in one second ({}z above its baseline)",
                        cfg.min_count, cfg.z
                    ),
                );
                if cfg.action.rate_spike == AnomalyAction::Block {
                    verdict = Err(Blocked("rate_spike"));
                }
            }
            Rate::StillSpiking => {
                if cfg.action.rate_spike == AnomalyAction::Block {
                    verdict = Err(Blocked("rate_spike"));
                }
            }
        }
        // Injection classes and the shape.
        let scan = inject::scan(sql);
        let mut classes = scan.classes;
        let catalog_probe = scan.catalog
            && (scan.catalog_injected
                || (!scan.params && !s.uses_catalog && s.statements > CATALOG_WARMUP));
        if scan.catalog && s.statements <= CATALOG_WARMUP {
            s.uses_catalog = true;
        }
        if catalog_probe {
            classes |= 1 << (Class::CatalogProbe as u8);
        }
        for c in Class::ALL {
            if classes & (1 << (c as u8)) == 0 {
                continue;
            }
            let action = class_action(cfg, c);
            self.event(
                "sql_injection",
                c.name(),
                action,
                s,
                1.0,
                Some(scan.fingerprint),
                format!("{} signal in the statement", c.name()),
            );
            if action == AnomalyAction::Block && verdict.is_ok() {
                verdict = Err(Blocked(c.name()));
            }
        }
        // Novel shape, per (database, user).
        let key = {
            let mut h = scan.fingerprint;
            for part in [s.database.as_bytes(), b"\0", s.user.as_bytes()] {
                for &c in part {
                    h ^= c as u64;
                    h = h.wrapping_mul(0x0000_0100_0000_01b3);
                }
            }
            h
        };
        if self.seen.insert(key, cfg.max_fingerprints)
            && now_s.saturating_sub(since) >= cfg.warmup_s
        {
            self.event(
                "novel_query",
                "novel_query",
                AnomalyAction::Log,
                s,
                1.0,
                Some(scan.fingerprint),
                "first time this shape runs for this database and user".into(),
            );
        }
        verdict
    }

    /// A login refused for a wrong password (28P01).
    pub fn login_failed(&mut self, cfg: &AnomalyConfig, s: &SessionView, now_s: u64) {
        for hit in self.stuffing.failed(
            &s.user,
            &s.address,
            now_s,
            cfg.auth_window_s,
            cfg.auth_failures_per_user,
            cfg.auth_failures_per_address,
        ) {
            let (score, detail) = match hit {
                Stuffed::User(n) => (
                    n as f64,
                    format!(
                        "{n} failed logins of the user from the address in {} s",
                        cfg.auth_window_s
                    ),
                ),
                Stuffed::Address(n, users) => (
                    n as f64,
                    format!(
                        "{n} failed logins from the address across {users} users in {} s",
                        cfg.auth_window_s
                    ),
                ),
            };
            self.event(
                "credential_stuffing",
                "credential_stuffing",
                cfg.action.credential_stuffing,
                s,
                score,
                None,
                detail,
            );
        }
    }

    pub fn login_succeeded(&mut self, user: &str, address: &str) {
        self.stuffing.succeeded(user, address);
    }

    /// `credential_stuffing = "block"` and the address is over its threshold.
    pub fn login_blocked(&self, cfg: &AnomalyConfig, address: &str, now_s: u64) -> bool {
        cfg.action.credential_stuffing == AnomalyAction::Block
            && self.stuffing.flagged(
                address,
                now_s,
                cfg.auth_window_s,
                cfg.auth_failures_per_address,
            )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> SessionView {
        SessionView {
            database: "app".into(),
            user: "u".into(),
            address: "10.0.0.9".into(),
            tenant: "u".into(),
            statements: 0,
            uses_catalog: false,
        }
    }

    #[test]
    fn block_names_the_class_and_log_does_not_refuse() {
        let mut cfg = AnomalyConfig {
            enabled: true,
            warmup_s: 0,
            ..AnomalyConfig::default()
        };
        let mut sh = ShardSignal::new(0);
        let mut s = view();
        let attack = "SELECT * FROM t WHERE a = '' OR 1=1";
        assert_eq!(sh.statement(&cfg, &mut s, attack, 100), Ok(()));
        cfg.action.tautology = AnomalyAction::Block;
        assert_eq!(
            sh.statement(&cfg, &mut s, attack, 100),
            Err(Blocked("tautology"))
        );
        let ev = sh.take_events();
        let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.class, e.action)).collect();
        assert_eq!(
            kinds,
            vec![
                ("sql_injection", "tautology", "log"),
                ("novel_query", "novel_query", "log"),
                ("sql_injection", "tautology", "block"),
            ]
        );
        // The event has the shape's hash, never the text.
        assert!(ev
            .iter()
            .all(|e| !e.detail.contains("1=1") && e.fingerprint.len() == 16));
    }

    #[test]
    fn catalog_use_is_judged_against_the_session() {
        let cfg = AnomalyConfig {
            enabled: true,
            ..AnomalyConfig::default()
        };
        let mut sh = ShardSignal::new(0);
        // psql-like: the catalog from the start.
        let mut s = view();
        for _ in 0..20 {
            sh.statement(&cfg, &mut s, "SELECT relname FROM pg_catalog.pg_class", 1)
                .unwrap();
        }
        // An application session that suddenly reads pg_shadow.
        let mut a = view();
        for _ in 0..CATALOG_WARMUP {
            sh.statement(&cfg, &mut a, "SELECT 1", 1).unwrap();
        }
        sh.statement(&cfg, &mut a, "SELECT usename, passwd FROM pg_shadow", 1)
            .unwrap();
        let probes: Vec<_> = sh
            .take_events()
            .into_iter()
            .filter(|e| e.class == "catalog_probe")
            .collect();
        assert_eq!(probes.len(), 1);
    }

    #[test]
    fn novel_shapes_are_learned_during_the_warm_up() {
        let cfg = AnomalyConfig {
            enabled: true,
            warmup_s: 10,
            ..AnomalyConfig::default()
        };
        let mut sh = ShardSignal::new(0);
        let mut s = view();
        let novel = |sh: &mut ShardSignal| {
            sh.take_events()
                .iter()
                .filter(|e| e.kind == "novel_query")
                .count()
        };
        sh.statement(&cfg, &mut s, "SELECT a FROM t WHERE id = 1", 1)
            .unwrap();
        sh.statement(&cfg, &mut s, "SELECT b FROM u", 5).unwrap();
        assert_eq!(novel(&mut sh), 0, "inside the warm-up");
        // Learned shapes stay quiet after it (other literals, same shape); new ones are news.
        sh.statement(&cfg, &mut s, "SELECT a FROM t WHERE id = 77", 20)
            .unwrap();
        assert_eq!(novel(&mut sh), 0);
        sh.statement(&cfg, &mut s, "SELECT c FROM v", 20).unwrap();
        assert_eq!(novel(&mut sh), 1);
        // Per (database, user): the same shape for another user is new to that user.
        let mut other = SessionView {
            user: "w".into(),
            ..view()
        };
        sh.statement(&cfg, &mut other, "SELECT c FROM v", 21)
            .unwrap();
        assert_eq!(novel(&mut sh), 1);
    }

    /// pgbench's clients moving between shards from one run to the next (the 2-shard false
    /// positive of docs/signal.md "Limits"): judged against the tenant's whole traffic, the
    /// shard they move to sees no spike; a real burst still is one.
    #[test]
    fn a_tenant_moving_between_shards_is_judged_by_its_whole_traffic() {
        let cfg = AnomalyConfig {
            enabled: true,
            warmup_s: 10,
            min_count: 100,
            ..AnomalyConfig::default()
        };
        let spikes = |sh: &mut ShardSignal| {
            sh.take_events()
                .iter()
                .filter(|e| e.kind == "rate_spike")
                .count()
        };
        // 1000 statements a second: 900 on shard 0 and 100 on shard 1 for a minute, then the
        // other way round; then (second 90) a 10× burst on shard 1.
        let run = |exchange: bool, burst: bool| {
            let (mut a, mut b) = (ShardSignal::new(0), ShardSignal::new(1));
            let (mut va, mut vb) = (view(), view());
            let (mut fired_a, mut fired_b) = (0, 0);
            for sec in 0..=90u64 {
                let (na, nb) = match sec {
                    0..60 => (900, 100),
                    60..90 => (100, 900),
                    _ if burst => (100, 10_000),
                    _ => (100, 900),
                };
                for _ in 0..na {
                    a.statement(&cfg, &mut va, "SELECT 1", sec).unwrap();
                }
                for _ in 0..nb {
                    b.statement(&cfg, &mut vb, "SELECT 1", sec).unwrap();
                }
                if exchange {
                    let (ra, rb) = (a.rate_report(sec + 1), b.rate_report(sec + 1));
                    assert_eq!(ra.counts, vec![("u".to_string(), sec, na)]);
                    // Reported once.
                    assert!(a.rate_report(sec + 1).counts.is_empty());
                    b.merge_rates(&ra);
                    a.merge_rates(&rb);
                }
                fired_a += spikes(&mut a);
                fired_b += spikes(&mut b);
            }
            (fired_a, fired_b)
        };
        // Each shard on its own: the move looks like a 9× spike to shard 1 (for several
        // seconds, until its own baseline catches up).
        let (a, b) = run(false, false);
        assert_eq!(a, 0);
        assert!(b >= 1, "{b}");
        assert_eq!(run(true, false), (0, 0));
        assert_eq!(run(true, true), (0, 1));
    }
}
