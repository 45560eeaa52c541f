//! Access contexts: the keys of `[databases.<alias>]` that make a database alias a policy
//! surface — the upstream `role` its connections act as, fixed session `defaults`,
//! `enforce_defaults`, and where its upstream credentials come from (`credentials`, leases).
//! docs/contexts.md.
//!
//! ```toml
//! [databases.app_ro]
//! dbname = "app"
//! user = "helios_login"              # a login that is a member of the context roles
//! password = "${HELIOS_LOGIN_PASSWORD}"
//! role = "app_reader"                # SET ROLE on every server connection (startup `role`)
//! defaults = { default_transaction_read_only = "on", statement_timeout = "5s" }
//! enforce_defaults = true            # default: true when role is set
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{DatabaseConfig, TagValue};

/// `lease_refresh_jitter`: a fraction in `0.0..=1.0`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Fraction(pub f64);

// Validation keeps it a finite number in 0..=1 (never NaN), so equality is total.
impl Eq for Fraction {}

pub(crate) fn default_lease_ttl_s() -> u64 {
    1800
}
pub(crate) fn default_lease_refresh_window_s() -> u64 {
    300
}
pub(crate) fn default_lease_refresh_jitter() -> Fraction {
    Fraction(0.2)
}

/// Where a context's upstream credentials come from (`databases.<alias>.credentials`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// `env:NAME`: the password in environment variable NAME (read at every refresh), the user
    /// from `user`.
    Env(String),
    /// `file:PATH`: the file is re-read at every refresh; it holds either the password alone
    /// (the user from `user`) or a JSON lease `{"user","password","expires_at"}`.
    File(String),
    /// `command:PROGRAM ARGS…`: run (no shell) at every refresh; it prints a JSON lease
    /// `{"user","password","expires_at"}` (`expires_at` in unix seconds, optional).
    Command(String),
}

impl CredentialSource {
    pub fn parse(s: &str) -> Result<CredentialSource, String> {
        let (kind, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not env:NAME, file:PATH or command:PROGRAM"))?;
        if rest.trim().is_empty() {
            return Err(format!("{s:?}: nothing after {kind:?}"));
        }
        match kind {
            "env" => Ok(CredentialSource::Env(rest.to_string())),
            "file" => Ok(CredentialSource::File(rest.to_string())),
            "command" => Ok(CredentialSource::Command(rest.to_string())),
            _ => Err(format!(
                "{s:?}: the source must start with env:, file: or command:"
            )),
        }
    }
}

/// A GUC name as PostgreSQL accepts it in a startup packet: letters, digits, `_`, `.`.
fn guc_name_ok(n: &str) -> bool {
    !n.is_empty()
        && n.len() < 64
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.')
        && !n.as_bytes()[0].is_ascii_digit()
}

impl DatabaseConfig {
    /// Whether the upstream credentials are leases (`credentials` set).
    pub fn leased(&self) -> bool {
        self.credentials.is_some()
    }

    /// `min_idle` as configured, else 0 — or, for a leased context, 2 (at most `pool_size`).
    pub fn min_idle(&self) -> usize {
        self.min_idle.unwrap_or(if self.leased() {
            crate::LEASED_MIN_IDLE.min(self.pool_size)
        } else {
            0
        })
    }

    /// `idle_timeout_ms` as configured, else 10 min — or 5 min for a leased context.
    pub fn idle_timeout_ms(&self) -> u64 {
        self.idle_timeout_ms.unwrap_or(if self.leased() {
            crate::LEASED_IDLE_TIMEOUT_MS
        } else {
            crate::default_idle_timeout_ms()
        })
    }

    /// `max_lifetime_ms` as configured, else 60 min — or 30 min for a leased context.
    pub fn max_lifetime_ms(&self) -> u64 {
        self.max_lifetime_ms.unwrap_or(if self.leased() {
            crate::LEASED_MAX_LIFETIME_MS
        } else {
            crate::default_max_lifetime_ms()
        })
    }

    /// Whether the context fixes its `defaults` against client changes.
    pub fn enforces_defaults(&self) -> bool {
        self.enforce_defaults.unwrap_or(self.role.is_some())
    }

    /// The parameters every server connection of this database is opened with, in its startup
    /// packet: `role` first, then `defaults` (names lowercased). PostgreSQL makes startup
    /// values the session's own defaults, so `RESET`, `RESET ALL`, `DISCARD ALL` and `SET
    /// SESSION AUTHORIZATION DEFAULT` return to them.
    pub fn context_startup(&self) -> Vec<(String, String)> {
        let mut out = Vec::with_capacity(self.defaults.len() + 1);
        if let Some(r) = &self.role {
            out.push(("role".to_string(), r.clone()));
        }
        for (k, v) in &self.defaults {
            out.push((k.to_ascii_lowercase(), v.to_string()));
        }
        out
    }

    /// Settings a client of this context may not change (lowercase GUC names): `role` and
    /// `session_authorization` when a role is set, the `defaults` keys when they are enforced
    /// (a `default_transaction_*` key fixes its `transaction_*` twin too).
    pub fn fixed_settings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.role.is_some() {
            out.push("role".to_string());
            out.push("session_authorization".to_string());
        }
        if self.enforces_defaults() {
            for k in self.defaults.keys() {
                let k = k.to_ascii_lowercase();
                if let Some(twin) = k.strip_prefix("default_") {
                    if twin.starts_with("transaction_") {
                        out.push(twin.to_string());
                    }
                }
                out.push(k);
            }
        }
        out.sort();
        out.dedup();
        out
    }

    pub(crate) fn validate_context(&self, alias: &str) -> Result<(), String> {
        if let Some(r) = &self.role {
            if r.is_empty() || r.contains('\0') {
                return Err(format!("databases.{alias}.role: empty or contains NUL"));
            }
        }
        for (k, v) in &self.defaults {
            if !guc_name_ok(k) {
                return Err(format!(
                    "databases.{alias}.defaults: {k:?} is not a setting name"
                ));
            }
            let lk = k.to_ascii_lowercase();
            if matches!(
                lk.as_str(),
                "role" | "session_authorization" | "user" | "database" | "options" | "replication"
            ) {
                return Err(format!(
                    "databases.{alias}.defaults: {k:?} cannot be a default (use role, user or dbname)"
                ));
            }
            if v.to_string().contains('\0') {
                return Err(format!("databases.{alias}.defaults.{k}: contains NUL"));
            }
        }
        if self.enforce_defaults == Some(true) && self.defaults.is_empty() && self.role.is_none() {
            return Err(format!(
                "databases.{alias}.enforce_defaults: nothing to enforce (no role, no defaults)"
            ));
        }
        if let Some(c) = &self.credentials {
            CredentialSource::parse(c)
                .map_err(|e| format!("databases.{alias}.credentials: {e}"))?;
            if self.password.is_some() {
                return Err(format!(
                    "databases.{alias}: set either password or credentials, not both"
                ));
            }
            if c.starts_with("env:") && self.user.is_none() {
                return Err(format!(
                    "databases.{alias}.credentials: env: gives a password only; set databases.{alias}.user"
                ));
            }
        }
        if self.lease_ttl_s == 0 {
            return Err(format!("databases.{alias}.lease_ttl_s: must be at least 1"));
        }
        if self.lease_refresh_window_s >= self.lease_ttl_s {
            return Err(format!(
                "databases.{alias}.lease_refresh_window_s: {} must be less than lease_ttl_s {}",
                self.lease_refresh_window_s, self.lease_ttl_s
            ));
        }
        let j = self.lease_refresh_jitter.0;
        if !(0.0..=1.0).contains(&j) {
            return Err(format!(
                "databases.{alias}.lease_refresh_jitter: {j} is outside 0.0..=1.0"
            ));
        }
        Ok(())
    }
}

/// `defaults` values: strings, integers or booleans, sent as PostgreSQL reads them.
pub type Defaults = BTreeMap<String, TagValue>;

#[cfg(test)]
mod tests {
    use super::*;

    fn db(text: &str) -> Result<DatabaseConfig, String> {
        let d: DatabaseConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        d.validate_context("ctx")?;
        Ok(d)
    }

    #[test]
    fn a_role_fixes_itself_and_enforces_defaults() {
        let d = db("role = \"r\"\ndefaults = { default_transaction_read_only = true, statement_timeout = 5000, search_path = \"app, public\" }\n").unwrap();
        assert!(d.enforces_defaults());
        assert_eq!(
            d.fixed_settings(),
            [
                "default_transaction_read_only",
                "role",
                "search_path",
                "session_authorization",
                "statement_timeout",
                "transaction_read_only"
            ]
        );
        assert_eq!(
            d.context_startup(),
            [
                ("role".into(), "r".into()),
                ("default_transaction_read_only".into(), "true".into()),
                ("search_path".into(), "app, public".into()),
                ("statement_timeout".into(), "5000".into()),
            ]
        );
    }

    #[test]
    fn defaults_without_a_role_are_not_enforced_unless_asked() {
        let d = db("defaults = { search_path = \"x\" }\n").unwrap();
        assert!(!d.enforces_defaults() && d.fixed_settings().is_empty());
        let d = db("defaults = { search_path = \"x\" }\nenforce_defaults = true\n").unwrap();
        assert_eq!(d.fixed_settings(), ["search_path"]);
        let d = db("role = \"r\"\ndefaults = { search_path = \"x\" }\nenforce_defaults = false\n")
            .unwrap();
        assert_eq!(d.fixed_settings(), ["role", "session_authorization"]);
    }

    #[test]
    fn bad_context_keys_are_named() {
        for (text, want) in [
            ("defaults = { \"a b\" = 1 }\n", "defaults"),
            ("defaults = { role = \"x\" }\n", "defaults"),
            ("enforce_defaults = true\n", "enforce_defaults"),
            ("credentials = \"vault:x\"\n", "credentials"),
            ("credentials = \"env:X\"\n", "credentials"),
            (
                "user = \"u\"\npassword = \"p\"\ncredentials = \"env:X\"\n",
                "not both",
            ),
            (
                "lease_ttl_s = 10\nlease_refresh_window_s = 10\n",
                "lease_refresh_window_s",
            ),
            ("lease_refresh_jitter = 1.5\n", "lease_refresh_jitter"),
        ] {
            let e = db(text).unwrap_err();
            assert!(e.contains(want), "{text}: {e}");
        }
        assert_eq!(
            CredentialSource::parse("command:/bin/lease --ctx a").unwrap(),
            CredentialSource::Command("/bin/lease --ctx a".into())
        );
    }

    #[test]
    fn leased_contexts_get_the_reference_lease_and_pool_defaults() {
        // pgWarden: leases of 30 min refreshed 5 min early with 20 % jitter; the pool keeps 2
        // idle, closes idle ones after 5 min and every connection after 30 min.
        let d = db("user = \"u\"\ncredentials = \"file:/run/lease\"\n").unwrap();
        assert_eq!(
            (
                d.lease_ttl_s,
                d.lease_refresh_window_s,
                d.lease_refresh_jitter
            ),
            (1800, 300, Fraction(0.2))
        );
        assert_eq!(
            (d.min_idle(), d.idle_timeout_ms(), d.max_lifetime_ms()),
            (2, 300_000, 1_800_000)
        );
        // Without a lease: the database defaults.
        let d = db("user = \"u\"\n").unwrap();
        assert_eq!(
            (d.min_idle(), d.idle_timeout_ms(), d.max_lifetime_ms()),
            (0, 600_000, 3_600_000)
        );
        // Per context overridable, and min_idle never above a smaller pool.
        let d = db("user = \"u\"\ncredentials = \"file:/run/lease\"\nmin_idle = 0\nidle_timeout_ms = 1000\nmax_lifetime_ms = 0\nlease_ttl_s = 60\nlease_refresh_window_s = 10\nlease_refresh_jitter = 0.5\n").unwrap();
        assert_eq!(
            (d.min_idle(), d.idle_timeout_ms(), d.max_lifetime_ms()),
            (0, 1000, 0)
        );
        assert_eq!(
            (
                d.lease_ttl_s,
                d.lease_refresh_window_s,
                d.lease_refresh_jitter
            ),
            (60, 10, Fraction(0.5))
        );
        let d = db("user = \"u\"\ncredentials = \"file:/run/lease\"\npool_size = 1\n").unwrap();
        assert_eq!(d.min_idle(), 1);
    }
}
