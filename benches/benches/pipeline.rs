//! The statement pipeline with no stage configured (no plugin loaded, no result limit): what
//! every statement pays for the seam (engine/src/pipeline). One simple query through
//! `Pipeline::before` and `sending`, then the observer calls the core makes for its response
//! (a RowDescription and a DataRow through `row` and `forwarded`, the CommandComplete through
//! `forwarded`); and one Bind+Execute pair through `before` / `sending`.
//!
//! Goal (issue 13): ≤ 100 ns per statement. Measured medians
//! (`cargo bench -p helios-benches --bench pipeline`): in the function docs below.

use std::time::Instant;

use bytes::Bytes;
use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_benches::{bench_shard, shared_with_inboxes};
use helios_engine::net::codec::Frame;
use helios_engine::pipeline::plugins::PluginStage;
use helios_engine::pipeline::Pipeline;
use helios_engine::proto::exchange::Then;

fn frame(tag: u8, body: &[u8]) -> Frame {
    let mut b = vec![tag];
    b.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    b.extend_from_slice(body);
    Frame {
        tag,
        bytes: Bytes::from(b),
    }
}

/// Medians on this 2-core VM, machine otherwise idle: simple query 29.7 ns (the frame clone and
/// `Then` built in the loop included); Bind+Execute 49.2 ns (two messages).
fn pipeline(c: &mut Criterion) {
    let (shared, _rx) = shared_with_inboxes(1);
    let config = helios_config::Config::parse(
        "[auth]\nmethod = \"trust\"\n[[nodes]]\nname = \"up\"\nhost = \"127.0.0.1\"\n[databases.app]\n",
        std::path::Path::new("bench.toml"),
        &|_| None,
    )
    .expect("a minimal configuration");
    let shard = bench_shard(shared, &config);
    let mut p = Pipeline::new(
        PluginStage::new("u", "db", "bench", None),
        None,
        None,
        None,
        None,
        None,
    );
    assert!(!p.active(&shard), "no stage is configured");
    let query = frame(b'Q', b"select aid from pgbench_accounts where aid = 1\0");
    let bind = frame(b'B', b"\0P0_1\0\0\0\0\x01\0\0\0\x011\0\0");
    let execute = frame(b'E', b"\0\0\0\0\0");
    let row_desc = frame(
        b'T',
        b"\0\x01aid\0\0\0\0\0\0\0\0\0\0\x17\0\x04\xff\xff\xff\xff\0\0",
    );
    let data_row = frame(b'D', b"\0\x01\0\0\0\x011");
    let complete = frame(b'C', b"SELECT 1\0");
    let now = Instant::now();
    let mut g = c.benchmark_group("pipeline (no stage configured)");
    g.bench_function(
        "simple query: before, sending, a row, its completion",
        |b| {
            b.iter(|| {
                let mut then = Then::Query {
                    frame: query.clone(),
                    track: None,
                    req: false,
                };
                let node = p.before(&shard, black_box(&mut then), now).unwrap();
                p.sending(&shard);
                black_box(p.row(b'T', &row_desc.bytes));
                p.forwarded(b'T', &row_desc.bytes);
                black_box(p.row(b'D', &data_row.bytes));
                p.forwarded(b'D', &data_row.bytes);
                p.forwarded(b'C', &complete.bytes);
                (node, then)
            })
        },
    );
    g.bench_function("Bind+Execute: before and sending of each", |b| {
        b.iter(|| {
            let mut then = Then::Bind {
                frame: bind.clone(),
                rewrite: None,
            };
            p.before(&shard, black_box(&mut then), now).unwrap();
            p.sending(&shard);
            let mut then2 = Then::Execute {
                frame: execute.clone(),
                req: false,
            };
            p.before(&shard, black_box(&mut then2), now).unwrap();
            p.sending(&shard);
            (then, then2)
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = pipeline
}
criterion_main!(benches);
