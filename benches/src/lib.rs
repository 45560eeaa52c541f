//! Fixtures and the few replicas the criterion benchmarks in `benches/benches/` need.
//!
//! Everything measured is the engine's own code (`helios_engine::…`, `helios_admin::…`) except
//! where a function here is named `*_replica`: those copy, line for line, a few lines of a
//! private engine function that no `pub` change can reach (the session state machine and the
//! shard's control loop), always calling the same engine functions as the original.
//!
//! Numbers and the command to reproduce them: `benches/README.md`.

use std::cell::Cell;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::AtomicUsize;
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use atomic_waker::AtomicWaker;
use bytes::{BufMut, Bytes, BytesMut};
use crossbeam_channel::{Receiver, TryRecvError};
use helios_config::PoolMode;
use helios_engine::backend::pool::{Pool, PoolSettings};
use helios_engine::backend::server::{BackendKey, PreparedSet, ServerConn, ServerId, ServerTarget};
use helios_engine::net::codec::{put_cstr, put_msg, put_query, put_ready, read_cstr, FrameReader};
use helios_engine::net::conn::Conn;
use helios_engine::shard::{ShardMsg, Shared, Statement};

/// The statements of pgbench's built-in TPC-B-like script (`pgbench -b tpcb-like`), with the
/// variables substituted as pgbench does in `-M simple`.
pub const PGBENCH_TPCB: [&str; 7] = [
    "BEGIN;",
    "UPDATE pgbench_accounts SET abalance = abalance + -4312 WHERE aid = 81627;",
    "SELECT abalance FROM pgbench_accounts WHERE aid = 81627;",
    "UPDATE pgbench_tellers SET tbalance = tbalance + -4312 WHERE tid = 7;",
    "UPDATE pgbench_branches SET bbalance = bbalance + -4312 WHERE bid = 1;",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 81627, -4312, CURRENT_TIMESTAMP);",
    "END;",
];

/// pgbench's select-only script (`-S`), as sent by `-M simple`.
pub const PGBENCH_SELECT: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = 81627;";

/// The same statement as `-M extended` / `-M prepared` send it (one parameter).
pub const PGBENCH_SELECT_PARAM: &str = "SELECT abalance FROM pgbench_accounts WHERE aid = $1;";

/// Parse body after the statement name: query, parameter type count, the types (int4).
pub fn parse_body_after_name(sql: &str, param_types: &[i32]) -> Bytes {
    let mut b = BytesMut::new();
    put_cstr(&mut b, sql.as_bytes());
    b.put_i16(param_types.len() as i16);
    for t in param_types {
        b.put_i32(*t);
    }
    b.freeze()
}

/// Appends a Parse message.
pub fn put_parse(out: &mut BytesMut, name: &str, sql: &str, param_types: &[i32]) {
    let after = parse_body_after_name(sql, param_types);
    put_msg(out, b'P', |b| {
        put_cstr(b, name.as_bytes());
        b.put_slice(&after);
    });
}

/// Appends a Bind with text-format parameters and results, as libpq's `PQexecPrepared` does.
pub fn put_bind(out: &mut BytesMut, portal: &str, stmt: &str, params: &[&str]) {
    put_msg(out, b'B', |b| {
        put_cstr(b, portal.as_bytes());
        put_cstr(b, stmt.as_bytes());
        b.put_i16(0); // parameter formats: all text
        b.put_i16(params.len() as i16);
        for p in params {
            b.put_i32(p.len() as i32);
            b.put_slice(p.as_bytes());
        }
        b.put_i16(0); // result formats: all text
    });
}

/// Appends Describe portal, Execute (no row limit) and Sync: the rest of libpq's extended batch.
pub fn put_describe_execute_sync(out: &mut BytesMut, portal: &str) {
    put_msg(out, b'D', |b| {
        b.put_u8(b'P');
        put_cstr(b, portal.as_bytes());
    });
    put_msg(out, b'E', |b| {
        put_cstr(b, portal.as_bytes());
        b.put_i32(0);
    });
    put_msg(out, b'S', |_| {});
}

/// What a client sends for one pgbench TPC-B transaction in `-M simple`: seven Query messages
/// (pgbench sends them one at a time; here they are one buffer, as a pipelining client would).
pub fn client_simple_tpcb() -> Bytes {
    let mut out = BytesMut::new();
    for q in PGBENCH_TPCB {
        put_query(&mut out, q);
    }
    out.freeze()
}

/// One `-M extended` select: Parse (unnamed), Bind, Describe portal, Execute, Sync.
pub fn client_extended_select() -> Bytes {
    let mut out = BytesMut::new();
    put_parse(&mut out, "", PGBENCH_SELECT_PARAM, &[23]);
    put_bind(&mut out, "", "", &["81627"]);
    put_describe_execute_sync(&mut out, "");
    out.freeze()
}

/// RowDescription of `abalance` (int4, text format).
pub fn put_row_description_abalance(out: &mut BytesMut) {
    put_msg(out, b'T', |b| {
        b.put_i16(1);
        put_cstr(b, b"abalance");
        b.put_i32(16_397); // table oid
        b.put_i16(3); // column number
        b.put_i32(23); // int4
        b.put_i16(4);
        b.put_i32(-1);
        b.put_i16(0);
    });
}

/// What the server answers to one `-M extended` select: ParseComplete, BindComplete,
/// RowDescription, DataRow, CommandComplete `SELECT 1`, ReadyForQuery.
pub fn server_extended_select() -> Bytes {
    let mut out = BytesMut::new();
    put_msg(&mut out, b'1', |_| {});
    put_msg(&mut out, b'2', |_| {});
    put_row_description_abalance(&mut out);
    put_msg(&mut out, b'D', |b| {
        b.put_i16(1);
        b.put_i32(5);
        b.put_slice(b"-4312");
    });
    put_msg(&mut out, b'C', |b| put_cstr(b, b"SELECT 1"));
    put_ready(&mut out, b'I');
    out.freeze()
}

/// What the server answers to a `-M simple` select returning `rows` rows: RowDescription,
/// `rows` DataRows, CommandComplete, ReadyForQuery.
pub fn server_simple_select(rows: usize) -> Bytes {
    let mut out = BytesMut::new();
    put_row_description_abalance(&mut out);
    for i in 0..rows {
        let v = format!("{}", i as i64 * 37 - 5000);
        put_msg(&mut out, b'D', |b| {
            b.put_i16(1);
            b.put_i32(v.len() as i32);
            b.put_slice(v.as_bytes());
        });
    }
    put_msg(&mut out, b'C', |b| {
        put_cstr(b, format!("SELECT {rows}").as_bytes())
    });
    put_ready(&mut out, b'T');
    out.freeze()
}

/// Splits every whole frame off `reader` and returns how many there were (the benchmark loop of
/// `FrameReader::next_frame`).
pub fn drain_frames(reader: &mut FrameReader) -> usize {
    let mut n = 0;
    while let Ok(Some(f)) = reader.next_frame() {
        std::hint::black_box(&f);
        n += 1;
    }
    n
}

/// Replica of the transaction-mode branch of `Session::on_bind`
/// (engine/src/frontend/session.rs): read the portal and statement names with `read_cstr`,
/// look the client's statement name up in the session's `statements` map, check the server
/// connection's `PreparedSet`, and write the Bind under the proxy's statement name with
/// `put_msg` straight into the send buffer. `None` where `on_bind` would reject (malformed, or
/// a statement the client never prepared) or would first have to send the Parse.
pub fn rewrite_bind_replica(
    out: &mut BytesMut,
    bind_body: &[u8],
    statements: &HashMap<Bytes, Rc<Statement>>,
    prepared: &mut PreparedSet,
) -> Option<()> {
    let mut rest = bind_body;
    let portal = read_cstr(&mut rest)?;
    let name = read_cstr(&mut rest)?;
    let stmt = statements.get(name)?;
    if !prepared.contains(stmt.id) {
        return None;
    }
    // Rewritten straight into the send buffer: no allocation per Bind.
    put_msg(out, b'B', |b| {
        put_cstr(b, portal);
        b.put_slice(&stmt.name);
        b.put_slice(rest);
    });
    Some(())
}

/// Shard 0 of a one-shard runtime built from `config` (TOML text), outside any executor: for
/// benchmarks of what a shard decides (pipeline stages, routing).
pub fn bench_shard(
    shared: Arc<Shared>,
    config: &helios_config::Config,
) -> Rc<helios_engine::shard::Shard> {
    let rt = helios_engine::runtime::runtime_config(config.clone(), Default::default(), 1)
        .expect("a runtime configuration");
    helios_engine::shard::Shard::new(0, shared, Arc::new(rt))
}

/// A `Shared` with `n` shard inboxes of the engine's capacity (1024) and their doorbells, no
/// admin thread; the receivers, in shard order.
pub fn shared_with_inboxes(n: usize) -> (Arc<Shared>, Vec<Receiver<ShardMsg>>) {
    let mut inboxes = Vec::new();
    let mut receivers = Vec::new();
    let mut doorbells = Vec::new();
    for _ in 0..n {
        let (tx, rx) = crossbeam_channel::bounded(1024);
        inboxes.push(tx);
        receivers.push(rx);
        doorbells.push(Arc::new(AtomicWaker::new()));
    }
    let shared = Shared {
        inboxes,
        doorbells,
        clients: AtomicUsize::new(0),
        sessions: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        snapshots: None,
        snapshot_interval: Duration::from_secs(1),
        console_state: Mutex::new(helios_admin::AdminState::new(n)),
        pauses: Default::default(),
        node_switches: Default::default(),
        topology: Arc::new(helios_engine::backend::topology::TopologyHub::empty()),
        journal: None,
        signal: Default::default(),
    };
    (Arc::new(shared), receivers)
}

/// Replica of the receive step of `run_shard`'s control loop (engine/src/shard.rs): register
/// the task's waker with the doorbell, then `try_recv` the inbox; pending when it is empty.
pub async fn shard_recv_replica(
    inbox: &Receiver<ShardMsg>,
    doorbell: &AtomicWaker,
) -> Option<ShardMsg> {
    std::future::poll_fn(|cx| {
        doorbell.register(cx.waker());
        match inbox.try_recv() {
            Ok(m) => Poll::Ready(Some(m)),
            Err(TryRecvError::Empty) => Poll::Pending,
            Err(TryRecvError::Disconnected) => Poll::Ready(None),
        }
    })
    .await
}

/// Pool settings for a transaction-mode pool of `max_size` that never expires connections.
pub fn pool_settings(max_size: usize) -> PoolSettings {
    PoolSettings {
        alias: "pgbench".into(),
        mode: PoolMode::Transaction,
        target: ServerTarget {
            node: "bench".into(),
            host: "127.0.0.1".into(),
            port: 5432,
            addrs: vec![([127, 0, 0, 1], 5432).into()],
            dbname: "pgbench".into(),
            user: "bench".into(),
            password: None,
            connect_timeout: Duration::from_secs(1),
            tls: None,
            startup: Vec::new(),
            lease: None,
        },
        max_size,
        min_idle: 0,
        idle_timeout: Duration::from_secs(600),
        max_lifetime: Duration::ZERO,
        checkout_timeout: Duration::from_secs(5),
        prepared_cap: 100,
        max_frame: 1 << 30,
    }
}

/// A pool with one idle server connection, built around a real loopback socket (which never
/// carries a byte: the pool's fast path does not touch it). Must run inside a glommio
/// executor; the returned peer socket must outlive the pool's use.
pub async fn pool_with_one_idle() -> (Rc<Pool>, glommio::net::TcpStream) {
    let listener = glommio::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr: SocketAddr = listener.local_addr().expect("local addr");
    let (client, server) =
        futures_lite::future::zip(glommio::net::TcpStream::connect(addr), listener.accept()).await;
    let conn = Conn::new(client.expect("connect loopback"));
    let peer = server.expect("accept loopback");
    let now = Instant::now();
    let s = ServerConn {
        id: ServerId(1),
        conn,
        reader: FrameReader::new(1 << 20),
        key: BackendKey {
            addr,
            pid: helios_engine::ids::BackendPid(4242),
            secret: 7,
            fd: -1,
        },
        startup_params: Rc::new(Vec::new()),
        applied: Default::default(),
        prepared: PreparedSet::new(100),
        created: now,
        created_unix: 0,
        last_used: now,
        lease_gen: 0,
    };
    // The connection was not opened by the pool, so the pool's private count of open
    // connections stays 0: a `max_size` of 0 makes that count mean "at its size", so a
    // checkout with no idle connection waits for a release instead of dialing PostgreSQL.
    let pool = Rc::new(Pool::new(pool_settings(0), Rc::new(Cell::new(1)), None));
    pool.release(s);
    assert_eq!(pool.idle_count(), 1);
    (pool, peer)
}

/// A glommio executor small enough for the development VM's `ulimit -l` (as the engine's shards).
pub fn local_executor() -> glommio::LocalExecutor {
    glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
        .io_memory(256 * 1024)
        .make()
        .expect("glommio executor (io_uring and locked memory)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use helios_engine::shard::StatementRegistry;

    fn tags(b: &Bytes) -> Vec<u8> {
        let mut r = FrameReader::new(1 << 20);
        r.buf.extend_from_slice(b);
        let mut t = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            t.push(f.tag);
        }
        assert!(r.buf.is_empty());
        t
    }

    #[test]
    fn fixtures_frame_as_expected() {
        assert_eq!(tags(&client_simple_tpcb()), vec![b'Q'; 7]);
        assert_eq!(tags(&client_extended_select()), b"PBDES".to_vec());
        assert_eq!(tags(&server_extended_select()), b"12TDCZ".to_vec());
        assert_eq!(tags(&server_simple_select(3)), b"TDDDCZ".to_vec());
        let mut r = FrameReader::new(1 << 20);
        r.buf.extend_from_slice(&client_simple_tpcb());
        assert_eq!(drain_frames(&mut r), 7);
    }

    #[test]
    fn bind_rewrite_replica_renames_the_statement() {
        let mut reg = StatementRegistry::default();
        let stmt = reg.intern(0, &parse_body_after_name(PGBENCH_SELECT_PARAM, &[23]));
        let mut statements = HashMap::new();
        statements.insert(Bytes::from_static(b"P0_1"), stmt.clone());
        let mut prepared = PreparedSet::new(10);
        let mut m = BytesMut::new();
        put_bind(&mut m, "", "P0_1", &["81627"]);
        let body = &m[5..];
        let mut out = BytesMut::new();
        assert!(rewrite_bind_replica(&mut out, body, &statements, &mut prepared).is_none());
        prepared.insert(stmt.id);
        rewrite_bind_replica(&mut out, body, &statements, &mut prepared).unwrap();
        let mut expected = BytesMut::new();
        put_bind(&mut expected, "", &format!("_hp_{:x}", stmt.id), &["81627"]);
        assert_eq!(out, expected);
    }

    #[test]
    fn shared_send_reaches_the_replica_loop_on_another_thread() {
        let (shared, mut rx) = shared_with_inboxes(2);
        let rx1 = rx.pop().unwrap();
        let s = shared.clone();
        let t = std::thread::spawn(move || {
            let mut n = 0;
            while let Some(ShardMsg::Cancel { pid, .. }) =
                futures_lite::future::block_on(shard_recv_replica(&rx1, &s.doorbells[1]))
            {
                assert_eq!(pid, helios_engine::ids::ClientPid(n));
                n += 1;
                if n == 100 {
                    break;
                }
            }
            n
        });
        for pid in 0..100 {
            while !shared.send(
                1,
                ShardMsg::Cancel {
                    pid: helios_engine::ids::ClientPid(pid),
                    secret: 0,
                },
            ) {
                std::thread::yield_now();
            }
        }
        assert_eq!(t.join().unwrap(), 100);
    }

    #[test]
    fn pool_round_trip_in_glommio() {
        local_executor().run(async {
            let (pool, _peer) = pool_with_one_idle().await;
            for _ in 0..10 {
                let s = pool.checkout().await.unwrap();
                assert_eq!(pool.idle_count(), 0);
                pool.release(s);
                assert_eq!(pool.idle_count(), 1);
            }
            assert_eq!(pool.counters.get().connects, 0);
        });
    }
}
