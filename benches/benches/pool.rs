//! The transaction-mode release/checkout pair, on `helios_engine::backend::pool::Pool`.
//!
//! What the session does per transaction in transaction mode: `attach` calls `Pool::checkout`
//! when the first message of a transaction arrives and `maybe_release` calls `Pool::release`
//! once the transaction is over (the release *decision* itself — six field comparisons on the
//! private `Session` — and the session's expected-response queue, a `VecDeque` of the private
//! `Expect` enum, cannot be reached with `pub`-only changes and are not measured here).
//!
//! Runs inside a glommio `LocalExecutor` on its own thread, as a shard does; the pool holds one
//! `ServerConn` around a real loopback socket (no PostgreSQL needed: the fast path never reads
//! or writes it).
//!
//! Measured medians (`cargo bench -p helios-benches --bench pool`): below and in
//! `benches/README.md`.

use criterion::{criterion_group, criterion_main, Criterion};
use crossbeam_channel::{bounded, Sender};
use helios_benches::{local_executor, pool_with_one_idle};
use std::time::{Duration, Instant};

enum Cmd {
    /// One task: checkout (idle connection) then release (back to idle), `n` times.
    Cycle(u64),
    /// Two tasks sharing one connection: each checkout waits for the other task's release,
    /// which hands the connection over (FIFO waiter, glommio wake, timer for the timeout).
    Handoff(u64),
}

fn executor_thread() -> (Sender<(Cmd, Sender<Duration>)>, std::thread::JoinHandle<()>) {
    let (tx, rx) = bounded::<(Cmd, Sender<Duration>)>(1);
    let t = std::thread::spawn(move || {
        local_executor().run(async move {
            let (pool, _peer) = pool_with_one_idle().await;
            while let Ok((cmd, reply)) = rx.recv() {
                let t0 = Instant::now();
                match cmd {
                    Cmd::Cycle(n) => {
                        for _ in 0..n {
                            let s = pool.checkout().await.expect("idle connection");
                            pool.release(s);
                        }
                    }
                    Cmd::Handoff(n) => {
                        let half = n.div_ceil(2);
                        let tasks: Vec<_> = (0..2)
                            .map(|_| {
                                let pool = pool.clone();
                                glommio::spawn_local(async move {
                                    for _ in 0..half {
                                        let s = pool.checkout().await.expect("handed over");
                                        futures_lite::future::yield_now().await;
                                        pool.release(s);
                                    }
                                })
                            })
                            .collect();
                        for t in tasks {
                            t.await;
                        }
                    }
                }
                let _ = reply.send(t0.elapsed());
            }
        });
    });
    (tx, t)
}

/// Medians:
/// - checkout (idle) + release (to idle), one task: 238 ns (of which ~90 ns are the three `Instant::now` calls, 29 ns each on this VM)
/// - checkout + release with a waiter, two tasks handing one connection over, per checkout:
///   622 ns
fn pool(c: &mut Criterion) {
    let (tx, thread) = executor_thread();
    let run = |cmd: Cmd| {
        let (rtx, rrx) = bounded(1);
        tx.send((cmd, rtx)).unwrap();
        rrx.recv().unwrap()
    };
    let mut g = c.benchmark_group("pool");
    g.bench_function("checkout+release (idle, 1 task)", |b| {
        b.iter_custom(|iters| run(Cmd::Cycle(iters)))
    });
    g.bench_function("checkout+release (handoff between 2 tasks)", |b| {
        b.iter_custom(|iters| run(Cmd::Handoff(iters)))
    });
    g.finish();
    drop(tx);
    thread.join().unwrap();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(50);
    targets = pool
}
criterion_main!(benches);
