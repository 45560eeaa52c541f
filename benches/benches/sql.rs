//! SQL classification on the hot path: `helios_engine::sql::session_command` (is
//! this a SET/RESET/DEALLOCATE/DISCARD to track?) and `transaction_mode_unsupported` (LISTEN,
//! session advisory locks, WITH HOLD cursors), both run on every simple Query and every Parse
//! in transaction mode.
//!
//! Measured medians (`cargo bench -p helios-benches --bench sql`): on each benchmark below and
//! in `benches/README.md`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_benches::{PGBENCH_SELECT, PGBENCH_TPCB};
use helios_engine::sql::{session_command, transaction_mode_unsupported};
use std::time::Duration;

/// Medians:
/// - `session_command`, pgbench select (not a session command): 27.4 ns
/// - `session_command`, pgbench INSERT (longest TPC-B statement): 27.7 ns
/// - `session_command`, `SET application_name = 'pgbench'` (tracked, allocates): 149 ns
/// - `transaction_mode_unsupported`, pgbench select: 63.4 ns
/// - `transaction_mode_unsupported`, pgbench INSERT: 82.9 ns
/// - both, over all 7 TPC-B statements: 771 ns (110 ns per statement)
fn classify(c: &mut Criterion) {
    let insert = PGBENCH_TPCB[5];
    let set = "SET application_name = 'pgbench';";
    let mut g = c.benchmark_group("sql");
    g.bench_function("session_command (pgbench select)", |b| {
        b.iter(|| session_command(black_box(PGBENCH_SELECT)))
    });
    g.bench_function("session_command (pgbench insert)", |b| {
        b.iter(|| session_command(black_box(insert)))
    });
    g.bench_function("session_command (SET application_name)", |b| {
        b.iter(|| session_command(black_box(set)))
    });
    g.bench_function("transaction_mode_unsupported (pgbench select)", |b| {
        b.iter(|| transaction_mode_unsupported(black_box(PGBENCH_SELECT)))
    });
    g.bench_function("transaction_mode_unsupported (pgbench insert)", |b| {
        b.iter(|| transaction_mode_unsupported(black_box(insert)))
    });
    g.bench_function("both, 7 tpcb statements", |b| {
        b.iter(|| {
            let mut n = 0;
            for q in PGBENCH_TPCB {
                n += session_command(black_box(q)).is_some() as u32;
                n += transaction_mode_unsupported(black_box(q)).is_some() as u32;
            }
            n
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
    targets = classify
}
criterion_main!(benches);
