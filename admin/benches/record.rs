//! Cost of recording one latency the way a shard does: into a pre-sized histogram
//! (1 µs ..= 60 s, 2 significant digits) with `record_us` (saturating at 60 s).
//!
//! `cargo bench -p helios-admin --bench record`. Measured numbers are in the doc comment of
//! `helios_admin::snapshot::new_histogram`.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use helios_admin::{new_histogram, record_us};

fn record(c: &mut Criterion) {
    // Latencies spread over the range a proxy sees (tens of µs to seconds), precomputed so the
    // loop measures the histogram and not the generator.
    let values: Vec<u64> = (0..4096u64)
        .map(|i| {
            let x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40; // 0 .. 2^24
            20 + x % 2_000_000
        })
        .collect();
    let mut h = new_histogram();
    let mut i = 0usize;
    c.bench_function("record_us (1us..60s, 3 digits)", |b| {
        b.iter(|| {
            record_us(&mut h, black_box(values[i & 4095]));
            i = i.wrapping_add(1);
        })
    });
    let mut h = new_histogram();
    c.bench_function("record_us, same value", |b| {
        b.iter(|| record_us(&mut h, black_box(250)))
    });
    let mut h = new_histogram();
    let mut i = 0usize;
    c.bench_function("Histogram::record (unchecked result)", |b| {
        b.iter(|| {
            let _ = h.record(black_box(values[i & 4095]));
            i = i.wrapping_add(1);
        })
    });
}

criterion_group!(benches, record);
criterion_main!(benches);
