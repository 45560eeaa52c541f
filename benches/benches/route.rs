//! The routing decision of a database with a topology (engine/src/pipeline/route.rs): the read
//! scan (sql/read.rs) plus the node pick from the shard's topology copy, for one primary and two
//! healthy replicas. Goal (issue 14): < 200 ns per statement.
//!
//! Measured medians (`cargo bench -p helios-benches --bench route`): in the function docs below.

use std::sync::Arc;

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_benches::{bench_shard, shared_with_inboxes};
use helios_engine::backend::topology::{Role, Topology};
use helios_engine::pipeline::route::RouteStage;
use helios_engine::sql::read::is_read;

const CONFIG: &str = r#"
[auth]
method = "trust"
[[nodes]]
name = "p"
host = "127.0.0.1"
[[nodes]]
name = "r1"
host = "127.0.0.1"
role = "replica"
[[nodes]]
name = "r2"
host = "127.0.0.1"
role = "auto"
weight = 2
[databases.app]
nodes = ["p", "r1", "r2"]
read_write_split = true
read_only_functions = ["price_of"]
"#;

/// Medians on the 2-CPU test host (shared): round_robin SELECT → replica 103 ns, UPDATE →
/// primary 117 ns, weighted 96 ns, least_connections 92 ns; the read scan alone 80 ns.
fn route(c: &mut Criterion) {
    let (shared, _rx) = shared_with_inboxes(1);
    let mut g = c.benchmark_group("route decision (1 primary, 2 replicas)");
    for balance in ["round_robin", "weighted", "least_connections"] {
        let config = helios_config::Config::parse(
            &CONFIG.replace(
                "read_write_split = true",
                &format!("read_write_split = true\nload_balance = \"{balance}\""),
            ),
            std::path::Path::new("bench.toml"),
            &|_| None,
        )
        .expect("the bench configuration");
        let mut t = Topology::from_config(&config);
        t.nodes[2].role = Role::Replica;
        t.nodes[2].healthy = true;
        let shard = bench_shard(shared.clone(), &config);
        shard.set_topology(Arc::new(t));
        let mut stage = RouteStage::configured(&config, "app", "u").expect("a topology");
        stage.resolve(&shard.topology.borrow());
        let read = "SELECT abalance FROM pgbench_accounts WHERE aid = $1";
        let write = "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2";
        g.bench_function(format!("{balance}: pgbench SELECT → a replica"), |b| {
            b.iter(|| {
                let t = shard.topology.borrow();
                let want = stage.want(black_box(read), None);
                stage.pick(&shard, &t, want)
            })
        });
        if balance == "round_robin" {
            g.bench_function("pgbench UPDATE → the primary", |b| {
                b.iter(|| {
                    let t = shard.topology.borrow();
                    let want = stage.want(black_box(write), None);
                    stage.pick(&shard, &t, want)
                })
            });
        }
    }
    g.bench_function("read scan alone: pgbench SELECT", |b| {
        b.iter(|| {
            is_read(
                black_box("SELECT abalance FROM pgbench_accounts WHERE aid = $1"),
                &[],
            )
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = route
}
criterion_main!(benches);
