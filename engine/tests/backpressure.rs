//! Backpressure: a large result streams through the proxy in bounded memory, and a client that
//! stops reading holds up only its own server connection — not the proxy's memory, and not the
//! other clients of its shard.
//!
//! Memory is the proxy's resident set (`VmRSS` of /proc/PID/status), sampled before, during and
//! after. The bound comes from the `[io]` settings of the test config: every shard's provided
//! receive buffers (`recv_buffers` × `recv_buffer_size_bytes`, mapped up front but backed
//! lazily, so they may become resident as traffic first touches them), plus
//! `max_pending_send_bytes` for each side of each busy connection, plus a slack for the
//! allocator and the runtime. A proxy that buffered what the client does not take would grow by
//! the size of the result (100 MB here), far past the bound.
//!
//! Both socket backends run these tests: scripts/test.sh sets `HELIOS_TEST_IO_BACKEND`.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};
use postgres_protocol::message::frontend;

const RECV_BUFFERS: u64 = 64;
const RECV_BUFFER_SIZE: u64 = 16 * 1024;
const MAX_PENDING: u64 = 256 * 1024;
const SHARDS: u64 = 2;
/// Allocator, runtime and a few connections' worth of small buffers.
const SLACK: u64 = 12 * 1024 * 1024;

const ROWS: u64 = 100_000;
const ROW_BYTES: u64 = 1000;

fn backend() -> String {
    std::env::var("HELIOS_TEST_IO_BACKEND").unwrap_or_else(|_| "uring".into())
}

fn proxy(pg: &PgCluster, db: &str, pool_size: usize) -> Proxy {
    let io = format!(
        "recv_buffers = {RECV_BUFFERS}\nrecv_buffer_size_bytes = {RECV_BUFFER_SIZE}\n\
         max_pending_send_bytes = {MAX_PENDING}"
    );
    start_proxy(
        &config_custom(
            pg,
            FAST_ADMIN,
            &io,
            TRUST,
            "",
            &db_section("app", db, "transaction", pool_size, ""),
        ),
        None,
    )
}

/// The growth bound for `busy` connections (client side and server side each).
fn bound(busy: u64) -> u64 {
    SHARDS * RECV_BUFFERS * RECV_BUFFER_SIZE + busy * 2 * MAX_PENDING + SLACK
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Samples the proxy's RSS every 20 ms on a thread until dropped.
struct Sampler {
    stop: Arc<AtomicBool>,
    handle: Option<std::thread::JoinHandle<Vec<u64>>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut v = Vec::new();
            while !s.load(Ordering::Relaxed) {
                v.push(rss_kib(pid));
                std::thread::sleep(Duration::from_millis(20));
            }
            v
        });
        Sampler {
            stop,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Reads a simple query's answer without keeping it: DataRows and their payload bytes, the
/// CopyData messages and bytes, up to ReadyForQuery. Panics on an ErrorResponse.
fn drain(s: &mut TcpStream) -> (u64, u64) {
    let mut buf = vec![0u8; 256 * 1024];
    let (mut filled, mut at) = (0usize, 0usize);
    let (mut msgs, mut bytes) = (0u64, 0u64);
    // The message being skipped: its tag and the body bytes still to come.
    let mut skipping: Option<(u8, usize)> = None;
    let mut err = Vec::new();
    loop {
        if let Some((tag, left)) = skipping {
            let take = left.min(filled - at);
            if tag == b'E' {
                err.extend_from_slice(&buf[at..at + take]);
            }
            at += take;
            if take == left {
                skipping = None;
                match tag {
                    b'Z' => return (msgs, bytes),
                    b'E' => panic!("error from the proxy: {}", String::from_utf8_lossy(&err)),
                    _ => {}
                }
            } else {
                skipping = Some((tag, left - take));
            }
        }
        if skipping.is_none() && filled - at >= 5 {
            let tag = buf[at];
            let len = u32::from_be_bytes(buf[at + 1..at + 5].try_into().unwrap()) as usize;
            at += 5;
            if tag == b'D' || tag == b'd' {
                msgs += 1;
                bytes += len as u64 - 4;
            }
            skipping = Some((tag, len - 4));
            continue;
        }
        if at > 0 {
            buf.copy_within(at..filled, 0);
            filled -= at;
            at = 0;
        }
        let n = s.read(&mut buf[filled..]).expect("reading the result");
        assert!(n > 0, "the proxy closed the connection mid-result");
        filled += n;
    }
}

fn send_query(s: &mut TcpStream, sql: &str) {
    let mut b = BytesMut::new();
    frontend::query(sql, &mut b).unwrap();
    s.write_all(&b).unwrap();
}

/// A trust login on an already connected socket, through ReadyForQuery; returns the
/// BackendKeyData process id.
fn login(s: &mut TcpStream, db: &str) -> i32 {
    let mut b = BytesMut::new();
    frontend::startup_message([("user", SUPERUSER), ("database", db)], &mut b).unwrap();
    s.write_all(&b).unwrap();
    let mut pid = 0;
    loop {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).expect("login");
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize - 4;
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).unwrap();
        match head[0] {
            b'K' => pid = i32::from_be_bytes(body[..4].try_into().unwrap()),
            b'E' => panic!("login refused: {}", String::from_utf8_lossy(&body)),
            b'Z' => return pid,
            _ => {}
        }
    }
}

/// A TCP connection to 127.0.0.1:`port` whose receive buffer was made small before connecting
/// (so the kernel advertises a small window from the start).
fn small_rcvbuf_connect(port: u16, bytes: i32) -> TcpStream {
    // SAFETY: plain socket calls on a descriptor we own; on success it moves into TcpStream.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let r = libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            &bytes as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "SO_RCVBUF: {}", std::io::Error::last_os_error());
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_be_bytes([127, 0, 0, 1]).to_be(),
            },
            sin_zero: [0; 8],
        };
        let r = libc::connect(
            fd,
            &addr as *const libc::sockaddr_in as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
        let s = TcpStream::from_raw_fd(fd);
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        s
    }
}

fn shard_of(pid: i32) -> i32 {
    (pid >> 22) & 0xFF
}

/// 6. A 100 MB result, as rows and as COPY, streams through with the proxy's RSS flat.
#[test]
fn large_result_streams_in_bounded_memory() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "bp_stream");
    let proxy = proxy(&pg, &db, 4);
    let pid = proxy.pid();
    let mut s = TcpStream::connect(("127.0.0.1", proxy.port())).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    login(&mut s, "app");
    // Warm up: a server connection, the session's buffers, a small result.
    send_query(
        &mut s,
        "select repeat('x', 1000) from generate_series(1, 100)",
    );
    assert_eq!(drain(&mut s), (100, 100 * (2 + 4 + ROW_BYTES)));
    let limit = bound(1) / 1024;
    let query = format!("select repeat('x', {ROW_BYTES}) from generate_series(1, {ROWS})");
    for (what, sql, row_bytes) in [
        // DataRow payload: column count (2) + length (4) + text.
        ("rows", query.clone(), 2 + 4 + ROW_BYTES),
        // CopyData: the text and a newline.
        ("COPY", format!("copy ({query}) to stdout"), ROW_BYTES + 1),
    ] {
        let before = rss_kib(pid);
        let sampler = Sampler::start(pid);
        let t = Instant::now();
        send_query(&mut s, &sql);
        let (n, bytes) = drain(&mut s);
        let took = t.elapsed();
        let during = sampler.finish();
        let after = rss_kib(pid);
        assert_eq!(n, ROWS, "{what}: rows");
        assert_eq!(bytes, ROWS * row_bytes, "{what}: bytes");
        let peak = during.iter().copied().chain([after]).max().unwrap();
        eprintln!(
            "[{}] {what}: {:.1} MB in {took:.2?}; proxy RSS before {}, during {} samples max {} \
             (min {}), after {}; growth {} (bound {})",
            backend(),
            bytes as f64 / 1e6,
            mib(before),
            during.len(),
            mib(peak),
            mib(during.iter().copied().min().unwrap_or(before)),
            mib(after),
            mib(peak.saturating_sub(before)),
            mib(limit),
        );
        assert!(
            during.len() >= 3,
            "{what}: too few samples ({}) to say anything",
            during.len()
        );
        assert!(
            peak.saturating_sub(before) < limit,
            "{what}: the proxy's RSS grew by {} streaming {:.0} MB (bound {})",
            mib(peak - before),
            bytes as f64 / 1e6,
            mib(limit)
        );
    }
}

/// 7. A client that stops reading a large result holds the proxy to its per-connection limit
///    and does not slow down another client on the same shard.
#[test]
fn stalled_reader_costs_bounded_memory_and_no_latency() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "bp_stall");
    let proxy = proxy(&pg, &db, 8);
    let pid = proxy.pid();
    let port = proxy.port();

    let mut stalled = small_rcvbuf_connect(port, 4096);
    let stalled_shard = shard_of(login(&mut stalled, "app"));
    // Another client on the same shard.
    let mut others = Vec::new();
    let mut other = loop {
        let r = Raw::trust(port, "app");
        if r.shard() == stalled_shard {
            break r;
        }
        others.push(r);
        assert!(
            others.len() < 40,
            "40 connections, none on shard {stalled_shard}"
        );
    };
    drop(others);
    // Baseline latency and warm-up of both sessions.
    send_query(&mut stalled, "select 1");
    drain(&mut stalled);
    let mut base = Vec::new();
    for _ in 0..50 {
        let t = Instant::now();
        assert_eq!(first_value(&other.query("select 1")).as_deref(), Some("1"));
        base.push(t.elapsed());
    }
    let before = rss_kib(pid);

    // 50 MB that the client never reads: far more than every socket buffer on the way.
    let rows = 50_000;
    send_query(
        &mut stalled,
        &format!("select repeat('x', {ROW_BYTES}) from generate_series(1, {rows})"),
    );
    // Stalled when PostgreSQL cannot write any more to the proxy.
    let stalled_backend = poll(
        Duration::from_secs(60),
        "the server backend blocked writing to the proxy",
        || {
            let out = pg
                .psql(
                    &db,
                    "select pid from pg_stat_activity where query like 'select repeat%' \
                     and state = 'active' and wait_event = 'ClientWrite'",
                )
                .ok()?;
            out.trim().parse::<i32>().ok()
        },
    );
    let sampler = Sampler::start(pid);
    let stalled_at = rss_kib(pid);

    let mut lat = Vec::new();
    let mut marks = Vec::new();
    for i in 0..200 {
        if i % 40 == 0 {
            marks.push(rss_kib(pid));
        }
        let t = Instant::now();
        let msgs = other.query(&format!("select {i}"));
        lat.push(t.elapsed());
        assert_eq!(first_value(&msgs), Some(i.to_string()));
    }
    let mut during = sampler.finish();
    during.extend(marks);
    // Still stalled: the same backend still waits to write.
    let still = pg
        .psql(
            &db,
            &format!("select wait_event from pg_stat_activity where pid = {stalled_backend}"),
        )
        .unwrap();
    assert_eq!(
        still.trim(),
        "ClientWrite",
        "the stalled query is no longer blocked"
    );
    let after = rss_kib(pid);

    lat.sort();
    base.sort();
    let pct = |v: &[Duration], p: f64| v[((v.len() - 1) as f64 * p) as usize];
    let peak = during
        .iter()
        .copied()
        .chain([stalled_at, after])
        .max()
        .unwrap();
    let limit = bound(2) / 1024;
    eprintln!(
        "[{}] stalled reader (50 MB unread): proxy RSS before {}, when stalled {}, max of {} \
         samples {}, after {}; growth {} (bound {}). Other client on shard {stalled_shard}: \
         200 queries p50 {:?} p99 {:?} max {:?} (before the stall: p50 {:?} max {:?})",
        backend(),
        mib(before),
        mib(stalled_at),
        during.len(),
        mib(peak),
        mib(after),
        mib(peak.saturating_sub(before)),
        mib(limit),
        pct(&lat, 0.5),
        pct(&lat, 0.99),
        lat[lat.len() - 1],
        pct(&base, 0.5),
        base[base.len() - 1],
    );
    assert!(
        peak.saturating_sub(before) < limit,
        "the proxy's RSS grew by {} for a client that does not read (bound {})",
        mib(peak - before),
        mib(limit)
    );
    // Generous: a loaded 2-core machine has hiccups, but a shard blocked behind the stalled
    // client would not answer at all.
    assert!(
        lat[lat.len() - 1] < Duration::from_secs(2),
        "slowest query {:?}",
        lat[lat.len() - 1]
    );
    assert!(
        pct(&lat, 0.5) < Duration::from_millis(100),
        "median {:?}",
        pct(&lat, 0.5)
    );

    // Once the client reads, everything arrives.
    let (n, bytes) = drain(&mut stalled);
    assert_eq!((n, bytes), (rows, rows * (2 + 4 + ROW_BYTES)));
    send_query(&mut stalled, "select 1");
    assert_eq!(drain(&mut stalled).0, 1);
    assert_eq!(first_value(&other.query("select 2")).as_deref(), Some("2"));
}
