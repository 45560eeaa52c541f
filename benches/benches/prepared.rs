//! Transaction-mode prepared statements: `helios_engine::shard::StatementRegistry::intern`
//! (the shard-wide map from a Parse body to the proxy-named statement, hit on every client
//! Parse of a text some client already prepared), and a replica of `Session::on_bind`'s
//! rewrite (`helios_benches::rewrite_bind_replica`: `read_cstr` ×2, the session's
//! `HashMap<Bytes, Rc<Statement>>` lookup, `PreparedSet::contains`, `put_msg` of the Bind
//! under the proxy's name), which `Session` being private keeps out of reach.
//!
//! Measured medians (`cargo bench -p helios-benches --bench prepared`): below and in
//! `benches/README.md`.

use bytes::{Bytes, BytesMut};
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion};
use helios_benches::*;
use helios_engine::backend::server::PreparedSet;
use helios_engine::shard::StatementRegistry;
use std::collections::HashMap;
use std::time::Duration;

/// Medians:
/// - `intern`, hit (pgbench select already interned): 42.7 ns
/// - `intern`, miss into an empty registry (allocates the Parse and name): 195 ns
/// - on_bind rewrite replica, one-parameter pgbench Bind: 67.0 ns
/// - `PreparedSet::contains` alone, hit: 15.5 ns
fn prepared(c: &mut Criterion) {
    let body = parse_body_after_name(PGBENCH_SELECT_PARAM, &[23]);
    let mut g = c.benchmark_group("prepared");

    let mut reg = StatementRegistry::default();
    // A registry holding every TPC-B statement, as a shard running pgbench -M prepared does.
    for q in PGBENCH_TPCB {
        reg.intern(0, &parse_body_after_name(q, &[]));
    }
    let stmt = reg.intern(0, &body);
    g.bench_function("StatementRegistry::intern (hit)", |b| {
        b.iter(|| reg.intern(0, black_box(&body)))
    });
    g.bench_function("StatementRegistry::intern (miss, empty registry)", |b| {
        b.iter_batched(
            StatementRegistry::default,
            |mut r| {
                let s = r.intern(0, black_box(&body));
                (r, s)
            },
            BatchSize::SmallInput,
        )
    });

    let mut statements = HashMap::new();
    statements.insert(Bytes::from_static(b"P0_1"), stmt.clone());
    let mut prepared = PreparedSet::new(100);
    prepared.insert(stmt.id);
    let mut m = BytesMut::new();
    put_bind(&mut m, "", "P0_1", &["81627"]);
    let bind = m.freeze();
    let mut out = BytesMut::with_capacity(16 * 1024);
    g.bench_function("on_bind rewrite replica (lookup + put_msg)", |b| {
        b.iter(|| {
            rewrite_bind_replica(&mut out, black_box(&bind[5..]), &statements, &mut prepared)
                .unwrap();
            out.clear();
        })
    });
    g.bench_function("PreparedSet::contains (hit)", |b| {
        b.iter(|| prepared.contains(black_box(stmt.id)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = prepared
}
criterion_main!(benches);
