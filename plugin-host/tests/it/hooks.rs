//! The hooks, their JSON both ways, and the chains.

use crate::common::*;
use helios_plugin_host::{
    AuthDecision, Hook, Identity, Outcome, PreQueryDecision, QueryContext, RouteDecision,
    BLOCK_SQLSTATE,
};

#[test]
fn block_drop_blocks_drop_table_and_lets_other_queries_through() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("block-drop", "block-drop", "")
    )));
    let mut shard = rt.shard(0);
    assert!(shard.has_hook(Hook::PreQuery));
    assert!(
        !shard.has_hook(Hook::Route)
            && !shard.has_hook(Hook::PostQuery)
            && !shard.has_hook(Hook::Authenticate)
    );
    assert_eq!(
        pre(&mut shard, "SELECT * FROM users"),
        PreQueryDecision::Continue
    );
    match pre(&mut shard, "drop   TABLE users") {
        PreQueryDecision::Block(b) => {
            assert_eq!(&*b.plugin, "block-drop");
            assert_eq!(b.reason, "DROP TABLE is not allowed through HeliosProxy");
        }
        other => panic!("not blocked: {other:?}"),
    }
    assert_eq!(BLOCK_SQLSTATE, "42000");
}

#[test]
fn rewrite_is_returned_and_seen_by_later_plugins() {
    // Two instances of the rewrite plugin: the second sees the first's LIMIT and leaves it.
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}{}",
        entry("cap-1", "rewrite", ""),
        entry("cap-2", "rewrite", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(
        pre(&mut shard, "SELECT * FROM events;"),
        PreQueryDecision::Rewrite {
            sql: "SELECT * FROM events LIMIT 1000".into()
        }
    );
    assert_eq!(
        pre(&mut shard, "SELECT * FROM events LIMIT 5"),
        PreQueryDecision::Continue
    );
    let s = Session {
        read_only: false,
        ..Session::default()
    };
    assert_eq!(
        s.pre_query(&mut shard, "SELECT * FROM events"),
        PreQueryDecision::Continue
    );
}

fn route(shard: &mut helios_plugin_host::ShardPlugins, s: &Session, sql: &str) -> RouteDecision {
    let hc = s.hook_context();
    shard.route(&QueryContext {
        query: sql,
        normalized: sql,
        tables: &s.tables,
        is_read_only: true,
        hook_context: &hc,
    })
}

#[test]
fn route_results_and_node_validation() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("router", "route", "")
    )));
    let mut shard = rt.shard(0);
    let s = Session::default();
    assert_eq!(route(&mut shard, &s, "SELECT 1"), RouteDecision::Default);
    assert_eq!(
        route(&mut shard, &s, "/* route: primary */ SELECT 1"),
        RouteDecision::Primary
    );
    assert_eq!(
        route(&mut shard, &s, "/* route: replica */ SELECT 1"),
        RouteDecision::Replica
    );
    assert_eq!(
        route(&mut shard, &s, "/* route: node=replica-1 */ SELECT 1"),
        RouteDecision::Node("replica-1".into())
    );
    match route(&mut shard, &s, "/* route: node=ghost */ SELECT 1") {
        RouteDecision::Block(b) => assert_eq!(
            b.reason,
            "plugin 'router' routed the query to node 'ghost', which is not a configured node (configured: primary-1, replica-1)"
        ),
        other => panic!("{other:?}"),
    }
    match route(
        &mut shard,
        &s,
        "/* route: block=cross-region read forbidden */ SELECT 1",
    ) {
        RouteDecision::Block(b) => assert_eq!(b.reason, "cross-region read forbidden"),
        other => panic!("{other:?}"),
    }
    match route(&mut shard, &s, "/* route: block */ SELECT 1") {
        RouteDecision::Block(b) => assert_eq!(b.reason, "blocked by plugin"),
        other => panic!("{other:?}"),
    }
    // Attributes reach the plugin: an EU session reading audit_log is refused.
    let eu = Session {
        attributes: [("helios.region".to_string(), "eu".to_string())].into(),
        tables: vec!["audit_log".into()],
        ..Session::default()
    };
    assert!(
        matches!(route(&mut shard, &eu, "SELECT * FROM audit_log"), RouteDecision::Block(b) if b.reason.contains("cross-region"))
    );
    // The engine's node list can change at run time.
    rt.set_node_names(&["ghost".into()]);
    assert_eq!(
        route(&mut shard, &s, "/* route: node=ghost */ SELECT 1"),
        RouteDecision::Node("ghost".into())
    );
}

#[test]
fn authenticate_allow_deny_defer() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("tokens", "auth-header", "")
    )));
    let real_key = format!(
        "token:{}",
        helios_plugin_host::artefact::hex(&helios_plugin_host::artefact::sha256(b"s3cret"))
    );
    rt.kv_put(
        "tokens",
        real_key.as_bytes(),
        br#"{"user_id":"u1","roles":["analyst"],"tenant_id":"t1"}"#,
    )
    .unwrap();
    let mut shard = rt.shard(0);
    assert!(shard.has_hook(Hook::Authenticate));
    let auth = |shard: &mut helios_plugin_host::ShardPlugins, app: &str| {
        let s = Session {
            application_name: app.into(),
            request_id: 0,
            ..Session::default()
        };
        shard.authenticate(&s.hook_context())
    };
    wait_until("the admin write reaches the shard", || {
        shard.apply_kv_updates();
        matches!(auth(&mut shard, "token:s3cret"), AuthDecision::Allow { .. })
    });
    match auth(&mut shard, "token:s3cret") {
        AuthDecision::Allow { identity, plugin } => {
            assert_eq!(&*plugin, "tokens");
            assert_eq!(
                identity,
                Identity {
                    user_id: "u1".into(),
                    roles: vec!["analyst".into()],
                    tenant_id: Some("t1".into()),
                    ..Identity::default()
                }
            );
            assert!(identity
                .session_attributes()
                .contains(&("helios.tenant_id".into(), "t1".into())));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        auth(&mut shard, "token:wrong"),
        AuthDecision::Deny {
            message: "unknown token".into(),
            plugin: "tokens".into()
        }
    );
    assert_eq!(auth(&mut shard, "psql"), AuthDecision::Defer);
}

#[test]
fn context_reaches_the_plugin_and_post_query_sees_the_same_request_id() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    let s = Session {
        request_id: 77,
        identity: Some(Identity {
            user_id: "u1".into(),
            ..Identity::default()
        }),
        attributes: [("helios.region".to_string(), "eu".to_string())].into(),
        tables: vec!["public.t1".into()],
        ..Session::default()
    };
    let got = answer(s.pre_query(&mut shard, "CONTEXT"));
    assert_eq!(
        got,
        r#"request_id=77 client_id=99 user=alice database=app app=test ip=Some("192.0.2.7") tables=["public.t1"] ro=true attrs={"helios.region": "eu"} identity=Some("u1")"#
    );
    let hc = s.hook_context();
    let qc = QueryContext {
        query: "SELECT 1",
        normalized: "SELECT $1",
        tables: &s.tables,
        is_read_only: true,
        hook_context: &hc,
    };
    assert!(shard.has_hook(Hook::PostQuery));
    shard.post_query(
        &qc,
        &Outcome {
            success: false,
            target_node: Some("primary-1"),
            error: Some("boom"),
            ..Outcome::default()
        },
    );
    rt.flush_kv();
    assert_eq!(
        rt.kv_get("probe", b"last_request_id").unwrap().as_deref(),
        Some(&b"77"[..])
    );
    assert_eq!(
        rt.kv_get("probe", b"last_error").unwrap().as_deref(),
        Some(&b"boom"[..])
    );
    assert_eq!(
        rt.kv_get("probe", b"post_count").unwrap().as_deref(),
        Some(&b"1"[..])
    );
}

#[test]
fn instance_and_its_memory_persist_between_calls_per_shard() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut a = rt.shard(0);
    let mut b = rt.shard(1);
    assert_eq!(answer(pre(&mut a, "CALLS")), "calls:1");
    assert_eq!(pre(&mut a, "SELECT 1"), PreQueryDecision::Continue);
    assert_eq!(answer(pre(&mut a, "CALLS")), "calls:3");
    assert_eq!(
        answer(pre(&mut b, "CALLS")),
        "calls:1",
        "each shard has its own instance"
    );
    assert_eq!(a.stats()[0].instantiations, 1);
}

#[test]
fn sha256_import_matches_the_rfc_6234_vector() {
    let rt = runtime_ok(&config(&format!(
        "enabled = true\n{}",
        entry("probe", "kv-probe", "")
    )));
    let mut shard = rt.shard(0);
    assert_eq!(
        answer(pre(&mut shard, "SHA abc")),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert_eq!(
        answer(pre(&mut shard, "SHA ")),
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    );
}

#[test]
fn plugin_order_is_config_order_then_discovered_by_name() {
    let dir = TempDir::new("order");
    copy_wasm("kv-probe", dir.path(), "b-found.wasm");
    copy_wasm("kv-probe", dir.path(), "a-found.wasm");
    let cfg = config(&format!(
        "enabled = true\nplugin_dir = {:?}\n{}{}",
        dir.path().display().to_string(),
        entry("zeta", "kv-probe", ""),
        entry("alpha", "kv-probe", "")
    ));
    let rt = runtime_ok(&cfg);
    let names: Vec<String> = rt.plugins().into_iter().map(|p| p.name).collect();
    assert_eq!(names, ["zeta", "alpha", "a-found", "b-found"]);
    let mut shard = rt.shard(0);
    match pre(&mut shard, "CALLS") {
        PreQueryDecision::Block(b) => assert_eq!(&*b.plugin, "zeta"),
        other => panic!("{other:?}"),
    }
}

/// `annotate` (ABI 1.1): ai-classifier's tags reach the later plugins of the same chain under
/// `plugin.<its configured name>.`, the engine gets them from `take_annotations`, and a plugin
/// before the classifier does not see them.
#[test]
fn annotations_reach_later_plugins_under_the_annotating_plugins_name() {
    let budget = |name: &str| {
        entry(
            name,
            "token-budget",
            "config = { classifier = \"cls\", default_budget = { day = 0 } }",
        )
    };
    let cfg = config(&format!(
        "enabled = true\n{}{}",
        entry("cls", "ai-classifier", ""),
        budget("budget")
    ));
    let rt = runtime_ok(&cfg);
    let mut shard = rt.shard(0);
    let agent = Session {
        application_name: "claude-agent".into(),
        ..Session::default()
    };
    let reason = answer(agent.pre_query(&mut shard, "select 1"));
    assert!(
        reason.starts_with(
            "token-budget: agent claude-agent with model claude exhausted its day budget"
        ),
        "{reason}"
    );
    let tags = shard.take_annotations();
    assert_eq!(
        tags.get("plugin.cls.ai_traffic").map(String::as_str),
        Some("true")
    );
    assert_eq!(
        tags.get("plugin.cls.agent_id").map(String::as_str),
        Some("claude-agent")
    );
    assert_eq!(
        tags.get("plugin.cls.model_id").map(String::as_str),
        Some("claude")
    );
    assert!(shard.take_annotations().is_empty(), "taken");
    // Human traffic: no tags, nothing blocked.
    assert_eq!(pre(&mut shard, "select 1"), PreQueryDecision::Continue);
    assert!(shard.take_annotations().is_empty());

    // The budget plugin before the classifier sees no tags on pre_query.
    let cfg = config(&format!(
        "enabled = true\n{}{}",
        budget("budget"),
        entry("cls", "ai-classifier", "")
    ));
    let rt = runtime_ok(&cfg);
    let mut shard = rt.shard(0);
    assert_eq!(
        agent.pre_query(&mut shard, "select 1"),
        PreQueryDecision::Continue
    );
    assert_eq!(shard.take_annotations().len(), 4);
}
