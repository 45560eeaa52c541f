//! Time, memory and fuel limits, failure policies, max_plugins.

use crate::common::*;
use helios_plugin_host::{
    AuthDecision, Hook, LoadError, Outcome, PreQueryDecision, QueryContext, RouteDecision,
};

#[test]
fn memory_hungry_plugin_is_capped_and_recovers() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\nmemory_limit_mb = 16\n{}",
        entry("hog", "hog", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(answer(pre(&mut shard, "hog 4")), "holding 4 MiB");
    assert_eq!(
        answer(pre(&mut shard, "hog 32")),
        "plugin 'hog' exceeded memory_limit_mb = 16; refused (on_error = fail_closed)"
    );
    assert_eq!(shard.stats()[0].memory_failures, 1);
    // Fresh instance: the 4 MiB held before are gone.
    assert_eq!(answer(pre(&mut shard, "hog 1")), "holding 1 MiB");
}

#[test]
fn memory_limit_mb_changes_what_fits() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\nmemory_limit_mb = 64\n{}",
        entry("hog", "hog", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(answer(pre(&mut shard, "hog 32")), "holding 32 MiB");
}

#[test]
fn fuel_per_call_bounds_work_per_call() {
    let text = |fuel: &str| {
        format!(
            "enabled = true\ntimeout_ms = 10000\n{fuel}\n{}",
            entry("spin", "spin", "")
        )
    };
    let rt = runtime_ok(&config(&text("fuel_per_call = 1000000")));
    let mut shard = rt.shard(0);
    assert_eq!(pre(&mut shard, "burn 1000"), PreQueryDecision::Continue);
    assert_eq!(
        answer(pre(&mut shard, "burn 50000000")),
        "plugin 'spin' ran out of fuel (1000000 units); refused (on_error = fail_closed)"
    );
    assert_eq!(
        pre(&mut shard, "burn 1000"),
        PreQueryDecision::Continue,
        "fuel is refilled per call"
    );
    let rt = runtime_ok(&config(&text("")));
    let mut shard = rt.shard(0);
    assert_eq!(
        pre(&mut shard, "burn 5000000"),
        PreQueryDecision::Continue,
        "no fuel limit without fuel_per_call"
    );
}

fn query<'a>(sql: &'a str, hc: &'a helios_plugin_host::HookContext<'a>) -> QueryContext<'a> {
    QueryContext {
        query: sql,
        normalized: sql,
        tables: &[],
        is_read_only: true,
        hook_context: hc,
    }
}

#[test]
fn on_error_defaults_fail_closed_for_pre_query_route_and_authenticate() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("faulty", "faulty", "")
    )));
    let mut shard = rt.shard(0);
    let s = Session::default();
    let hc = s.hook_context();
    assert!(matches!(shard.pre_query(&query("select 'panic'", &hc)),
        PreQueryDecision::Block(b) if b.reason.starts_with("plugin 'faulty' trapped")));
    assert!(matches!(shard.route(&query("select 'panic'", &hc)),
        RouteDecision::Block(b) if b.reason.ends_with("refused (on_error = fail_closed)")));
    // post_query fails open: nothing to refuse, the failure is counted and the shard goes on.
    shard.post_query(&query("select 'panic'", &hc), &Outcome::default());
    let panicky = Session {
        application_name: "panic".into(),
        ..Session::default()
    };
    assert!(matches!(
        shard.authenticate(&panicky.hook_context()),
        AuthDecision::Deny { .. }
    ));
    assert_eq!(shard.stats()[0].failures, 4);
    // And the shard keeps serving.
    assert_eq!(
        shard.pre_query(&query("select 1", &hc)),
        PreQueryDecision::Continue
    );
    assert_eq!(shard.route(&query("select 1", &hc)), RouteDecision::Default);
    assert_eq!(shard.authenticate(&hc), AuthDecision::Defer);
}

#[test]
fn on_error_fail_open_lets_the_query_through() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("faulty", "faulty", "on_error = \"fail_open\"")
    )));
    let mut shard = rt.shard(0);
    let s = Session::default();
    let hc = s.hook_context();
    assert_eq!(
        shard.pre_query(&query("select 'panic'", &hc)),
        PreQueryDecision::Continue
    );
    assert_eq!(
        shard.route(&query("select 'panic'", &hc)),
        RouteDecision::Default
    );
    let panicky = Session {
        application_name: "panic".into(),
        ..Session::default()
    };
    assert_eq!(
        shard.authenticate(&panicky.hook_context()),
        AuthDecision::Defer
    );
    assert_eq!(shard.stats()[0].failures, 3);
}

#[test]
fn on_error_fail_closed_can_be_set_for_post_query_too_without_affecting_queries() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry(
            "faulty",
            "faulty",
            "on_error = \"fail_closed\"\nhooks = [\"post_query\"]"
        )
    )));
    let mut shard = rt.shard(0);
    assert!(!shard.has_hook(Hook::PreQuery));
    let s = Session::default();
    let hc = s.hook_context();
    shard.post_query(&query("select 'panic'", &hc), &Outcome::default());
    assert_eq!(shard.stats()[0].failures, 1);
}

#[test]
fn max_plugins_is_enforced() {
    let cfg = config(&format!(
        "enabled = true\nmax_plugins = 2\n{}{}{}",
        entry("one", "block-drop", ""),
        entry("two", "rewrite", ""),
        entry("three", "kv-probe", "")
    ));
    let (rt, report) = runtime(&cfg);
    assert_eq!(
        rt.plugins()
            .iter()
            .map(|p| p.name.as_str())
            .collect::<Vec<_>>(),
        ["one", "two"]
    );
    assert_eq!(report.refused.len(), 1);
    assert_eq!(report.refused[0].name.as_deref(), Some("three"));
    assert!(matches!(report.refused[0].error, LoadError::TooMany(2)));
    assert_eq!(
        report.refused[0].error.to_string(),
        "max_plugins = 2 reached; plugin not loaded"
    );
}
