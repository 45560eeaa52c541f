//! The statement pipeline end to end (engine/src/pipeline): every *execution* passes the stages
//! — a prepared statement executed a thousand times runs `pre_query` and `post_query` a
//! thousand times, each pair with its own request id — `post_query` gets the outcome (rows from
//! CommandComplete, response bytes, elapsed time, SQLSTATE), and a result observer (the result
//! guard, `max_result_rows` / `max_result_bytes`) ends an oversized result as it streams.

mod common;

use std::time::Duration;

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};
use postgres_protocol::message::frontend;
use serde_json::Value;

fn kv(admin: u16, key: &str) -> Option<String> {
    let (st, _, body) = http(admin, "GET", &format!("/plugins/exec/kv/{key}"), None).unwrap();
    (st == 200).then_some(body)
}

fn count(admin: u16, key: &str) -> u64 {
    kv(admin, key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// Waits until the admin's view of the plugin's KV (replicated from the shards) settles on
/// `want` for `key`.
fn wait_count(admin: u16, key: &str, want: u64) {
    let got = try_poll(Duration::from_secs(10), || {
        (count(admin, key) == want).then_some(())
    });
    assert!(
        got.is_some(),
        "{key}: want {want}, have {}",
        count(admin, key)
    );
}

fn message(e: &postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default()
}

fn last_outcome(admin: u16) -> Value {
    serde_json::from_str(&kv(admin, "last_outcome").expect("an outcome")).unwrap()
}

fn exec_log_proxy(pg: &PgCluster, db: &str) -> Proxy {
    let dbs =
        db_section("tx", db, "transaction", 2, "") + &db_section("sess", db, "session", 2, "");
    let cfg = config(pg, TRUST, "", &dbs)
        + &plugins_section(
            "",
            &plugin_entry("exec-log", "").replace("\"exec-log\"", "\"exec\""),
        );
    let proxy = start_proxy(&cfg, None);
    poll(Duration::from_secs(10), "the proxy accepts", || {
        std::net::TcpStream::connect(("127.0.0.1", proxy.port())).ok()
    });
    proxy
}

#[test]
fn each_execution_passes_pre_and_post_query_once_with_its_own_request_id() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pipe_exec");
    pg.psql(&db, "create table t (x int)").unwrap();
    let proxy = exec_log_proxy(&pg, &db);
    let admin = proxy.admin_port();
    let mut expected = 0;
    for alias in ["tx", "sess"] {
        let mut c = connect(&proxy, SUPERUSER, "", alias);
        // Prepared once (Parse/Describe/Sync: no execution), executed 1,000 times.
        let st = c.prepare("select $1::int + 1").unwrap();
        for i in 0..1000 {
            assert_eq!(c.query_one(&st, &[&i]).unwrap().get::<_, i32>(0), i + 1);
        }
        expected += 1000;
        wait_count(admin, "pre_count", expected);
        wait_count(admin, "post_count", expected);

        // Unnamed statements (Parse/Bind/Execute/Sync in one batch), simple queries and a
        // pipelined batch of two executions before one Sync: one execution each.
        let mut r = Raw::trust(proxy.port(), alias);
        for _ in 0..10 {
            let m = r.extended("", Some("select 1"), &[]);
            assert_eq!(first_value(&m).as_deref(), Some("1"));
            assert_eq!(first_value(&r.query("select 2")).as_deref(), Some("2"));
        }
        expected += 20;
        wait_count(admin, "pre_count", expected);
        wait_count(admin, "post_count", expected);

        // A Bind never executed (Parse/Bind/Sync): its execution ends with the transaction,
        // post_query with success false.
        let mut b = bytes::BytesMut::new();
        frontend::parse("", "select 3", std::iter::empty(), &mut b).unwrap();
        frontend::bind(
            "",
            "",
            std::iter::empty::<i16>(),
            std::iter::empty::<&str>(),
            |_, _| Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No),
            Some(0),
            &mut b,
        )
        .map_err(|_| ())
        .unwrap();
        frontend::sync(&mut b);
        r.send(&b);
        assert_eq!(ready_status(&r.until_ready()), b'I');
        expected += 1;
        wait_count(admin, "post_count", expected);
        let o = last_outcome(admin);
        assert_eq!(o["success"], false, "{o}");
        assert!(
            o["error"].as_str().unwrap().contains("never executed"),
            "{o}"
        );

        // The outcome: rows from CommandComplete, bytes, elapsed, success.
        let m = r.extended("", Some("select g from generate_series(1, 7) g"), &[]);
        assert_eq!(m.iter().filter(|x| x.tag == b'D').count(), 7);
        expected += 1;
        wait_count(admin, "post_count", expected);
        let o = last_outcome(admin);
        assert_eq!(o["success"], true, "{o}");
        assert_eq!(o["rows"], 7, "{o}");
        assert!(o["response_bytes"].as_u64().unwrap() > 7 * 11, "{o}");
        assert!(o["elapsed_us"].as_u64().unwrap() > 0, "{o}");
        c.execute("insert into t select generate_series(1, 3)", &[])
            .unwrap();
        expected += 1;
        wait_count(admin, "post_count", expected);
        assert_eq!(last_outcome(admin)["rows"], 3);

        // A failed execution: success false with the server's SQLSTATE and message.
        let m = r.extended("", Some("select 1/0"), &[]);
        assert_eq!(first_error(&m).as_deref(), Some("22012"));
        expected += 1;
        wait_count(admin, "post_count", expected);
        let o = last_outcome(admin);
        assert_eq!(
            (&o["success"], &o["sqlstate"]),
            (&Value::Bool(false), &Value::from("22012")),
            "{o}"
        );
        assert!(
            o["error"].as_str().unwrap().contains("division by zero"),
            "{o}"
        );
        r.terminate();
    }
    assert_eq!(
        count(admin, "dup_ids"),
        0,
        "a request id served two pre_query calls"
    );
    assert_eq!(
        count(admin, "orphan_posts"),
        0,
        "a post_query without its pre_query"
    );
}

#[test]
fn pgbench_prepared_counts_every_execution() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pipe_bench");
    let proxy = exec_log_proxy(&pg, &db);
    let admin = proxy.admin_port();
    let before = count(admin, "post_count");
    let script = std::env::temp_dir().join(format!("pipe_bench_{}.sql", std::process::id()));
    std::fs::write(&script, "select 1;\n").unwrap();
    let out = std::process::Command::new("pgbench")
        // One client: the plugin's counters are read-modify-write per shard, and KV writes
        // from two shards would race.
        .args(["-n", "-M", "prepared", "-c", "1", "-t", "500", "-f"])
        .arg(&script)
        .arg(proxy.url(SUPERUSER, "", "tx"))
        .output()
        .expect("run pgbench");
    assert!(
        out.status.success(),
        "pgbench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_count(admin, "post_count", before + 500);
    wait_count(admin, "pre_count", before + 500);
}

fn guard_proxy(pg: &PgCluster, db: &str) -> Proxy {
    let limits = "max_result_rows = 5\n";
    let dbs = db_section("tx", db, "transaction", 2, limits)
        + &db_section("sess", db, "session", 2, limits)
        + &db_section("bytes", db, "transaction", 2, "max_result_bytes = 1000\n")
        + &db_section("open", db, "transaction", 2, "");
    start_proxy(&config(pg, TRUST, "", &dbs), None)
}

#[test]
fn the_result_guard_ends_an_oversized_result_with_54000() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pipe_guard");
    pg.psql(
        &db,
        "create table g (x int); insert into g select generate_series(1, 20)",
    )
    .unwrap();
    let proxy = guard_proxy(&pg, &db);
    for alias in ["tx", "sess"] {
        let mut c = connect(&proxy, SUPERUSER, "", alias);
        // At the limit: served.
        assert_eq!(c.query("select x from g limit 5", &[]).unwrap().len(), 5);
        // Past it, both protocols: 54000, and the session goes on.
        let e = c.query("select x from g", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("54000"), "{alias}: {e}");
        assert!(message(&e).contains("max_result_rows"), "{e:?}");
        let e = c.simple_query("select x from g").unwrap_err();
        assert_eq!(sqlstate(&e), Some("54000"), "{alias}: {e}");
        assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);

        // Inside a transaction the transaction is failed, as for any error.
        c.batch_execute("begin").unwrap();
        let e = c.query("select x from g", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("54000"));
        let e = c.query("select 1", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("25P02"), "{alias}: {e}");
        c.batch_execute("rollback").unwrap();
        assert_eq!(c.query_one("select 2", &[]).unwrap().get::<_, i32>(0), 2);

        // Raw: the client sees the rows up to the limit, the error, ReadyForQuery.
        let mut r = Raw::trust(proxy.port(), alias);
        let m = r.query("select x from g");
        let tags: String = m.iter().map(|x| x.tag as char).collect();
        assert_eq!(tags, "TDDDDDEZ", "{alias}: {m:?}");
        assert_eq!(ready_status(&m), b'I');
        let m = r.extended("", Some("select x from g"), &[]);
        let tags: String = m.iter().map(|x| x.tag as char).collect();
        assert_eq!(tags, "12DDDDDEZ", "{alias}: {m:?}");
        r.terminate();

        // psql says it too.
        let out = psql(&proxy.url(SUPERUSER, "", alias), "select x from g");
        assert!(!out.status.success());
        assert!(String::from_utf8_lossy(&out.stderr).contains("max_result_rows = 5"));
    }
    // Bytes: 20 rows of ~11 bytes pass 1000? No — a wide row does.
    let mut c = connect(&proxy, SUPERUSER, "", "bytes");
    assert_eq!(c.query("select x from g", &[]).unwrap().len(), 20);
    let e = c.query("select repeat('x', 300) from g", &[]).unwrap_err();
    assert_eq!(sqlstate(&e), Some("54000"), "{e}");
    assert!(message(&e).contains("max_result_bytes"), "{e:?}");
    // A database without limits is not touched.
    let mut c = connect(&proxy, SUPERUSER, "", "open");
    assert_eq!(c.query("select x from g", &[]).unwrap().len(), 20);
}
