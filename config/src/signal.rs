//! `[audit]`, `[anomaly]` and `[drift]`: the signal plane (docs/signal.md), plain data.
//!
//! ```toml
//! [audit]
//! sink = "file:/var/log/helios/audit.jsonl"   # or "stdout", or "http://collector:8080/audit"
//! interval_s = 300
//! max_file_bytes = 104857600
//!
//! [anomaly]
//! enabled = true
//! z = 3.0
//! min_count = 100
//!
//! [anomaly.action]
//! tautology = "block"
//!
//! [drift]
//! enabled = true
//! ```

use serde::{Deserialize, Serialize};

/// `[audit]`: one summary per client session (no SQL text, parameters or values).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Where summaries go: `"file:PATH"` (JSON lines, rotated by size), `"stdout"`, or
    /// `"http://host:port/path"` (batched POST). None: no audit is written.
    #[serde(default)]
    pub sink: Option<String>,
    /// A session open longer than this also gets an interim summary every `interval_s`
    /// seconds (0: only at its end).
    #[serde(default = "default_interval_s")]
    pub interval_s: u64,
    /// A `file:` sink is rotated (renamed to `PATH.1`, replacing an older one) once it reaches
    /// this size.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

fn default_interval_s() -> u64 {
    300
}
fn default_max_file_bytes() -> u64 {
    100 << 20
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig {
            sink: None,
            interval_s: default_interval_s(),
            max_file_bytes: default_max_file_bytes(),
        }
    }
}

/// Where the audit goes, parsed from `audit.sink`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuditSink {
    File(std::path::PathBuf),
    Stdout,
    /// `host:port` and the request path.
    Http {
        authority: String,
        path: String,
    },
}

impl AuditConfig {
    /// The sink, or why `sink` does not name one.
    pub fn parsed_sink(&self) -> Result<Option<AuditSink>, String> {
        let Some(s) = self.sink.as_deref() else {
            return Ok(None);
        };
        if s == "stdout" {
            return Ok(Some(AuditSink::Stdout));
        }
        if let Some(p) = s.strip_prefix("file:") {
            if p.is_empty() {
                return Err("audit.sink: \"file:\" needs a path".into());
            }
            return Ok(Some(AuditSink::File(p.into())));
        }
        if let Some(rest) = s.strip_prefix("http://") {
            let (authority, path) = match rest.find('/') {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest, "/"),
            };
            if authority.is_empty() || !authority.contains(':') {
                return Err(format!(
                    "audit.sink: {s:?} needs host:port (for example \"http://127.0.0.1:8080/audit\")"
                ));
            }
            return Ok(Some(AuditSink::Http {
                authority: authority.into(),
                path: path.into(),
            }));
        }
        Err(format!(
            "audit.sink: {s:?} is not \"file:PATH\", \"stdout\" or \"http://host:port/path\""
        ))
    }
}

/// What a detection does: record an event, or also refuse (42501 naming the class).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AnomalyAction {
    #[default]
    Log,
    Block,
}

/// `[anomaly.action]`: per detection class.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyActions {
    /// SQL injection: `OR 1=1`, `OR 'a'='a'`.
    #[serde(default)]
    pub tautology: AnomalyAction,
    /// SQL injection: `UNION SELECT NULL, NULL …`.
    #[serde(default)]
    pub union_probe: AnomalyAction,
    /// SQL injection: a comment that cuts the rest of a statement off.
    #[serde(default)]
    pub comment_truncation: AnomalyAction,
    /// SQL injection: `'; DROP …`.
    #[serde(default)]
    pub stacked_query: AnomalyAction,
    /// SQL injection: `pg_sleep` / `generate_series` bombs inside a condition.
    #[serde(default)]
    pub time_based: AnomalyAction,
    /// SQL injection: catalog reads from a session that did not use the catalog before.
    #[serde(default)]
    pub catalog_probe: AnomalyAction,
    /// A tenant's statements per second far above its baseline: `block` refuses its
    /// statements for the rest of that second.
    #[serde(default)]
    pub rate_spike: AnomalyAction,
    /// Failed logins over the thresholds: `block` refuses further logins from the address
    /// until its window passes.
    #[serde(default)]
    pub credential_stuffing: AnomalyAction,
}

/// `[anomaly]`: in-process detection (per shard, merged by the admin thread).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AnomalyConfig {
    /// Master switch. Off (the default) the statement path has no detection stage at all.
    #[serde(default)]
    pub enabled: bool,
    /// Rate spike: standard deviations above the 59-second baseline.
    #[serde(default = "default_z")]
    pub z: f64,
    /// Rate spike: the fewest statements in one second that can be a spike.
    #[serde(default = "default_min_count")]
    pub min_count: u64,
    /// Seconds a shard learns before novel query shapes are reported, and a tenant's traffic
    /// is watched before a rate spike can fire.
    #[serde(default = "default_warmup_s")]
    pub warmup_s: u64,
    /// Credential stuffing: the window failed logins are counted over.
    #[serde(default = "default_auth_window_s")]
    pub auth_window_s: u64,
    /// Credential stuffing: failed logins of one user from one address within the window.
    #[serde(default = "default_auth_per_user")]
    pub auth_failures_per_user: u32,
    /// Credential stuffing: failed logins from one address, across users, within the window.
    #[serde(default = "default_auth_per_address")]
    pub auth_failures_per_address: u32,
    /// Novel query shapes: fingerprints each shard remembers (least recently seen go first).
    #[serde(default = "default_max_fingerprints")]
    pub max_fingerprints: usize,
    /// Per class: `log` (default) or `block`.
    #[serde(default)]
    pub action: AnomalyActions,
}

fn default_z() -> f64 {
    3.0
}
fn default_min_count() -> u64 {
    100
}
fn default_warmup_s() -> u64 {
    60
}
fn default_auth_window_s() -> u64 {
    60
}
fn default_auth_per_user() -> u32 {
    5
}
fn default_auth_per_address() -> u32 {
    20
}
fn default_max_fingerprints() -> usize {
    10_000
}

impl Default for AnomalyConfig {
    fn default() -> Self {
        AnomalyConfig {
            enabled: false,
            z: default_z(),
            min_count: default_min_count(),
            warmup_s: default_warmup_s(),
            auth_window_s: default_auth_window_s(),
            auth_failures_per_user: default_auth_per_user(),
            auth_failures_per_address: default_auth_per_address(),
            max_fingerprints: default_max_fingerprints(),
            action: AnomalyActions::default(),
        }
    }
}

/// `[drift]`: WardenSense, over the audit summaries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriftConfig {
    /// Master switch; each database opts in with `drift = true`.
    #[serde(default)]
    pub enabled: bool,
    /// Length of one window of features, seconds.
    #[serde(default = "default_window_s")]
    pub window_s: u64,
    /// How often closed windows are evaluated, seconds.
    #[serde(default = "default_tick_s")]
    pub tick_s: u64,
    /// Windows in the baseline.
    #[serde(default = "default_baseline_windows")]
    pub baseline_windows: usize,
    /// |z| at or above which a feature drifted.
    #[serde(default = "default_z")]
    pub z: f64,
    /// A window's error rate at or above this alerts by itself.
    #[serde(default = "default_error_rate_high")]
    pub error_rate_high: f64,
}

fn default_window_s() -> u64 {
    300
}
fn default_tick_s() -> u64 {
    60
}
fn default_baseline_windows() -> usize {
    20
}
fn default_error_rate_high() -> f64 {
    0.2
}

impl Default for DriftConfig {
    fn default() -> Self {
        DriftConfig {
            enabled: false,
            window_s: default_window_s(),
            tick_s: default_tick_s(),
            baseline_windows: default_baseline_windows(),
            z: default_z(),
            error_rate_high: default_error_rate_high(),
        }
    }
}

/// Range checks of the three sections.
pub fn validate(
    audit: &AuditConfig,
    anomaly: &AnomalyConfig,
    drift: &DriftConfig,
) -> Result<(), String> {
    audit.parsed_sink()?;
    if audit.max_file_bytes < 4096 {
        return Err("audit.max_file_bytes: must be at least 4096".into());
    }
    if !(anomaly.z.is_finite() && anomaly.z > 0.0) {
        return Err(format!("anomaly.z: {} must be above 0", anomaly.z));
    }
    if anomaly.auth_window_s == 0
        || anomaly.auth_failures_per_user == 0
        || anomaly.auth_failures_per_address == 0
    {
        return Err(
            "anomaly.auth_window_s, auth_failures_per_user, auth_failures_per_address: must be above 0"
                .into(),
        );
    }
    if anomaly.max_fingerprints < 16 {
        return Err("anomaly.max_fingerprints: must be at least 16".into());
    }
    if drift.window_s == 0 || drift.tick_s == 0 {
        return Err("drift.window_s and drift.tick_s: must be above 0".into());
    }
    if !(2..=1000).contains(&drift.baseline_windows) {
        return Err("drift.baseline_windows: must be between 2 and 1000".into());
    }
    if !(drift.z.is_finite() && drift.z > 0.0) {
        return Err(format!("drift.z: {} must be above 0", drift.z));
    }
    if !(0.0..=1.0).contains(&drift.error_rate_high) {
        return Err("drift.error_rate_high: must be between 0 and 1".into());
    }
    Ok(())
}
