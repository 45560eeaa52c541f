//! The cross-shard hop: `helios_engine::shard::Shared::send` (crossbeam bounded `try_send` into
//! the target shard's 1024-slot inbox, then `AtomicWaker::wake` of its doorbell) on one thread,
//! and on the other the receive step of `run_shard`'s control loop
//! (`helios_benches::shard_recv_replica`: `doorbell.register(waker)` then `inbox.try_recv()`,
//! pending when empty). Messages are `ShardMsg::Cancel`, the one shards send each other.
//!
//! Two executors drive the same futures:
//! - "glommio": each side is a glommio `LocalExecutor` on its own thread, as shards are; the
//!   wake crosses threads through glommio's foreign-waker queue and its eventfd.
//! - "park": each side is `futures_lite::future::block_on` (waking = unparking the thread).
//!
//! Ping-pong: side A sends to shard 1 and waits on its own inbox; side B echoes every message
//! back with `Shared::send` to shard 0. Time per round trip (two hops, two cross-thread wakes).
//! One-way: side A sends N messages (retrying with `yield_now` when the inbox is full, where the
//! engine would drop a control message), side B receives them all and acks the last; time per
//! message.
//!
//! On the 2-core development VM shared with other builds these are dominated by the OS waking a
//! sleeping thread, so expect wide intervals. Measured medians
//! (`cargo bench -p helios-benches --bench channel`): below and in `benches/README.md`.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use crossbeam_channel::{bounded, Receiver, Sender};
use helios_benches::{local_executor, shard_recv_replica, shared_with_inboxes};
use helios_engine::ids::ClientPid;
use helios_engine::shard::{ShardMsg, Shared};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Side B: echo a `Cancel` to shard 0 when `secret < 0` (ping) or when it is the last of a
/// stream (`pid + 1 == secret`); stop on `Shutdown`.
async fn echo(shared: Arc<Shared>, inbox: Receiver<ShardMsg>) {
    loop {
        match shard_recv_replica(&inbox, &shared.doorbells[1]).await {
            Some(ShardMsg::Cancel { pid, secret }) => {
                if secret < 0 || pid.0 + 1 == secret {
                    send(&shared, 0, pid, secret);
                }
            }
            _ => return,
        }
    }
}

fn send(shared: &Shared, to: usize, pid: ClientPid, secret: i32) {
    while !shared.send(to, ShardMsg::Cancel { pid, secret }) {
        std::thread::yield_now();
    }
}

async fn ping_pong(shared: &Shared, inbox: &Receiver<ShardMsg>, iters: u64) -> Duration {
    let t0 = Instant::now();
    for i in 0..iters {
        send(shared, 1, ClientPid(i as i32), -1);
        match shard_recv_replica(inbox, &shared.doorbells[0]).await {
            Some(ShardMsg::Cancel { pid, .. }) => debug_assert_eq!(pid.0, i as i32),
            _ => panic!("echo side gone"),
        }
    }
    t0.elapsed()
}

async fn one_way(shared: &Shared, inbox: &Receiver<ShardMsg>, iters: u64) -> Duration {
    let n = iters.clamp(1, i32::MAX as u64) as i32;
    let t0 = Instant::now();
    for pid in 0..n {
        send(shared, 1, ClientPid(pid), n);
    }
    match shard_recv_replica(inbox, &shared.doorbells[0]).await {
        Some(ShardMsg::Cancel { pid, .. }) => assert_eq!(pid, ClientPid(n - 1)),
        _ => panic!("echo side gone"),
    }
    t0.elapsed()
}

enum Cmd {
    PingPong(u64),
    OneWay(u64),
}

/// Commands to side A, each with where to send the measured duration.
type CmdSender = Sender<(Cmd, Sender<Duration>)>;

struct Pair {
    shared: Arc<Shared>,
    b: JoinHandle<()>,
    /// Glommio: side A's executor thread and its command channel.
    a: Option<(CmdSender, JoinHandle<()>)>,
    /// Park: side A runs on the caller's thread.
    inbox0: Option<Receiver<ShardMsg>>,
}

impl Pair {
    fn new(glommio: bool) -> Pair {
        let (shared, mut rx) = shared_with_inboxes(2);
        let rx1 = rx.pop().unwrap();
        let rx0 = rx.pop().unwrap();
        let s = shared.clone();
        let b = std::thread::spawn(move || {
            if glommio {
                local_executor().run(echo(s, rx1));
            } else {
                futures_lite::future::block_on(echo(s, rx1));
            }
        });
        if !glommio {
            return Pair {
                shared,
                b,
                a: None,
                inbox0: Some(rx0),
            };
        }
        let (tx, cmds) = bounded::<(Cmd, Sender<Duration>)>(1);
        let s = shared.clone();
        let a = std::thread::spawn(move || {
            local_executor().run(async move {
                while let Ok((cmd, reply)) = cmds.recv() {
                    let d = match cmd {
                        Cmd::PingPong(n) => ping_pong(&s, &rx0, n).await,
                        Cmd::OneWay(n) => one_way(&s, &rx0, n).await,
                    };
                    let _ = reply.send(d);
                }
            })
        });
        Pair {
            shared,
            b,
            a: Some((tx, a)),
            inbox0: None,
        }
    }

    fn run(&self, cmd: Cmd) -> Duration {
        match (&self.a, &self.inbox0) {
            (Some((tx, _)), _) => {
                let (rtx, rrx) = bounded(1);
                tx.send((cmd, rtx)).unwrap();
                rrx.recv().unwrap()
            }
            (None, Some(rx0)) => futures_lite::future::block_on(async {
                match cmd {
                    Cmd::PingPong(n) => ping_pong(&self.shared, rx0, n).await,
                    Cmd::OneWay(n) => one_way(&self.shared, rx0, n).await,
                }
            }),
            (None, None) => unreachable!(),
        }
    }

    fn stop(self) {
        if let Some((tx, a)) = self.a {
            drop(tx);
            a.join().unwrap();
        }
        assert!(self.shared.send(1, ShardMsg::Shutdown));
        self.b.join().unwrap();
    }
}

/// Medians:
/// - ping-pong round trip, glommio executors: 13.8 µs
/// - ping-pong round trip, parked threads: 1.86 µs
/// - one-way, per message, glommio executors: 477 ns
/// - one-way, per message, parked threads: 318 ns
fn channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("channel");
    for (name, glommio) in [("glommio", true), ("park", false)] {
        let pair = Pair::new(glommio);
        g.throughput(Throughput::Elements(1));
        g.bench_function(format!("ping-pong round trip ({name})"), |b| {
            b.iter_custom(|iters| pair.run(Cmd::PingPong(iters)))
        });
        g.bench_function(format!("one-way per message ({name})"), |b| {
            b.iter_custom(|iters| pair.run(Cmd::OneWay(iters)))
        });
        pair.stop();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .sample_size(30);
    targets = channel
}
criterion_main!(benches);
