//! Cost of anomaly detection per statement: the tokenizer's injection scan and fingerprint
//! alone, the whole per-statement path of a shard (rate window, scan, novel-shape lookup), and
//! a simple query through the pipeline with only the signal stage (detection on): the
//! execution record (its text a slice of the frame, no copy), the stage's `before`, the core's
//! observer calls and the outcome.
//! Goal: ≤ 1 µs for a typical ~100-byte statement (docs/signal.md).

use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_benches::{bench_shard, shared_with_inboxes};
use helios_config::signal::AnomalyConfig;
use helios_engine::net::codec::Frame;
use helios_engine::pipeline::plugins::PluginStage;
use helios_engine::pipeline::signal::SignalStage;
use helios_engine::pipeline::Pipeline;
use helios_engine::proto::exchange::{Ended, Then};
use helios_engine::signal::{inject, SessionView, ShardSignal};

const STATEMENT: &str =
    "SELECT id, name, email FROM customers WHERE tenant_id = 42 AND status = 'active' LIMIT 50;";

fn view() -> SessionView {
    SessionView {
        database: "app".into(),
        user: "app".into(),
        address: "10.0.0.1".into(),
        tenant: "tenant-1".into(),
        statements: 0,
        uses_catalog: false,
    }
}

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
    let mut session = view();
    let mut sec = 0u64;
    let mut n = 0u64;
    c.bench_function("signal/statement_100_bytes", |b| {
        b.iter(|| {
            n += 1;
            if n.is_multiple_of(1000) {
                sec += 1;
            }
            let r = shard.statement(&cfg, &mut session, black_box(STATEMENT), sec);
            shard.take_events();
            r
        })
    });

    // The pipeline with only the signal stage, detection on.
    let (shared, _rx) = shared_with_inboxes(1);
    let config = helios_config::Config::parse(
        "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"up\"\nhost = \"127.0.0.1\"\n\
         [databases.app]\n[anomaly]\nenabled = true\nwarmup_s = 0\n",
        std::path::Path::new("bench.toml"),
        &|_| None,
    )
    .expect("a minimal configuration");
    let shard = bench_shard(shared, &config);
    let mut p = Pipeline::new(
        PluginStage::new("u", "db", "bench", None),
        None,
        None,
        SignalStage::configured(true, view(), None),
        None,
        None,
    );
    assert!(p.active(&shard));
    let frame = |tag: u8, body: &[u8]| {
        let mut b = vec![tag];
        b.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        b.extend_from_slice(body);
        Frame {
            tag,
            bytes: Bytes::from(b),
        }
    };
    let query = frame(b'Q', format!("{STATEMENT}\0").as_bytes());
    let data_row = frame(b'D', b"\0\x01\0\0\0\x011");
    let complete = frame(b'C', b"SELECT 1\0");
    let now = Instant::now();
    c.bench_function("signal/pipeline_simple_query_100_bytes", |b| {
        b.iter(|| {
            let mut then = Then::Query {
                frame: query.clone(),
                track: None,
                req: false,
            };
            let node = p.before(&shard, black_box(&mut then), now).unwrap();
            p.sending(&shard);
            black_box(p.row(b'D', &data_row.bytes));
            p.forwarded(b'D', &data_row.bytes);
            p.forwarded(b'C', &complete.bytes);
            p.executed(&shard, Ended::Complete);
            shard.signal.borrow_mut().take_events();
            (node, then)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
