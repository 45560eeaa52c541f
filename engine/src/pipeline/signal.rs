//! The signal stage (docs/signal.md): the first stage of the pipeline, before the plugins'
//! `pre_query`, so an anomaly event exists even when a plugin then refuses the statement.
//!
//! Before an execution: the shard's detectors see its text (`signal::ShardSignal::statement`):
//! rate spike per tenant, the six injection classes, novel shapes; a class whose action is
//! `block` refuses it with 42501 naming the class. At its outcome: the session's audit tally
//! counts it (rows, error class, latency), and a session open for longer than
//! `audit.interval_s` hands an interim summary to the audit thread.
//!
//! A session gets the stage only when `[anomaly]` watches its database or the audit/drift
//! thread runs; otherwise the pipeline does not have it and nothing of this runs.

use std::rc::Rc;
use std::time::{Duration, Instant};

use super::{Execution, Stage};
use crate::error::{Blame, ProxyError, SqlState};
use crate::shard::Shard;
use crate::signal::audit::Tally;
use crate::signal::{Blocked, SessionView};
use crate::sql::{self, SessionCommand};

pub struct SignalStage {
    /// Detection watches this session.
    detect: bool,
    view: SessionView,
    /// The session's audit counters (when the audit thread runs).
    tally: Option<Rc<Tally>>,
    /// When the previous audit summary was cut.
    last_cut: Instant,
    /// The tenant is from `SET helios.tenant_id` (not the user).
    tenant_set: bool,
}

impl SignalStage {
    /// The stage for a session, if anything of it is configured.
    pub fn configured(
        detect: bool,
        view: SessionView,
        tally: Option<Rc<Tally>>,
    ) -> Option<SignalStage> {
        (detect || tally.is_some()).then(|| SignalStage {
            detect,
            view,
            tally,
            last_cut: Instant::now(),
            tenant_set: false,
        })
    }

    /// `SET helios.tenant_id = '…'`: the tenant rate spikes are counted for.
    fn tenant(&mut self, sql: &str) {
        let t = sql.trim_start().as_bytes();
        if t.len() < 4 || !t[..4].eq_ignore_ascii_case(b"set ") {
            return;
        }
        if let Some(cmd) = sql::session_command(sql) {
            match cmd {
                SessionCommand::Set { name, value } if name == "helios.tenant_id" => {
                    let v = value.trim();
                    let v = v
                        .strip_prefix('\'')
                        .and_then(|x| x.strip_suffix('\''))
                        .map(|x| x.replace("''", "'"))
                        .unwrap_or_else(|| v.to_string());
                    self.view.tenant = v;
                    self.tenant_set = true;
                }
                SessionCommand::Reset { name } if name == "helios.tenant_id" && self.tenant_set => {
                    self.view.tenant = self.view.user.clone();
                    self.tenant_set = false;
                }
                _ => {}
            }
        }
    }
}

impl Stage for SignalStage {
    fn active(&self, _shard: &Shard) -> bool {
        true
    }

    fn before(&mut self, shard: &Shard, ex: &mut Execution) -> Result<(), ProxyError> {
        if !self.detect {
            return Ok(());
        }
        self.tenant(&ex.sql);
        let cfg = shard.config.borrow();
        let mut sig = shard.signal.borrow_mut();
        let now_s = sig.seconds(ex.started);
        match sig.statement(&cfg.config.anomaly, &mut self.view, &ex.sql, now_s) {
            Ok(()) => Ok(()),
            Err(Blocked(class)) => Err(ProxyError::error(
                SqlState("42501"),
                Blame::Client,
                format!("heliosproxy refused the statement: anomaly detection ({class})"),
            )),
        }
    }

    fn after(&mut self, shard: &Shard, ex: &Execution) {
        let Some(t) = &self.tally else { return };
        let code = ex.error.as_ref().map(|(c, _)| c.as_str());
        if code == Some("") {
            // Never ran (its batch failed before it, its portal was never executed).
            return;
        }
        let now = helios_uring::turn_time();
        let us = now.saturating_duration_since(ex.started).as_micros() as u64;
        t.executed(ex.rows, code, us);
        let every = shard.shared.signal.audit_interval_ms;
        if every > 0 && now.saturating_duration_since(self.last_cut) >= Duration::from_millis(every)
        {
            self.last_cut = now;
            let s = t.cut(crate::signal::unix_ms(), shard.id, false);
            shard.shared.signal.audit(s);
        }
    }
}
