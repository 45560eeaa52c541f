//! Per-call cost of plugin hooks, end to end through `ShardPlugins`: context → JSON → guest
//! memory → guest (SDK decode + plugin logic) → result. Needs the guest plugins
//! (`scripts/build-plugins.sh`).
//!
//! `cargo bench -p helios-plugin-host --bench hook_call`; criterion's median is in
//! `target/criterion/<bench>/new/estimates.json`, and the bench also prints its own median over
//! 20 000 single calls.

use criterion::{criterion_group, criterion_main, Criterion};
use helios_config::plugins::PluginsConfig;
use helios_plugin_host::{
    HookContext, Outcome, PluginRuntime, PreQueryDecision, QueryContext, RouteDecision,
    RuntimeOptions, EMPTY_ATTRIBUTES,
};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// 100 bytes of SQL.
const QUERY: &str = "SELECT id, name, email FROM users WHERE tenant_id = 4200 AND created_at > now() - interval '7 days';";

fn wasm(name: &str) -> PathBuf {
    let dir = std::env::var_os("HELIOS_PLUGIN_WASM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugins"));
    let p = dir.join(format!("{name}.wasm"));
    assert!(
        p.exists(),
        "{} is missing: run scripts/build-plugins.sh first",
        p.display()
    );
    p
}

fn runtime(plugin: &str) -> PluginRuntime {
    let mut cfg = PluginsConfig::quick_start(&[wasm(plugin)], None);
    cfg.compiled_cache_dir =
        Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/plugin-test-cache"));
    let (rt, report) = PluginRuntime::new(
        &cfg,
        RuntimeOptions {
            shards: 1,
            node_names: vec!["primary-1".into()],
        },
    )
    .unwrap();
    assert!(report.refused.is_empty(), "{:?}", report.refused);
    rt
}

fn own_median(mut f: impl FnMut()) -> Duration {
    for _ in 0..2000 {
        f();
    }
    let mut samples: Vec<Duration> = (0..20_000)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    samples.sort();
    samples[samples.len() / 2]
}

fn bench(c: &mut Criterion) {
    assert_eq!(QUERY.len(), 100);
    let tables = vec!["users".to_string()];
    let hc = HookContext {
        request_id: 1,
        client_id: 7,
        identity: None,
        database: "app",
        user: "alice",
        application_name: "bench",
        client_ip: Some("10.0.0.1".parse().unwrap()),
        attributes: &EMPTY_ATTRIBUTES,
    };
    let ctx = QueryContext {
        query: QUERY,
        normalized: QUERY,
        tables: &tables,
        is_read_only: true,
        hook_context: &hc,
    };

    let rt = runtime("block-drop");
    let mut shard = rt.shard(0);
    assert_eq!(shard.pre_query(&ctx), PreQueryDecision::Continue);
    c.bench_function("pre_query_block_drop_100B", |b| {
        b.iter(|| shard.pre_query(std::hint::black_box(&ctx)))
    });
    let m = own_median(|| {
        std::hint::black_box(shard.pre_query(&ctx));
    });
    eprintln!("pre_query (block-drop, 100-byte query): median {m:?} per call over 20000 calls");

    let rt = runtime("route");
    let mut shard = rt.shard(0);
    assert_eq!(shard.route(&ctx), RouteDecision::Default);
    c.bench_function("route_default_100B", |b| {
        b.iter(|| shard.route(std::hint::black_box(&ctx)))
    });

    let rt = runtime("tenant-budget");
    let mut shard = rt.shard(0);
    let outcome = Outcome {
        success: true,
        target_node: Some("primary-1"),
        elapsed_us: 120,
        rows: 1,
        ..Outcome::default()
    };
    c.bench_function("post_query_kv_counter_100B", |b| {
        b.iter(|| {
            shard.post_query(std::hint::black_box(&ctx), &outcome);
            shard.apply_kv_updates();
        })
    });

    let rt = PluginRuntime::new(&PluginsConfig::default(), RuntimeOptions::default())
        .unwrap()
        .0;
    let mut shard = rt.shard(0);
    c.bench_function("has_hook_no_plugins", |b| {
        b.iter(|| shard.has_hook(helios_plugin_host::Hook::PreQuery))
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
