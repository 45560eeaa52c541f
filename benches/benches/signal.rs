//! Cost of anomaly detection per statement: the tokenizer's injection scan and fingerprint
//! alone, and the whole per-statement path of a shard (rate window, scan, novel-shape lookup).
//! Goal: ≤ 1 µs for a typical ~100-byte statement (docs/signal.md).

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_config::signal::AnomalyConfig;
use helios_engine::signal::{inject, SessionView, ShardSignal};

const STATEMENT: &str =
    "SELECT id, name, email FROM customers WHERE tenant_id = 42 AND status = 'active' LIMIT 50;";

fn bench(c: &mut Criterion) {
    assert!((90..=110).contains(&STATEMENT.len()));
    c.bench_function("signal/scan_100_bytes", |b| {
        b.iter(|| inject::scan(black_box(STATEMENT)))
    });
    let cfg = AnomalyConfig {
        enabled: true,
        warmup_s: 0,
        ..AnomalyConfig::default()
    };
    let mut shard = ShardSignal::new(0);
    let mut view = SessionView {
        database: "app".into(),
        user: "app".into(),
        address: "10.0.0.1".into(),
        tenant: "tenant-1".into(),
        statements: 0,
        uses_catalog: false,
    };
    let mut sec = 0u64;
    let mut n = 0u64;
    c.bench_function("signal/statement_100_bytes", |b| {
        b.iter(|| {
            n += 1;
            if n.is_multiple_of(1000) {
                sec += 1;
            }
            let r = shard.statement(&cfg, &mut view, black_box(STATEMENT), sec);
            shard.take_events();
            r
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
