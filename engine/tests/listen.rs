//! LISTEN/NOTIFY through the proxy: under transaction pooling the shard's notify hub
//! (engine/src/backend/listen.rs) listens for its clients on one server connection of its own;
//! under session pooling LISTEN runs on the client's own server connection.

mod common;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};
use postgres::fallible_iterator::FallibleIterator;
use postgres::Client;
use postgres_protocol::message::frontend;

/// The hub connection's application_name (backend/listen.rs: APPLICATION_NAME).
const HUB_APP: &str = "heliosproxy-listen";

/// One shard (so every client shares its pool), `pool_size` server connections for `sess`
/// (session pooling) and `tx` (transaction pooling), checkouts failing after 2 s.
fn one_shard_proxy(pg: &PgCluster, db: &str, pool_size: usize) -> Proxy {
    let extra = "checkout_timeout_ms = 2000";
    let dbs = db_section("sess", db, "session", pool_size, extra)
        + &db_section("tx", db, "transaction", pool_size, extra);
    let cfg = config(pg, TRUST, "", &dbs).replace("cores = 2", "cores = 1");
    start_proxy(&cfg, None)
}

/// The next `n` notifications (channel, payload), each within `wait`; fewer if they stop coming.
fn next_notifications(c: &mut Client, n: usize, wait: Duration) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut notifications = c.notifications();
    let mut it = notifications.timeout_iter(wait);
    while out.len() < n {
        match it.next() {
            Ok(Some(m)) => out.push((m.channel().to_string(), m.payload().to_string())),
            Ok(None) => break,
            Err(e) => panic!("reading notifications: {e}"),
        }
    }
    out
}

/// Every notification that arrives within `wait` (none expected, usually).
fn quiet_for(c: &mut Client, wait: Duration) -> Vec<(String, String)> {
    next_notifications(c, usize::MAX, wait)
}

fn pair(ch: &str, payload: &str) -> (String, String) {
    (ch.to_string(), payload.to_string())
}

/// The notify hubs' server connections on `db`: (pid, last query, state).
fn hubs(d: &mut Client, db: &str) -> Vec<(i32, String, String)> {
    d.query(
        "select pid, query, state from pg_stat_activity where application_name = $1 and datname = $2 order by pid",
        &[&HUB_APP, &db],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get::<_, Option<String>>(2).unwrap_or_default()))
    .collect()
}

/// Waits until the only hub connection on `db` last ran `query` (and is idle); its pid.
fn wait_hub_query(d: &mut Client, db: &str, query: &str) -> i32 {
    poll(
        Duration::from_secs(10),
        &format!("the hub connection to run {query:?}"),
        || match hubs(d, db).as_slice() {
            [(pid, q, state)] if q == query && state == "idle" => Some(*pid),
            _ => None,
        },
    )
}

#[test]
fn transaction_mode_delivers_notifications_from_proxy_and_direct_clients_while_idle() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_idle");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut a = connect(&proxy, SUPERUSER, PW, "tx");
    let mut b = connect(&proxy, SUPERUSER, PW, "tx");
    let mut c = direct(&pg, &db);
    a.batch_execute("LISTEN jobs").unwrap();
    // A's LISTEN holds no server connection: B runs on the only one.
    assert_eq!(b.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    b.batch_execute("NOTIFY jobs, 'from b'").unwrap();
    c.batch_execute("select pg_notify('jobs', 'from c')")
        .unwrap();
    let got = next_notifications(&mut a, 2, Duration::from_secs(10));
    assert_eq!(got, vec![pair("jobs", "from b"), pair("jobs", "from c")]);
    // The pooled connection does not listen: the hub does.
    let n: i64 = a
        .query_one("select count(*) from pg_listening_channels()", &[])
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "a pooled server connection listens");
    wait_hub_query(&mut c, &db, "LISTEN \"jobs\"");
    // While B holds the only server connection in a transaction, A can still LISTEN (and
    // UNLISTEN): neither takes a server connection.
    b.batch_execute("begin; select 1").unwrap();
    a.batch_execute("LISTEN other; UNLISTEN other").unwrap_err(); // several statements: refused
    a.batch_execute("LISTEN other").unwrap();
    a.batch_execute("UNLISTEN other").unwrap();
    b.batch_execute("NOTIFY jobs, 'in b''s transaction'; commit")
        .unwrap();
    let got = next_notifications(&mut a, 1, Duration::from_secs(10));
    assert_eq!(got, vec![pair("jobs", "in b's transaction")]);
    // Channel names as the server has them: unquoted lowercased, quoted kept.
    a.batch_execute("LISTEN \"Mixed Case\"; ").unwrap();
    a.batch_execute("LISTEN UPPER").unwrap();
    c.batch_execute("NOTIFY \"Mixed Case\", '1'; NOTIFY upper, '2'; NOTIFY \"UPPER\", 'no'")
        .unwrap();
    let got = next_notifications(&mut a, 2, Duration::from_secs(10));
    assert_eq!(got, vec![pair("Mixed Case", "1"), pair("upper", "2")]);
    assert_eq!(quiet_for(&mut a, Duration::from_millis(300)), vec![]);
}

/// What a listening client gets while it is inside a transaction, then after COMMIT: as
/// PostgreSQL does, notifications wait for the end of the transaction.
fn in_transaction_then_after(a: &mut Client, notifier: &mut Client) -> [Vec<(String, String)>; 2] {
    a.batch_execute("LISTEN txch").unwrap();
    a.batch_execute("begin").unwrap();
    a.batch_execute("select 1").unwrap();
    notifier.batch_execute("NOTIFY txch, 'during'").unwrap();
    // Inside the transaction: statements run, nothing is delivered.
    std::thread::sleep(Duration::from_millis(200));
    a.batch_execute("select 2").unwrap();
    let during = quiet_for(a, Duration::from_millis(500));
    a.batch_execute("commit").unwrap();
    let after = next_notifications(a, 1, Duration::from_secs(10));
    a.batch_execute("UNLISTEN txch").unwrap();
    [during, after]
}

#[test]
fn notifications_wait_for_the_end_of_the_listeners_transaction_like_postgres() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_tx");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut notifier = direct(&pg, &db);
    let want = in_transaction_then_after(&mut direct(&pg, &db), &mut notifier);
    assert_eq!(
        want,
        [vec![], vec![pair("txch", "during")]],
        "PostgreSQL itself"
    );
    let mut a = connect(&proxy, SUPERUSER, PW, "tx");
    let got = in_transaction_then_after(&mut a, &mut notifier);
    assert_eq!(got, want, "through the proxy (transaction pooling)");
    let mut s = connect(&proxy, SUPERUSER, PW, "sess");
    let got = in_transaction_then_after(&mut s, &mut notifier);
    assert_eq!(got, want, "through the proxy (session pooling)");
}

/// A NotificationResponse's channel and payload.
fn notification(m: &Msg) -> (String, String) {
    assert_eq!(m.tag, b'A', "not a NotificationResponse: {m:?}");
    let mut parts = m.body[4..].split(|&b| b == 0);
    let ch = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    let payload = String::from_utf8_lossy(parts.next().unwrap()).into_owned();
    (ch, payload)
}

fn command_tags(msgs: &[Msg]) -> Vec<String> {
    msgs.iter()
        .filter(|m| m.tag == b'C')
        .map(|m| String::from_utf8_lossy(&m.body[..m.body.len() - 1]).into_owned())
        .collect()
}

#[test]
fn a_notification_comes_after_the_ready_for_query_never_inside_a_response() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_raw");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut c = direct(&pg, &db);
    let mut r = Raw::trust(proxy.port(), "tx");
    let msgs = r.query("LISTEN raw");
    assert_eq!(command_tags(&msgs), vec!["LISTEN"]);
    assert_eq!(ready_status(&msgs), b'I');
    // A query is running when the notification arrives: it waits for the ReadyForQuery.
    let mut b = BytesMut::new();
    frontend::query("select pg_sleep(0.8), 'done'", &mut b).unwrap();
    r.send(&b);
    std::thread::sleep(Duration::from_millis(200));
    c.batch_execute("NOTIFY raw, 'mid-query'").unwrap();
    let msgs = r.until_ready();
    assert!(
        msgs.iter().all(|m| m.tag != b'A'),
        "a notification inside a response: {msgs:?}"
    );
    assert_eq!(first_value(&msgs).as_deref(), Some(""));
    let next = r.recv().unwrap().expect("a notification");
    assert_eq!(notification(&next), pair("raw", "mid-query"));

    // LISTEN inside a transaction is answered with the transaction's status.
    assert_eq!(ready_status(&r.query("begin")), b'T');
    let msgs = r.query("LISTEN raw2");
    assert_eq!(command_tags(&msgs), vec!["LISTEN"]);
    assert_eq!(ready_status(&msgs), b'T');
    let msgs = r.query("UNLISTEN raw2");
    assert_eq!(command_tags(&msgs), vec!["UNLISTEN"]);
    assert_eq!(ready_status(&msgs), b'T');
    assert_eq!(ready_status(&r.query("commit")), b'I');
    // In a failed transaction it fails like any statement.
    r.query("begin");
    assert_eq!(
        first_error(&r.query("select 1/0")).as_deref(),
        Some("22012")
    );
    let msgs = r.query("LISTEN raw3");
    assert_eq!(first_error(&msgs).as_deref(), Some("25P02"));
    assert_eq!(ready_status(&msgs), b'E');
    assert_eq!(ready_status(&r.query("rollback")), b'I');
    // The server connection went back to the pool: another client gets it.
    let mut other = connect(&proxy, SUPERUSER, PW, "tx");
    other.batch_execute("NOTIFY raw, 'after'").unwrap();
    let next = r.recv().unwrap().expect("a notification");
    assert_eq!(notification(&next), pair("raw", "after"));
    r.terminate();
}

#[test]
fn unlisten_stops_delivery_and_the_hub_unlistens_on_the_server() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_un");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut c = direct(&pg, &db);
    let mut a = connect(&proxy, SUPERUSER, PW, "tx");
    a.batch_execute("LISTEN x").unwrap();
    a.batch_execute("LISTEN y").unwrap();
    a.batch_execute("LISTEN x").unwrap(); // already listening: nothing changes
    c.batch_execute("NOTIFY x, '1'; NOTIFY y, '2'").unwrap();
    assert_eq!(
        next_notifications(&mut a, 2, Duration::from_secs(10)),
        vec![pair("x", "1"), pair("y", "2")]
    );
    a.batch_execute("UNLISTEN x").unwrap();
    wait_hub_query(&mut c, &db, "UNLISTEN \"x\"");
    c.batch_execute("NOTIFY x, 'gone'; NOTIFY y, 'still'")
        .unwrap();
    assert_eq!(
        quiet_for(&mut a, Duration::from_millis(700)),
        vec![pair("y", "still")]
    );
    a.batch_execute("UNLISTEN *").unwrap();
    wait_hub_query(&mut c, &db, "UNLISTEN \"y\"");
    c.batch_execute("NOTIFY x, 'no'; NOTIFY y, 'no'").unwrap();
    assert_eq!(quiet_for(&mut a, Duration::from_millis(700)), vec![]);
    // DISCARD ALL unlistens too, as in PostgreSQL.
    a.batch_execute("LISTEN z").unwrap();
    a.batch_execute("DISCARD ALL").unwrap();
    wait_hub_query(&mut c, &db, "UNLISTEN \"z\"");
    c.batch_execute("NOTIFY z, 'no'").unwrap();
    assert_eq!(quiet_for(&mut a, Duration::from_millis(700)), vec![]);
    // UNLISTEN of what a client never listened on is fine.
    let mut fresh = connect(&proxy, SUPERUSER, PW, "tx");
    fresh.batch_execute("UNLISTEN nothing").unwrap();
    fresh.batch_execute("UNLISTEN *").unwrap();
}

#[test]
fn a_client_that_disconnects_is_unsubscribed() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_gone");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut c = direct(&pg, &db);
    let mut keep = connect(&proxy, SUPERUSER, PW, "tx");
    keep.batch_execute("LISTEN keep").unwrap();
    let mut gone = connect(&proxy, SUPERUSER, PW, "tx");
    gone.batch_execute("LISTEN gone").unwrap();
    let hub = wait_hub_query(&mut c, &db, "LISTEN \"gone\"");
    drop(gone);
    // The hub's connection (the same one) UNLISTENs the channel nobody listens on any more.
    assert_eq!(wait_hub_query(&mut c, &db, "UNLISTEN \"gone\""), hub);
    c.batch_execute("NOTIFY gone, 'x'; NOTIFY keep, 'y'")
        .unwrap();
    assert_eq!(
        next_notifications(&mut keep, 1, Duration::from_secs(10)),
        vec![pair("keep", "y")]
    );
    // A raw client that goes away without Terminate.
    let mut r = Raw::trust(proxy.port(), "tx");
    r.query("LISTEN raw_gone");
    wait_hub_query(&mut c, &db, "LISTEN \"raw_gone\"");
    r.stream.shutdown(std::net::Shutdown::Both).unwrap();
    drop(r);
    wait_hub_query(&mut c, &db, "UNLISTEN \"raw_gone\"");
    drop(keep);
    assert_eq!(wait_hub_query(&mut c, &db, "UNLISTEN \"keep\""), hub);
}

#[test]
fn two_clients_on_one_channel_both_receive_on_either_shard() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_two");
    // Two shards: the clients may sit on different shards, each with a hub of its own.
    let proxy = both_modes_proxy(&pg, &db, 2, "");
    let mut c = direct(&pg, &db);
    let mut listeners: Vec<Client> = (0..4)
        .map(|_| connect(&proxy, SUPERUSER, PW, "tx"))
        .collect();
    for l in &mut listeners {
        l.batch_execute("LISTEN shared").unwrap();
    }
    let mut elsewhere = connect(&proxy, SUPERUSER, PW, "tx");
    elsewhere.batch_execute("LISTEN elsewhere").unwrap();
    c.batch_execute("NOTIFY shared, 'one'; NOTIFY shared, 'two'")
        .unwrap();
    for (i, l) in listeners.iter_mut().enumerate() {
        assert_eq!(
            next_notifications(l, 2, Duration::from_secs(10)),
            vec![pair("shared", "one"), pair("shared", "two")],
            "listener {i}"
        );
    }
    assert_eq!(
        quiet_for(&mut elsewhere, Duration::from_millis(300)),
        vec![]
    );
    // One of them leaves: the others still receive.
    listeners.pop();
    c.batch_execute("NOTIFY shared, 'three'").unwrap();
    for l in &mut listeners {
        assert_eq!(
            next_notifications(l, 1, Duration::from_secs(10)),
            vec![pair("shared", "three")]
        );
    }
    // At most one hub connection per shard.
    let n = hubs(&mut c, &db).len();
    assert!((1..=2).contains(&n), "{n} hub connections");
}

#[test]
fn session_mode_listen_runs_on_the_clients_own_server_connection() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_sess");
    let proxy = one_shard_proxy(&pg, &db, 2);
    let mut c = direct(&pg, &db);
    let mut s = connect(&proxy, SUPERUSER, PW, "sess");
    s.batch_execute("LISTEN sch").unwrap();
    let chans: Vec<String> = s
        .query("select pg_listening_channels()", &[])
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(chans, vec!["sch".to_string()]);
    // Through the extended protocol too, and with other statements.
    s.execute("LISTEN sch2", &[]).unwrap();
    s.batch_execute("LISTEN sch3; select 1").unwrap();
    c.batch_execute("NOTIFY sch, 'a'; NOTIFY sch2, 'b'; NOTIFY sch3, 'c'")
        .unwrap();
    assert_eq!(
        next_notifications(&mut s, 3, Duration::from_secs(10)),
        vec![pair("sch", "a"), pair("sch2", "b"), pair("sch3", "c")]
    );
    assert!(hubs(&mut c, &db).is_empty(), "session mode uses no hub");
}

#[test]
fn transaction_mode_refuses_listen_with_other_statements_or_extended() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_refuse");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut a = connect(&proxy, SUPERUSER, PW, "tx");
    for sql in ["LISTEN e", "UNLISTEN e", "UNLISTEN *"] {
        let e = a.execute(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "{sql} (extended): {e}");
        assert_eq!(a.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    }
    for sql in ["LISTEN e; select 1", "unlisten *; select 1"] {
        let e = a.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "{sql}: {e}");
    }
    // Not a channel name the proxy reads: an untracked statement, so the client is pinned to
    // its server connection (unsafe_statements = "pin") and listens there natively.
    a.batch_execute("LISTEN U&\"\\0061\"").unwrap();
    a.batch_execute("LISTEN e").unwrap();
}

#[test]
fn the_hub_reconnects_and_listens_again_after_its_connection_dies() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_re");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut c = direct(&pg, &db);
    let mut a = connect(&proxy, SUPERUSER, PW, "tx");
    a.batch_execute("LISTEN r1").unwrap();
    a.batch_execute("LISTEN r2").unwrap();
    let old = wait_hub_query(&mut c, &db, "LISTEN \"r2\"");
    c.execute("select pg_terminate_backend($1)", &[&old])
        .unwrap();
    // A new connection LISTENs on both channels again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let h = hubs(&mut c, &db);
        if let [(pid, q, state)] = h.as_slice() {
            if *pid != old && q.starts_with("LISTEN") && state == "idle" {
                break;
            }
        }
        assert!(Instant::now() < deadline, "no new hub connection: {h:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Both channels, in whichever order they were LISTENed again.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    while got.len() < 2 {
        c.batch_execute("NOTIFY r1, 'back'; NOTIFY r2, 'back'")
            .unwrap();
        got = next_notifications(&mut a, 2, Duration::from_millis(500));
        assert!(Instant::now() < deadline, "after the reconnect: {got:?}");
    }
    assert_eq!(got, vec![pair("r1", "back"), pair("r2", "back")]);
    assert!(
        proxy.log().contains("may be lost"),
        "the gap is logged:\n{}",
        proxy.log()
    );
}

#[test]
fn a_client_that_does_not_read_loses_its_oldest_notifications_not_proxy_memory() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "listen_flood");
    let proxy = one_shard_proxy(&pg, &db, 1);
    let mut c = direct(&pg, &db);
    let mut r = Raw::trust(proxy.port(), "tx");
    r.query("LISTEN flood");
    // ~35 MB of notifications while the client reads nothing: more than the socket buffers
    // and the proxy's send allowance hold, so the client's queue in the hub (1000 frames)
    // overflows.
    const N: usize = 5000;
    c.execute(
        "select pg_notify('flood', i || ':' || repeat('x', 7000)) from generate_series(1, $1) i",
        &[&(N as i32)],
    )
    .unwrap();
    poll(Duration::from_secs(20), "the overflow to be logged", || {
        proxy
            .log()
            .contains("does not read its notifications")
            .then_some(())
    });
    // Now read: what arrives is in order, ends with the last one, and some in between are gone.
    let mut got = Vec::new();
    loop {
        let m = r.recv().unwrap().expect("a notification");
        let (ch, payload) = notification(&m);
        assert_eq!(ch, "flood");
        let i: usize = payload.split(':').next().unwrap().parse().unwrap();
        got.push(i);
        if i == N {
            break;
        }
    }
    assert!(got.windows(2).all(|w| w[0] < w[1]), "out of order");
    assert!(got.len() < N, "nothing was dropped: {}", got.len());
    assert!(
        got.len() >= 1000,
        "fewer than the queue holds: {}",
        got.len()
    );
    // The client is still served.
    assert_eq!(first_value(&r.query("select 7")).as_deref(), Some("7"));
}
