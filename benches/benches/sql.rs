//! SQL classification on the hot path: `helios_engine::sql::session_command` (is
//! this a SET/RESET/DEALLOCATE/DISCARD to track?) and `transaction_mode_unsupported` (LISTEN,
//! session advisory locks, WITH HOLD cursors), both run on every simple Query and every Parse
//! in transaction mode; and `sql::classify::statements`, which splits a query into statements
//! and says what each does to session state (both of the others are built on it).
//!
//! Measured medians (`cargo bench -p helios-benches --bench sql`): on each benchmark below and
//! in `benches/README.md`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_benches::{PGBENCH_SELECT, PGBENCH_TPCB};
use helios_engine::sql::classify::{statements, Effect};
use helios_engine::sql::{session_command, transaction_mode_unsupported};
use std::time::Duration;

/// Medians (the middle of three runs on the development VM, load ~5–6 from other builds; in
/// parentheses the minimum over 400 runs of 10 000 calls, what a quiet core gives):
/// - `session_command`, pgbench select (not a session command): 34.7 ns (12.5 ns)
/// - `session_command`, pgbench INSERT (longest TPC-B statement): 36.3 ns (12.5 ns)
/// - `session_command`, `SET application_name = 'pgbench'` (tracked, allocates): 350 ns (123 ns)
/// - `transaction_mode_unsupported`, pgbench select: 119 ns (45 ns)
/// - `transaction_mode_unsupported`, pgbench INSERT: 168 ns (58 ns)
/// - `statements`, pgbench select: 130 ns (45 ns)
/// - `statements`, pgbench UPDATE of pgbench_accounts: 131 ns (47 ns)
/// - `statements`, pgbench INSERT: 144 ns (58 ns)
/// - `statements`, `SET application_name = 'pgbench'` (tracked, allocates): 285 ns (113 ns)
/// - `statements` over all 7 TPC-B statements: 865 ns (124 ns per statement)
/// - `statements` over the TPC-B script sent as one query: 1.01 µs
/// - both older functions, over all 7 TPC-B statements: 1.21 µs (173 ns per statement)
///
/// The earlier medians of the same `session_command` fast path were 27 ns (load ~7): these runs
/// were on a busier machine, by about that ratio.
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
    let update = PGBENCH_TPCB[1];
    // Consumes every item so the whole classification is measured.
    let classify_all = |sql: &str| {
        statements(sql)
            .map(|(s, e)| s.len() + (e != Effect::None) as usize)
            .sum::<usize>()
    };
    g.bench_function("statements (pgbench select)", |b| {
        b.iter(|| classify_all(black_box(PGBENCH_SELECT)))
    });
    g.bench_function("statements (pgbench update)", |b| {
        b.iter(|| classify_all(black_box(update)))
    });
    g.bench_function("statements (pgbench insert)", |b| {
        b.iter(|| classify_all(black_box(insert)))
    });
    g.bench_function("statements (SET application_name)", |b| {
        b.iter(|| classify_all(black_box(set)))
    });
    g.bench_function("statements, 7 tpcb statements", |b| {
        b.iter(|| {
            PGBENCH_TPCB
                .iter()
                .map(|q| classify_all(black_box(q)))
                .sum::<usize>()
        })
    });
    g.bench_function("statements, tpcb script as one query", |b| {
        let script = PGBENCH_TPCB.join(" ");
        b.iter(|| classify_all(black_box(&script)))
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
