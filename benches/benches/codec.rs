//! The wire codec on pgbench traffic: `helios_engine::net::codec::FrameReader::next_frame`
//! splitting typical buffers into frames, and the encoders the proxy writes with.
//!
//! Each decode iteration copies the buffer into the reader (what a socket read does) and
//! splits every frame off it; the throughput line is per frame.
//!
//! Measured medians (`cargo bench -p helios-benches --bench codec`, release, 2 shared cores):
//! see the doc comment on each benchmark below and `benches/README.md`.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use helios_benches::*;
use helios_engine::error::SqlState;
use helios_engine::net::codec::{put_error, put_msg, put_query, put_ready, FrameReader};
use std::time::Duration;

/// Medians:
/// - client `-M simple` TPC-B transaction, 7 Query frames (426 B): 172 ns per batch (24.6 ns/frame)
/// - client `-M extended` select, Parse/Bind/Describe/Execute/Sync (5 frames): 120 ns per batch (24.0 ns/frame)
/// - server `-M extended` select answer, 1/2/T/D/C/Z (6 frames): 143 ns per batch (23.9 ns/frame)
/// - server simple select of 100 rows, T + 100 D + C + Z (103 frames): 2.42 µs per batch (23.5 ns/frame)
fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    let inputs = [
        ("client simple tpcb (7 Q)", client_simple_tpcb()),
        (
            "client extended select (P B D E S)",
            client_extended_select(),
        ),
        (
            "server extended select (1 2 T D C Z)",
            server_extended_select(),
        ),
        ("server simple select 100 rows", server_simple_select(100)),
    ];
    for (name, input) in inputs {
        let mut r = FrameReader::new(1 << 20);
        r.buf.extend_from_slice(&input);
        let frames = drain_frames(&mut r) as u64;
        g.throughput(Throughput::Elements(frames));
        g.bench_function(name, |b| {
            b.iter(|| {
                r.buf.extend_from_slice(black_box(&input));
                let n = drain_frames(&mut r);
                debug_assert_eq!(n as u64, frames);
                n
            })
        });
    }
    g.finish();
}

/// Medians (each writes one message into a reused buffer, then clears it):
/// - `put_query` of the pgbench select: 5.4 ns
/// - `put_ready`: 3.5 ns
/// - `put_error` (ERROR 53300, 81-byte message): 14.2 ns
/// - `put_msg` writing a one-parameter Bind: 7.7 ns
fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    let mut out = BytesMut::with_capacity(16 * 1024);
    g.bench_function("put_query (pgbench select)", |b| {
        b.iter(|| {
            put_query(&mut out, black_box(PGBENCH_SELECT));
            out.clear();
        })
    });
    g.bench_function("put_ready", |b| {
        b.iter(|| {
            put_ready(&mut out, black_box(b'I'));
            out.clear();
        })
    });
    let msg = "no server connection available in pool pgbench/bench within 5000 ms (pool_size 4)";
    g.bench_function("put_error (ERROR 53300)", |b| {
        b.iter(|| {
            put_error(
                &mut out,
                "ERROR",
                SqlState::TOO_MANY_CONNECTIONS,
                black_box(msg),
            );
            out.clear();
        })
    });
    g.bench_function("put_msg (Bind, 1 text param)", |b| {
        b.iter(|| {
            put_msg(&mut out, b'B', |m| {
                use bytes::BufMut;
                m.put_slice(b"\0P0_1\0");
                m.put_i16(0);
                m.put_i16(1);
                m.put_i32(5);
                m.put_slice(black_box(b"81627"));
                m.put_i16(0);
            });
            out.clear();
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
    targets = decode, encode
}
criterion_main!(benches);
