//! `cost-governor`: per-tenant query cost budgets over minute, hour and day windows.
//!
//! `cost = alpha · rows + beta · elapsed_ms` (defaults 1e-6 and 1e-3; config keys `alpha`,
//! `beta`), from the outcome the proxy passes to `post_query` (rows from CommandComplete, the
//! execution's elapsed time). `pre_query` reads `tenant:<id>:budget` (else `default_budget`) and
//! `tenant:<id>:usage` and blocks a tenant whose usage in the current window reached that
//! window's budget; the day window takes precedence over the hour, the hour over the minute, and
//! the reason says when the window ends ("retry in N s"). Windows are fixed (tumbling) and
//! aligned to the Unix epoch: a minute starts at :00 s, an hour at :00 min, a day at 00:00 UTC.
//!
//! The tenant is the authenticated identity's `tenant_id` (an `authenticate` plugin), else the
//! startup user name. Session attributes are never used: a client can `SET helios.*` them.
//! Docs: docs/plugins.md, "cost-governor".
use helios_plugin_abi::*;
use serde::{Deserialize, Serialize};

/// Default cost per row.
pub const DEFAULT_ALPHA: f64 = 1e-6;
/// Default cost per millisecond.
pub const DEFAULT_BETA: f64 = 1e-3;
/// Every reason this plugin gives starts with this.
pub const PREFIX: &str = "cost-governor:";

/// A budget window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Minute,
    Hour,
    Day,
}

impl Window {
    /// In precedence order: a day verdict overrides an hour verdict overrides a minute verdict.
    pub const PRECEDENCE: [Window; 3] = [Window::Day, Window::Hour, Window::Minute];

    pub const fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Hour => 3_600,
            Window::Day => 86_400,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Hour => "hour",
            Window::Day => "day",
        }
    }

    /// Start of the window holding `now_ms`, Unix seconds.
    pub const fn start(self, now_ms: u64) -> u64 {
        now_ms / 1000 / self.secs() * self.secs()
    }

    /// Whole seconds until the window holding `now_ms` ends (at least 1).
    pub fn retry_in_s(self, now_ms: u64) -> u64 {
        let end_ms = (self.start(now_ms) + self.secs()) * 1000;
        end_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
    }
}

/// `tenant:<id>:budget` and `default_budget`: cost units per window; an absent window is
/// unlimited.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minute: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hour: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<f64>,
}

impl Budget {
    pub fn get(&self, w: Window) -> Option<f64> {
        match w {
            Window::Minute => self.minute,
            Window::Hour => self.hour,
            Window::Day => self.day,
        }
    }

    fn validate(&self) -> Result<(), String> {
        for w in Window::PRECEDENCE {
            if let Some(b) = self.get(w) {
                if !b.is_finite() || b < 0.0 {
                    return Err(format!("the {} budget {b} is not a number >= 0", w.name()));
                }
            }
        }
        Ok(())
    }
}

/// Cost spent in one window: `start` (Unix seconds) identifies the window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Counter {
    pub start: u64,
    pub cost: f64,
}

/// `tenant:<id>:usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub minute: Counter,
    #[serde(default)]
    pub hour: Counter,
    #[serde(default)]
    pub day: Counter,
}

impl Usage {
    fn counter(&mut self, w: Window) -> &mut Counter {
        match w {
            Window::Minute => &mut self.minute,
            Window::Hour => &mut self.hour,
            Window::Day => &mut self.day,
        }
    }

    /// Cost spent in the window holding `now_ms` (0 once that window has ended).
    pub fn current(&self, w: Window, now_ms: u64) -> f64 {
        let c = match w {
            Window::Minute => self.minute,
            Window::Hour => self.hour,
            Window::Day => self.day,
        };
        if c.start == w.start(now_ms) {
            c.cost
        } else {
            0.0
        }
    }

    /// Adds `cost` to every window, starting a fresh counter where the window has moved on.
    pub fn add(&mut self, cost: f64, now_ms: u64) {
        for w in Window::PRECEDENCE {
            let start = w.start(now_ms);
            let c = self.counter(w);
            if c.start != start {
                *c = Counter { start, cost: 0.0 };
            }
            c.cost += cost;
        }
    }
}

/// What `check_budget` found.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Allow,
    Exhausted {
        window: Window,
        used: f64,
        budget: f64,
        retry_in_s: u64,
    },
}

/// Day overrides hour overrides minute: the first exhausted window in that order decides, so the
/// client is told the longest wait that applies. A window is exhausted when its usage reached
/// its budget (a budget of 0 refuses everything).
pub fn check_budget(budget: &Budget, usage: &Usage, now_ms: u64) -> Verdict {
    for w in Window::PRECEDENCE {
        if let Some(b) = budget.get(w) {
            let used = usage.current(w, now_ms);
            if used >= b {
                return Verdict::Exhausted {
                    window: w,
                    used,
                    budget: b,
                    retry_in_s: w.retry_in_s(now_ms),
                };
            }
        }
    }
    Verdict::Allow
}

/// `alpha · rows + beta · elapsed_ms`.
pub fn cost(alpha: f64, beta: f64, rows: u64, elapsed_us: u64) -> f64 {
    alpha * rows as f64 + beta * (elapsed_us as f64 / 1000.0)
}

/// The tenant a query is charged to: the identity's `tenant_id`, else the startup user.
pub fn tenant(h: &HookContext) -> String {
    h.identity
        .as_ref()
        .and_then(|i| i.tenant_id.clone())
        .unwrap_or_else(|| h.user.to_string())
}

fn coefficient(key: &str, default: f64) -> Result<f64, String> {
    match kv_read(key) {
        None => Ok(default),
        Some(raw) => match serde_json::from_slice::<f64>(&raw) {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(format!(
                "{PREFIX} config {key} = {} is not a number >= 0",
                String::from_utf8_lossy(&raw)
            )),
        },
    }
}

/// The tenant's budget: `tenant:<id>:budget`, else `default_budget`, else none. A malformed
/// record is an error (the operator meant a budget: refuse rather than run unmetered).
pub fn budget_of(tenant: &str) -> Result<Option<Budget>, String> {
    let key = format!("tenant:{tenant}:budget");
    let (key, raw) = match kv_read(&key) {
        Some(raw) => (key, raw),
        None => match kv_read("default_budget") {
            Some(raw) => ("default_budget".to_string(), raw),
            None => return Ok(None),
        },
    };
    let b: Budget = serde_json::from_slice(&raw).map_err(|e| {
        format!(
            "{PREFIX} {key} is not a budget like {{\"minute\": 1.5, \"hour\": 20, \"day\": 100}}: {e}"
        )
    })?;
    b.validate().map_err(|e| format!("{PREFIX} {key}: {e}"))?;
    Ok(Some(b))
}

/// The tenant's usage record (an unreadable one counts as empty; the next write replaces it).
pub fn usage_of(tenant: &str) -> Usage {
    kv_read_json(format!("tenant:{tenant}:usage")).unwrap_or_default()
}

/// `pre_query`'s decision: `Ok(None)` to continue, `Ok(Some(reason))` / `Err(reason)` to block.
pub fn decide_pre_query(tenant: &str, now_ms: u64) -> Result<Option<String>, String> {
    let Some(budget) = budget_of(tenant)? else {
        return Ok(None);
    };
    match check_budget(&budget, &usage_of(tenant), now_ms) {
        Verdict::Allow => Ok(None),
        Verdict::Exhausted {
            window,
            used,
            budget,
            retry_in_s,
        } => Ok(Some(format!(
            "{PREFIX} tenant {tenant} exhausted its {} budget ({used:.6} of {budget} cost units); retry in {retry_in_s} s",
            window.name()
        ))),
    }
}

/// `post_query`'s work: charge the execution's cost to a tenant that has a budget. Executions
/// this plugin refused are not charged (they cost nothing on the server, and charging them would
/// write KV for every refused query).
pub fn observe_post_query(tenant: &str, outcome: &Outcome, now_ms: u64) -> Result<(), String> {
    if outcome
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with(PREFIX))
    {
        return Ok(());
    }
    if budget_of(tenant)?.is_none() {
        return Ok(());
    }
    let c = cost(
        coefficient("alpha", DEFAULT_ALPHA)?,
        coefficient("beta", DEFAULT_BETA)?,
        outcome.rows,
        outcome.elapsed_us,
    );
    let mut usage = usage_of(tenant);
    usage.add(c, now_ms);
    let json = serde_json::to_vec(&usage).map_err(|e| e.to_string())?;
    kv_write(format!("tenant:{tenant}:usage"), json)
        .map_err(|e| format!("{PREFIX} cannot record usage: {e:?}"))
}

fn pre(ctx: &QueryContext) -> PreQueryResult {
    let t = tenant(&ctx.hook_context);
    // The coefficients are checked here too, so a bad config shows on the first query.
    let checked = coefficient("alpha", DEFAULT_ALPHA)
        .and(coefficient("beta", DEFAULT_BETA))
        .and_then(|_| decide_pre_query(&t, now_unix_ms()));
    match checked {
        Ok(None) => PreQueryResult::Continue,
        Ok(Some(reason)) | Err(reason) => PreQueryResult::Block { reason },
    }
}
export_pre_query!(pre);

fn post(ctx: &PostQueryContext) {
    let t = tenant(&ctx.query_context.hook_context);
    // post_query results are ignored; a failure to record shows in the usage record.
    let _ = observe_post_query(&t, &ctx.outcome, now_unix_ms());
}
export_post_query!(post);

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 10:00:00 UTC, the start of a day's hour and minute windows... plus 0 ms.
    const T0: u64 = 1_796_637_600_000;

    fn setup(budget: &str) {
        kv_clear_for_tests();
        kv_write("tenant:acme:budget", budget).unwrap();
    }

    fn ok(rows: u64, elapsed_us: u64) -> Outcome {
        Outcome {
            success: true,
            rows,
            elapsed_us,
            ..Outcome::default()
        }
    }

    fn charge(cost_units: f64, now: u64) {
        let mut u = usage_of("acme");
        u.add(cost_units, now);
        kv_write("tenant:acme:usage", serde_json::to_vec(&u).unwrap()).unwrap();
    }

    #[test]
    fn windows_align_to_the_epoch_and_retry_counts_to_the_end() {
        assert_eq!(T0 % 3_600_000, 0);
        assert_eq!(Window::Minute.start(T0 + 59_999), T0 / 1000);
        assert_eq!(Window::Minute.start(T0 + 60_000), T0 / 1000 + 60);
        assert_eq!(Window::Minute.retry_in_s(T0), 60);
        assert_eq!(Window::Minute.retry_in_s(T0 + 59_001), 1);
        assert_eq!(Window::Minute.retry_in_s(T0 + 59_999), 1, "never 0");
        assert_eq!(Window::Hour.retry_in_s(T0 + 1_000), 3_599);
        let day_start = T0 / 86_400_000 * 86_400;
        assert_eq!(Window::Day.start(T0), day_start);
        assert_eq!(
            Window::Day.retry_in_s(T0),
            14 * 3600,
            "10:00 UTC: 14 h to midnight"
        );
    }

    #[test]
    fn cost_model_uses_rows_and_elapsed_with_defaults_and_config() {
        assert!((cost(DEFAULT_ALPHA, DEFAULT_BETA, 1_000_000, 0) - 1.0).abs() < 1e-12);
        assert!((cost(DEFAULT_ALPHA, DEFAULT_BETA, 0, 2_000_000) - 2.0).abs() < 1e-12);
        assert!((cost(DEFAULT_ALPHA, DEFAULT_BETA, 500, 1_500) - (0.0005 + 0.0015)).abs() < 1e-12);
        setup(r#"{"day": 100}"#);
        kv_write("alpha", "1").unwrap();
        kv_write("beta", "0").unwrap();
        observe_post_query("acme", &ok(7, 999_999), T0).unwrap();
        assert_eq!(usage_of("acme").current(Window::Day, T0), 7.0);
        kv_write("alpha", "\"x\"").unwrap();
        let e = observe_post_query("acme", &ok(7, 0), T0).unwrap_err();
        assert!(e.starts_with("cost-governor: config alpha"), "{e}");
        kv_write("alpha", "-1").unwrap();
        assert!(observe_post_query("acme", &ok(7, 0), T0).is_err());
    }

    #[test]
    fn under_the_budget_continues_at_the_budget_blocks() {
        setup(r#"{"minute": 1.0}"#);
        assert_eq!(decide_pre_query("acme", T0), Ok(None));
        charge(0.999, T0);
        assert_eq!(decide_pre_query("acme", T0 + 10), Ok(None));
        charge(0.001, T0 + 20);
        let r = decide_pre_query("acme", T0 + 30_000).unwrap().unwrap();
        assert!(r.starts_with(PREFIX), "{r}");
        assert!(r.contains("exhausted its minute budget"), "{r}");
        assert!(r.ends_with("retry in 30 s"), "{r}");
        // The next minute starts fresh.
        assert_eq!(decide_pre_query("acme", T0 + 60_000), Ok(None));
        // A zero budget refuses at once.
        setup(r#"{"hour": 0}"#);
        let r = decide_pre_query("acme", T0).unwrap().unwrap();
        assert!(r.contains("hour budget"), "{r}");
    }

    #[test]
    fn hour_and_day_windows_roll_over_at_their_ends() {
        setup(r#"{"hour": 5, "day": 50}"#);
        charge(5.0, T0 + 1_000);
        let r = decide_pre_query("acme", T0 + 3_599_000).unwrap().unwrap();
        assert!(
            r.contains("hour budget") && r.ends_with("retry in 1 s"),
            "{r}"
        );
        assert_eq!(decide_pre_query("acme", T0 + 3_600_000), Ok(None));
        // Spread over hours, the day fills up; it ends at midnight UTC.
        for h in 1..10u64 {
            charge(5.0, T0 + h * 3_600_000);
        }
        let now = T0 + 9 * 3_600_000 + 60_000;
        let r = decide_pre_query("acme", now).unwrap().unwrap();
        assert!(r.contains("day budget"), "{r}");
        assert!(r.ends_with(&format!("retry in {} s", 5 * 3600 - 60)), "{r}");
        assert_eq!(decide_pre_query("acme", T0 + 14 * 3_600_000), Ok(None));
    }

    #[test]
    fn day_overrides_hour_overrides_minute() {
        let usage = {
            let mut u = Usage::default();
            u.add(10.0, T0);
            u
        };
        let all = Budget {
            minute: Some(1.0),
            hour: Some(2.0),
            day: Some(3.0),
        };
        let w = |b: &Budget| match check_budget(b, &usage, T0) {
            Verdict::Exhausted { window, .. } => Some(window),
            Verdict::Allow => None,
        };
        assert_eq!(w(&all), Some(Window::Day));
        assert_eq!(
            w(&Budget {
                day: Some(100.0),
                ..all.clone()
            }),
            Some(Window::Hour)
        );
        assert_eq!(
            w(&Budget {
                day: Some(100.0),
                hour: Some(100.0),
                ..all.clone()
            }),
            Some(Window::Minute)
        );
        assert_eq!(
            w(&Budget {
                minute: None,
                hour: None,
                day: None
            }),
            None,
            "no window set: unlimited"
        );
        // A day verdict carries the day's retry time, not the minute's.
        match check_budget(&all, &usage, T0) {
            Verdict::Exhausted {
                retry_in_s, used, ..
            } => assert_eq!((retry_in_s, used), (14 * 3600, 10.0)),
            v => panic!("{v:?}"),
        }
    }

    #[test]
    fn default_budget_applies_and_a_tenant_budget_overrides_it() {
        kv_clear_for_tests();
        assert_eq!(budget_of("acme"), Ok(None));
        kv_write("default_budget", r#"{"minute": 0}"#).unwrap();
        assert!(decide_pre_query("acme", T0).unwrap().is_some());
        kv_write("tenant:acme:budget", r#"{"minute": 10}"#).unwrap();
        assert_eq!(decide_pre_query("acme", T0), Ok(None));
        assert!(decide_pre_query("other", T0).unwrap().is_some());
    }

    #[test]
    fn a_malformed_budget_refuses_instead_of_running_unmetered() {
        setup(r#"{"minutes": 1}"#);
        let e = decide_pre_query("acme", T0).unwrap_err();
        assert!(
            e.starts_with("cost-governor: tenant:acme:budget is not a budget"),
            "{e}"
        );
        setup(r#"{"day": -1}"#);
        assert!(decide_pre_query("acme", T0).is_err());
        setup("not json");
        assert!(decide_pre_query("acme", T0).is_err());
    }

    #[test]
    fn post_query_charges_every_window_and_skips_its_own_refusals() {
        setup(r#"{"day": 100}"#);
        observe_post_query("acme", &ok(1_000_000, 1_000), T0).unwrap();
        let failed = Outcome {
            success: false,
            rows: 0,
            elapsed_us: 2_000_000,
            error: Some("relation does not exist".into()),
            ..Outcome::default()
        };
        observe_post_query("acme", &failed, T0 + 1).unwrap();
        let u = usage_of("acme");
        for w in Window::PRECEDENCE {
            assert!((u.current(w, T0) - 3.001).abs() < 1e-9, "{w:?}: {u:?}");
        }
        let refused = Outcome {
            success: false,
            elapsed_us: 1_000_000_000,
            error: Some("cost-governor: tenant acme exhausted".into()),
            ..Outcome::default()
        };
        observe_post_query("acme", &refused, T0 + 2).unwrap();
        assert!((usage_of("acme").current(Window::Day, T0) - 3.001).abs() < 1e-9);
        // A tenant without a budget is not tracked (no KV write per query).
        observe_post_query("nobody", &ok(5, 5), T0).unwrap();
        assert_eq!(kv_read("tenant:nobody:usage"), None);
    }

    #[test]
    fn tenant_is_the_identity_then_the_user_never_a_session_attribute() {
        let mut h = HookContext {
            user: "alice".into(),
            ..HookContext::default()
        };
        h.attributes
            .insert("helios.tenant_id".into(), "forged".into());
        assert_eq!(tenant(&h), "alice");
        h.identity = Some(Identity {
            user_id: "u".into(),
            tenant_id: Some("acme".into()),
            ..Identity::default()
        });
        assert_eq!(tenant(&h), "acme");
    }

    #[test]
    fn the_hooks_block_and_charge_through_the_clock() {
        setup(r#"{"minute": 0.5}"#);
        set_clock_for_tests(Some(T0));
        let qc = QueryContext {
            query: "select 1".into(),
            hook_context: HookContext {
                user: "acme".into(),
                ..HookContext::default()
            },
            ..QueryContext::default()
        };
        assert_eq!(pre(&qc), PreQueryResult::Continue);
        post(&PostQueryContext {
            query_context: qc.clone(),
            outcome: ok(0, 600_000),
        });
        match pre(&qc) {
            PreQueryResult::Block { reason } => assert!(reason.ends_with("retry in 60 s")),
            r => panic!("{r:?}"),
        }
        set_clock_for_tests(Some(T0 + 60_000));
        assert_eq!(pre(&qc), PreQueryResult::Continue);
        set_clock_for_tests(None);
    }
}
