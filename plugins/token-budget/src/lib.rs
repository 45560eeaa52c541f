//! `token-budget`: per-(agent, model) token budgets over minute and day windows for traffic
//! ai-classifier tagged. Untagged traffic passes untouched (no KV access beyond reading the
//! `classifier` name).
//!
//! Tags: `plugin.<classifier>.ai_traffic = "true"`, `plugin.<classifier>.agent_id`,
//! `plugin.<classifier>.model_id` in `hook_context.attributes` (config `classifier`, default
//! `ai-classifier`, is the classifier's configured name; it must come before this plugin in the
//! plugin order). Cost: tokens ≈ response bytes / 4 (config `bytes_per_token`), from the
//! outcome's `response_bytes`, rounded up. Budget: `budget:<agent>:<model>`, else
//! `budget:<agent>:*`, else `budget:*:<model>`, else `default_budget`, as
//! `{"minute": tokens, "day": tokens}`. Usage: `usage:<agent>:<model>`. The day window overrides
//! the minute window; windows are fixed and aligned to the epoch (a day ends at 00:00 UTC).
use helios_plugin_abi::*;
use serde::{Deserialize, Serialize};

/// Every reason this plugin gives starts with this.
pub const PREFIX: &str = "token-budget:";
pub const DEFAULT_BYTES_PER_TOKEN: u64 = 4;
pub const DEFAULT_CLASSIFIER: &str = "ai-classifier";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Window {
    Minute,
    Day,
}

impl Window {
    /// Day overrides minute.
    pub const PRECEDENCE: [Window; 2] = [Window::Day, Window::Minute];

    pub const fn secs(self) -> u64 {
        match self {
            Window::Minute => 60,
            Window::Day => 86_400,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Window::Minute => "minute",
            Window::Day => "day",
        }
    }

    /// Start of the window holding `now_ms`, Unix seconds.
    pub const fn start(self, now_ms: u64) -> u64 {
        now_ms / 1000 / self.secs() * self.secs()
    }

    /// Whole seconds until the window ends (at least 1).
    pub fn retry_in_s(self, now_ms: u64) -> u64 {
        let end_ms = (self.start(now_ms) + self.secs()) * 1000;
        end_ms.saturating_sub(now_ms).div_ceil(1000).max(1)
    }
}

/// Tokens per window; an absent window is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minute: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub day: Option<u64>,
}

impl Budget {
    pub fn get(&self, w: Window) -> Option<u64> {
        match w {
            Window::Minute => self.minute,
            Window::Day => self.day,
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub start: u64,
    pub tokens: u64,
}

/// `usage:<agent>:<model>`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub minute: Counter,
    #[serde(default)]
    pub day: Counter,
}

impl Usage {
    pub fn current(&self, w: Window, now_ms: u64) -> u64 {
        let c = match w {
            Window::Minute => self.minute,
            Window::Day => self.day,
        };
        if c.start == w.start(now_ms) {
            c.tokens
        } else {
            0
        }
    }

    pub fn add(&mut self, tokens: u64, now_ms: u64) {
        for w in Window::PRECEDENCE {
            let start = w.start(now_ms);
            let c = match w {
                Window::Minute => &mut self.minute,
                Window::Day => &mut self.day,
            };
            if c.start != start {
                *c = Counter { start, tokens: 0 };
            }
            c.tokens = c.tokens.saturating_add(tokens);
        }
    }
}

/// tokens ≈ bytes / `bytes_per_token`, rounded up.
pub fn estimate_tokens(response_bytes: u64, bytes_per_token: u64) -> u64 {
    response_bytes.div_ceil(bytes_per_token.max(1))
}

/// The (agent, model) ai-classifier tagged this execution with, `None` for untagged traffic.
pub fn tagged(h: &HookContext, classifier: &str) -> Option<(String, String)> {
    let p = annotation_prefix(classifier);
    let get = |k: &str| h.attributes.get(&format!("{p}{k}"));
    if get("ai_traffic").map(String::as_str) != Some("true") {
        return None;
    }
    let id = |k: &str| get(k).cloned().unwrap_or_else(|| "unknown".into());
    Some((id("agent_id"), id("model_id")))
}

fn classifier() -> String {
    kv_read_json::<String>("classifier").unwrap_or_else(|| DEFAULT_CLASSIFIER.into())
}

/// The budget for (agent, model), the key it came from, or an error for a malformed record.
pub fn budget_of(agent: &str, model: &str) -> Result<Option<(String, Budget)>, String> {
    for key in [
        format!("budget:{agent}:{model}"),
        format!("budget:{agent}:*"),
        format!("budget:*:{model}"),
        "default_budget".to_string(),
    ] {
        if let Some(raw) = kv_read(&key) {
            return serde_json::from_slice::<Budget>(&raw)
                .map(|b| Some((key.clone(), b)))
                .map_err(|e| {
                    format!("{PREFIX} {key} is not a budget like {{\"minute\": 2000, \"day\": 100000}}: {e}")
                });
        }
    }
    Ok(None)
}

pub fn usage_key(agent: &str, model: &str) -> String {
    format!("usage:{agent}:{model}")
}

pub fn usage_of(agent: &str, model: &str) -> Usage {
    kv_read_json(usage_key(agent, model)).unwrap_or_default()
}

/// `Ok(None)`: continue; `Ok(Some)` / `Err`: block with that reason.
pub fn decide_pre_query(agent: &str, model: &str, now_ms: u64) -> Result<Option<String>, String> {
    let Some((_, budget)) = budget_of(agent, model)? else {
        return Ok(None);
    };
    let usage = usage_of(agent, model);
    for w in Window::PRECEDENCE {
        if let Some(b) = budget.get(w) {
            let used = usage.current(w, now_ms);
            if used >= b {
                return Ok(Some(format!(
                    "{PREFIX} agent {agent} with model {model} exhausted its {} budget ({used} of {b} tokens); retry in {} s",
                    w.name(),
                    w.retry_in_s(now_ms)
                )));
            }
        }
    }
    Ok(None)
}

/// Adds the execution's tokens. Executions this plugin refused are not charged.
pub fn observe_post_query(
    agent: &str,
    model: &str,
    outcome: &Outcome,
    now_ms: u64,
) -> Result<(), String> {
    if outcome
        .error
        .as_deref()
        .is_some_and(|e| e.starts_with(PREFIX))
    {
        return Ok(());
    }
    if budget_of(agent, model)?.is_none() {
        return Ok(());
    }
    let bpt = kv_read_json::<u64>("bytes_per_token").unwrap_or(DEFAULT_BYTES_PER_TOKEN);
    let mut u = usage_of(agent, model);
    u.add(estimate_tokens(outcome.response_bytes, bpt), now_ms);
    let json = serde_json::to_vec(&u).map_err(|e| e.to_string())?;
    kv_write(usage_key(agent, model), json).map_err(|e| format!("{PREFIX} {e:?}"))
}

fn pre(ctx: &QueryContext) -> PreQueryResult {
    let Some((agent, model)) = tagged(&ctx.hook_context, &classifier()) else {
        return PreQueryResult::Continue;
    };
    match decide_pre_query(&agent, &model, now_unix_ms()) {
        Ok(None) => PreQueryResult::Continue,
        Ok(Some(reason)) | Err(reason) => PreQueryResult::Block { reason },
    }
}
export_pre_query!(pre);

fn post(ctx: &PostQueryContext) {
    if let Some((agent, model)) = tagged(&ctx.query_context.hook_context, &classifier()) {
        let _ = observe_post_query(&agent, &model, &ctx.outcome, now_unix_ms());
    }
}
export_post_query!(post);

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-07 10:00:00 UTC.
    const T0: u64 = 1_796_637_600_000;

    fn hc(tags: &[(&str, &str)]) -> HookContext<'static> {
        let mut h = HookContext::default();
        for (k, v) in tags {
            h.attributes.insert(k.to_string(), v.to_string());
        }
        h
    }

    fn bytes(n: u64) -> Outcome {
        Outcome {
            success: true,
            response_bytes: n,
            ..Outcome::default()
        }
    }

    #[test]
    fn tokens_are_bytes_over_four_rounded_up_or_configured() {
        assert_eq!(estimate_tokens(0, 4), 0);
        assert_eq!(estimate_tokens(1, 4), 1);
        assert_eq!(estimate_tokens(400, 4), 100);
        assert_eq!(estimate_tokens(401, 4), 101);
        assert_eq!(estimate_tokens(10, 0), 10, "0 is read as 1");
        kv_clear_for_tests();
        kv_write("default_budget", r#"{"day": 1000000}"#).unwrap();
        kv_write("bytes_per_token", "2").unwrap();
        observe_post_query("a", "m", &bytes(100), T0).unwrap();
        assert_eq!(usage_of("a", "m").current(Window::Day, T0), 50);
    }

    #[test]
    fn only_traffic_the_configured_classifier_tagged_counts() {
        let t = [
            ("plugin.ai-classifier.ai_traffic", "true"),
            ("plugin.ai-classifier.agent_id", "claude-agent"),
            ("plugin.ai-classifier.model_id", "claude"),
        ];
        assert_eq!(
            tagged(&hc(&t), "ai-classifier"),
            Some(("claude-agent".into(), "claude".into()))
        );
        assert_eq!(tagged(&hc(&t), "other-name"), None);
        assert_eq!(tagged(&hc(&[]), "ai-classifier"), None);
        // A client's own SET cannot stand in for the classifier's tag.
        assert_eq!(
            tagged(&hc(&[("helios.ai_traffic", "true")]), "ai-classifier"),
            None
        );
        assert_eq!(
            tagged(
                &hc(&[("plugin.ai-classifier.ai_traffic", "true")]),
                "ai-classifier"
            ),
            Some(("unknown".into(), "unknown".into()))
        );
    }

    #[test]
    fn minute_budget_blocks_at_the_threshold_and_resets_next_minute() {
        kv_clear_for_tests();
        kv_write("budget:bot:gpt-4", r#"{"minute": 100}"#).unwrap();
        assert_eq!(decide_pre_query("bot", "gpt-4", T0), Ok(None));
        observe_post_query("bot", "gpt-4", &bytes(396), T0 + 1_000).unwrap();
        assert_eq!(
            decide_pre_query("bot", "gpt-4", T0 + 2_000),
            Ok(None),
            "99 tokens"
        );
        observe_post_query("bot", "gpt-4", &bytes(4), T0 + 3_000).unwrap();
        let r = decide_pre_query("bot", "gpt-4", T0 + 15_000)
            .unwrap()
            .unwrap();
        assert!(r.starts_with(PREFIX), "{r}");
        assert!(r.contains("minute budget (100 of 100 tokens)"), "{r}");
        assert!(r.ends_with("retry in 45 s"), "{r}");
        assert_eq!(decide_pre_query("bot", "gpt-4", T0 + 60_000), Ok(None));
        // Another model of the same agent has no budget here.
        assert_eq!(decide_pre_query("bot", "claude", T0 + 15_000), Ok(None));
    }

    #[test]
    fn day_overrides_minute_and_ends_at_midnight_utc() {
        kv_clear_for_tests();
        kv_write("budget:bot:m", r#"{"minute": 10, "day": 20}"#).unwrap();
        observe_post_query("bot", "m", &bytes(80), T0).unwrap();
        let r = decide_pre_query("bot", "m", T0 + 1_000).unwrap().unwrap();
        assert!(r.contains("day budget (20 of 20 tokens)"), "{r}");
        assert!(r.ends_with(&format!("retry in {} s", 14 * 3600 - 1)), "{r}");
        // Minutes later the minute window is fresh, the day still exhausted.
        let r = decide_pre_query("bot", "m", T0 + 120_000).unwrap().unwrap();
        assert!(r.contains("day budget"), "{r}");
        assert_eq!(decide_pre_query("bot", "m", T0 + 14 * 3_600_000), Ok(None));
        // Only the minute exhausted: the minute says so.
        kv_write("budget:bot:m", r#"{"minute": 10, "day": 1000}"#).unwrap();
        let r = decide_pre_query("bot", "m", T0 + 1_000).unwrap().unwrap();
        assert!(r.contains("minute budget"), "{r}");
    }

    #[test]
    fn budget_lookup_falls_back_agent_then_model_then_default() {
        kv_clear_for_tests();
        assert_eq!(budget_of("a", "m"), Ok(None));
        kv_write("default_budget", r#"{"day": 4}"#).unwrap();
        assert_eq!(budget_of("a", "m").unwrap().unwrap().0, "default_budget");
        kv_write("budget:*:m", r#"{"day": 3}"#).unwrap();
        assert_eq!(budget_of("a", "m").unwrap().unwrap().0, "budget:*:m");
        kv_write("budget:a:*", r#"{"day": 2}"#).unwrap();
        assert_eq!(budget_of("a", "m").unwrap().unwrap().0, "budget:a:*");
        kv_write("budget:a:m", r#"{"day": 1}"#).unwrap();
        let (k, b) = budget_of("a", "m").unwrap().unwrap();
        assert_eq!((k.as_str(), b.day), ("budget:a:m", Some(1)));
        kv_write("budget:a:m", r#"{"hour": 1}"#).unwrap();
        let e = decide_pre_query("a", "m", T0).unwrap_err();
        assert!(
            e.starts_with("token-budget: budget:a:m is not a budget"),
            "{e}"
        );
    }

    #[test]
    fn own_refusals_and_unbudgeted_pairs_are_not_charged() {
        kv_clear_for_tests();
        kv_write("budget:a:m", r#"{"day": 100}"#).unwrap();
        let refused = Outcome {
            success: false,
            response_bytes: 4000,
            error: Some("token-budget: agent a exhausted".into()),
            ..Outcome::default()
        };
        observe_post_query("a", "m", &refused, T0).unwrap();
        assert_eq!(usage_of("a", "m"), Usage::default());
        // A failed query's error response did reach the agent: it counts.
        let failed = Outcome {
            success: false,
            response_bytes: 40,
            error: Some("syntax error".into()),
            ..Outcome::default()
        };
        observe_post_query("a", "m", &failed, T0).unwrap();
        assert_eq!(usage_of("a", "m").current(Window::Minute, T0), 10);
        observe_post_query("x", "y", &bytes(40), T0).unwrap();
        assert_eq!(kv_read(usage_key("x", "y")), None);
    }

    #[test]
    fn hooks_pass_untagged_traffic_and_meter_tagged_traffic() {
        kv_clear_for_tests();
        set_clock_for_tests(Some(T0));
        kv_write("classifier", "\"cls\"").unwrap();
        kv_write("budget:bot:gpt", r#"{"minute": 1}"#).unwrap();
        let tagged_ctx = QueryContext {
            hook_context: hc(&[
                ("plugin.cls.ai_traffic", "true"),
                ("plugin.cls.agent_id", "bot"),
                ("plugin.cls.model_id", "gpt"),
            ]),
            ..QueryContext::default()
        };
        assert_eq!(pre(&tagged_ctx), PreQueryResult::Continue);
        post(&PostQueryContext {
            query_context: tagged_ctx.clone(),
            outcome: bytes(4),
        });
        assert!(matches!(pre(&tagged_ctx), PreQueryResult::Block { .. }));
        let human = QueryContext::default();
        assert_eq!(pre(&human), PreQueryResult::Continue);
        set_clock_for_tests(None);
    }
}
