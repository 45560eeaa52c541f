//! Recording one latency: `helios_engine::stats::DbStats::record_query` (an hdrhistogram
//! `saturating_record` of the duration in µs, under a `RefCell`, on a `DbStats` obtained the way
//! sessions get theirs, `ShardStats::db`) and the admin's `helios_admin::record_us` on a
//! histogram from `helios_admin::new_histogram`.
//!
//! Values are latencies spread from 20 µs to 2 s, precomputed, so the loop measures the
//! histogram and not the generator.
//!
//! Measured medians (`cargo bench -p helios-benches --bench histogram`): below and in
//! `benches/README.md`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_engine::stats::ShardStats;
use std::time::Duration;

fn values() -> Vec<u64> {
    (0..4096u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
            20 + x % 2_000_000
        })
        .collect()
}

/// Medians:
/// - `DbStats::record_query`, spread values: 4.8 ns
/// - `DbStats::record_query`, the same 250 µs each time: 4.3 ns
/// - `helios_admin::record_us`, spread values: 3.8 ns
fn record(c: &mut Criterion) {
    let us = values();
    let durations: Vec<Duration> = us.iter().map(|&u| Duration::from_micros(u)).collect();
    let stats = ShardStats::default();
    let db = stats.db("pgbench");
    let mut g = c.benchmark_group("histogram");
    let mut i = 0usize;
    g.bench_function("DbStats::record_query (20us..2s)", |b| {
        b.iter(|| {
            db.record_query(black_box(durations[i & 4095]));
            i = i.wrapping_add(1);
        })
    });
    g.bench_function("DbStats::record_query (same value)", |b| {
        b.iter(|| db.record_query(black_box(Duration::from_micros(250))))
    });
    let mut h = helios_admin::new_histogram();
    let mut i = 0usize;
    g.bench_function("helios_admin::record_us (20us..2s)", |b| {
        b.iter(|| {
            helios_admin::record_us(&mut h, black_box(us[i & 4095]));
            i = i.wrapping_add(1);
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = record
}
criterion_main!(benches);
