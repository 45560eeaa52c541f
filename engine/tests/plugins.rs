//! WASM plugins through the proxy, against real PostgreSQL: `block-drop` refuses DROP TABLE on
//! every protocol path (and a statement refused at Parse can never be executed), `rewrite`
//! changes what runs, `route` blocks, picks a node and sees `SET helios.*` attributes,
//! `on_error` decides what a failing plugin's queries get, SIGHUP swaps plugins under open
//! connections, `trust_root` refuses unsigned artefacts (and a plugin that fails to load stops
//! start-up, `--check` and a reload unless `optional`), and a wasm32-wasip1 plugin runs.
//!
//! The guest plugins come from `scripts/build-plugins.sh` (`target/plugins/<name>.wasm`).

mod common;

use std::path::PathBuf;
use std::process::Command;

use bytes::BytesMut;
use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};
use postgres_protocol::message::frontend;

/// The SQLSTATE of a plugin block.
const BLOCKED: &str = "42000";
const DROP_REASON: &str = "DROP TABLE is not allowed through HeliosProxy";

/// `(SQLSTATE, message)` of a server (or proxy) error.
fn db_error(e: &postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

fn error_message(msgs: &[Msg]) -> Option<String> {
    msgs.iter()
        .find(|m| m.tag == b'E')
        .and_then(|m| m.field(b'M'))
}

fn table_exists(pg: &PgCluster, db: &str, table: &str) -> bool {
    direct(pg, db)
        .query_one("select to_regclass($1) is not null", &[&table])
        .unwrap()
        .get(0)
}

/// `tx` (transaction pooling) and `sess` (session pooling) for `db`, then `plugins`.
fn plugin_config(pg: &PgCluster, db: &str, plugins: &str) -> String {
    let dbs =
        db_section("tx", db, "transaction", 4, "") + &db_section("sess", db, "session", 4, "");
    config(pg, TRUST, "", &dbs) + plugins
}

fn plugin_proxy(pg: &PgCluster, db: &str, plugins: &str) -> Proxy {
    start_listening(&plugin_config(pg, db, plugins))
}

/// [`start_proxy`], then waits until the port accepts connections. (The proxy logs "listening"
/// — which `Proxy::start` waits for — when every shard thread has started, but each shard
/// creates its plugin instances and io_uring ring before it binds its listener, so a connect
/// right after the log line can be refused: engine/src/startup.rs sends `Started::Ready` before
/// `run_shard` binds.)
fn start_listening(config: &str) -> Proxy {
    let proxy = start_proxy(config, None);
    poll(
        std::time::Duration::from_secs(10),
        "the proxy to accept connections",
        || std::net::TcpStream::connect(("127.0.0.1", proxy.port())).ok(),
    );
    proxy
}

/// psql with `VERBOSITY=verbose`, so an error shows its SQLSTATE: `(success, stdout, stderr)`.
fn psql_verbose(url: &str, sql: &str) -> (bool, String, String) {
    let out = Command::new("psql")
        .arg(url)
        .args([
            "-X",
            "-At",
            "-v",
            "ON_ERROR_STOP=1",
            "-v",
            "VERBOSITY=verbose",
        ])
        .args(["-c", sql])
        .output()
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parse (named) + Sync on a raw connection.
fn parse_only(r: &mut Raw, name: &str, sql: &str) -> Vec<Msg> {
    let mut b = BytesMut::new();
    frontend::parse(name, sql, std::iter::empty(), &mut b).unwrap();
    frontend::sync(&mut b);
    r.send(&b);
    r.until_ready()
}

/// Raw clients (trust) until `n` are on each of the two shards.
fn clients_on_each_shard(port: u16, db: &str, n: usize) -> Vec<Raw> {
    let mut by_shard: [Vec<Raw>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..200 {
        if by_shard.iter().all(|v| v.len() >= n) {
            return by_shard.into_iter().flatten().collect();
        }
        let r = Raw::trust(port, db);
        let s = r.shard() as usize;
        assert!(s < 2, "shard {s} with cores = 2");
        if by_shard[s].len() < n {
            by_shard[s].push(r);
        }
    }
    panic!("could not get {n} clients on each shard in 200 connections");
}

fn rows(msgs: &[Msg]) -> usize {
    msgs.iter().filter(|m| m.tag == b'D').count()
}

#[test]
fn block_drop_refuses_drop_table_in_simple_and_extended_protocol() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_drop");
    pg.psql(&db, "create table keep_me (id int)").unwrap();
    let proxy = plugin_proxy(
        &pg,
        &db,
        &plugins_section("", &plugin_entry("block-drop", "")),
    );

    for alias in ["tx", "sess"] {
        // psql: a simple Query.
        let (ok, _, err) = psql_verbose(&proxy.url(SUPERUSER, "", alias), "drop table keep_me");
        assert!(!ok, "{alias}: psql DROP TABLE succeeded");
        assert!(
            err.contains(&format!("{BLOCKED}: {DROP_REASON}")),
            "{alias}: psql said {err}"
        );
        assert_eq!(
            psql_ok(&proxy.url(SUPERUSER, "", alias), "select 'dropped tables'").trim(),
            "dropped tables",
            "{alias}: a query mentioning the words is not blocked"
        );

        // The postgres crate: simple query, a named prepare, an unnamed prepare + execute.
        let mut c = connect(&proxy, SUPERUSER, "", alias);
        let e = c.batch_execute("drop table keep_me").unwrap_err();
        assert_eq!(
            db_error(&e),
            (BLOCKED.into(), DROP_REASON.into()),
            "{alias}"
        );
        // The hooks see executions: a named statement is prepared, and each execution of it
        // is refused.
        let st = c.prepare("DROP\n  TABLE keep_me").unwrap();
        for _ in 0..2 {
            let e = c.execute(&st, &[]).unwrap_err();
            assert_eq!(
                db_error(&e),
                (BLOCKED.into(), DROP_REASON.into()),
                "{alias}"
            );
        }
        let e = c.execute("drop table if exists keep_me", &[]).unwrap_err();
        assert_eq!(
            db_error(&e),
            (BLOCKED.into(), DROP_REASON.into()),
            "{alias}"
        );
        // The session goes on, in both protocols.
        assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
        let st = c.prepare("select $1::int + 1").unwrap();
        assert_eq!(c.query_one(&st, &[&41]).unwrap().get::<_, i32>(0), 42);

        // Inside a transaction (extended protocol): the block aborts the transaction.
        c.batch_execute("begin").unwrap();
        c.execute("insert into keep_me values (1)", &[]).unwrap();
        let e = c.execute("drop table keep_me", &[]).unwrap_err();
        assert_eq!(db_error(&e).0, BLOCKED, "{alias}");
        let e = c.query("select 1", &[]).unwrap_err();
        assert_eq!(db_error(&e).0, "25P02", "{alias}: {e}");
        c.batch_execute("rollback").unwrap();
        assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
        drop(c);

        // Raw simple Query inside a transaction: error, then ReadyForQuery 'E'.
        let mut r = Raw::trust(proxy.port(), alias);
        assert_eq!(ready_status(&r.query("begin")), b'T');
        let m = r.query("drop table keep_me");
        assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{alias}: {m:?}");
        assert_eq!(error_message(&m).as_deref(), Some(DROP_REASON));
        assert_eq!(ready_status(&m), b'E', "{alias}: the transaction is failed");
        let m = r.query("select 1");
        assert_eq!(first_error(&m).as_deref(), Some("25P02"), "{alias}: {m:?}");
        let m = r.query("rollback");
        assert_eq!((first_error(&m), ready_status(&m)), (None, b'I'), "{alias}");

        // Raw extended inside a transaction: Parse/Bind/Execute/Sync of DROP.
        assert_eq!(ready_status(&r.query("begin")), b'T');
        let m = r.extended("", Some("drop table keep_me"), &[]);
        assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{alias}: {m:?}");
        assert_eq!(ready_status(&m), b'E', "{alias}: the transaction is failed");
        let m = r.query("select 1");
        assert_eq!(first_error(&m).as_deref(), Some("25P02"), "{alias}: {m:?}");
        assert_eq!(ready_status(&r.query("rollback")), b'I');

        // A statement prepared in one Sync and executed in the next (Bind/Execute/Sync) is
        // refused at each execution: nothing runs.
        let m = parse_only(&mut r, "victim", "drop table keep_me");
        assert_eq!(first_error(&m), None, "{alias}: {m:?}");
        assert_eq!(ready_status(&m), b'I');
        for _ in 0..2 {
            let m = r.extended("victim", None, &[]);
            assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{alias}: {m:?}");
            assert!(
                !m.iter().any(|x| x.tag == b'C'),
                "{alias}: something ran: {m:?}"
            );
            assert_eq!(ready_status(&m), b'I');
        }
        // Same inside a transaction: refused, and the transaction is failed.
        assert_eq!(ready_status(&r.query("begin")), b'T');
        let m = r.extended("victim", None, &[]);
        assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{alias}: {m:?}");
        assert_eq!(ready_status(&m), b'E', "{alias}: {m:?}");
        assert_eq!(ready_status(&r.query("rollback")), b'I');
        // And the connection still works in both protocols.
        assert_eq!(first_value(&r.query("select 7")).as_deref(), Some("7"));
        let m = r.extended("ok", Some("select $1::int * 2"), &["21"]);
        assert_eq!(first_value(&m).as_deref(), Some("42"), "{alias}: {m:?}");
        r.terminate();

        assert!(
            table_exists(&pg, &db, "keep_me"),
            "{alias}: the table was dropped"
        );
    }
    assert_eq!(
        direct(&pg, &db)
            .query_one("select count(*) from keep_me", &[])
            .unwrap()
            .get::<_, i64>(0),
        0,
        "the rolled-back inserts are gone"
    );
}

#[test]
fn rewrite_plugin_caps_unbounded_selects() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_rewrite");
    let proxy = plugin_proxy(&pg, &db, &plugins_section("", &plugin_entry("rewrite", "")));
    for alias in ["tx", "sess"] {
        // psql (simple Query).
        let url = proxy.url(SUPERUSER, "", alias);
        let out = psql_ok(&url, "select g from generate_series(1, 5000) g");
        assert_eq!(out.lines().count(), 1000, "{alias}: rewritten by psql");
        let out = psql_ok(&url, "select g from generate_series(1, 5000) g limit 3000");
        assert_eq!(
            out.lines().count(),
            3000,
            "{alias}: an explicit LIMIT is kept"
        );

        // The postgres crate: simple and extended.
        let mut c = connect(&proxy, SUPERUSER, "", alias);
        let q = "select g from generate_series(1, 5000) g";
        let n = c
            .simple_query(q)
            .unwrap()
            .iter()
            .filter(|m| matches!(m, postgres::SimpleQueryMessage::Row(_)))
            .count();
        assert_eq!(n, 1000, "{alias}: simple");
        assert_eq!(c.query(q, &[]).unwrap().len(), 1000, "{alias}: extended");
        let st = c
            .prepare("select g from generate_series(1, $1::int) g")
            .unwrap();
        assert_eq!(c.query(&st, &[&5000]).unwrap().len(), 1000, "{alias}");
        assert_eq!(c.query(&st, &[&10]).unwrap().len(), 10, "{alias}");
        let st = c
            .prepare("select g from generate_series(1, $1::int) g limit 2500")
            .unwrap();
        assert_eq!(c.query(&st, &[&5000]).unwrap().len(), 2500, "{alias}");
        // Writes are not touched.
        c.batch_execute("create temp table w as select g from generate_series(1, 5000) g")
            .unwrap();
        assert_eq!(
            c.query_one("select count(*) from w", &[])
                .unwrap()
                .get::<_, i64>(0),
            5000,
            "{alias}: count(*) has one row: the LIMIT does not change it"
        );
        if alias == "tx" {
            c.batch_execute("drop table w").unwrap();
        }

        // Raw Parse/Bind/Execute.
        let mut r = Raw::trust(proxy.port(), alias);
        let m = r.extended("", Some("select g from generate_series(1, 5000) g"), &[]);
        assert_eq!(rows(&m), 1000, "{alias}: raw extended");
        let m = r.query("select g from generate_series(1, 5000) g");
        assert_eq!(rows(&m), 1000, "{alias}: raw simple");
        r.terminate();
    }
}

const PORT: &str = "select current_setting('port')";
const TO_SECOND: &str = "/* route: node=second */";

/// The first column of the first row of a simple query.
fn simple_value(c: &mut postgres::Client, sql: &str) -> String {
    c.simple_query(sql)
        .unwrap()
        .iter()
        .find_map(|m| match m {
            postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// A proxy with the `route` plugin, two nodes — `pg` (the shared cluster, serving the database
/// `tx`) and `second` (a cluster of its own, with a database of the same name) — and a table
/// `audit_log` on `pg`.
fn route_proxy() -> (Proxy, std::sync::Arc<PgCluster>, PgCluster, String) {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_route");
    pg.psql(
        &db,
        "create table audit_log (id int); insert into audit_log values (1)",
    )
    .unwrap();
    let second = own_pg(PgOptions::default());
    second
        .psql("postgres", &format!("create database {db}"))
        .unwrap();
    let dbs = format!(
        "[[nodes]]\nname = \"second\"\nhost = \"127.0.0.1\"\nport = {}\n\n",
        second.port
    ) + &db_section("tx", &db, "transaction", 4, "");
    let cfg = config(&pg, TRUST, "", &dbs) + &plugins_section("", &plugin_entry("route", ""));
    (start_listening(&cfg), pg, second, db)
}

#[test]
fn route_plugin_blocks_picks_nodes_and_sees_session_attributes() {
    let (proxy, pg, second, _db) = route_proxy();
    let mut c = connect(&proxy, SUPERUSER, "", "tx");

    // Blocks, with and without a reason, in both protocols.
    let e = c
        .batch_execute("/* route: block=nope */ select 1")
        .unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), "nope".into()));
    let e = c.query("/* route: block */ select 1", &[]).unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), "blocked by plugin".into()));
    let (ok, _, err) = psql_verbose(
        &proxy.url(SUPERUSER, "", "tx"),
        "/* route: block=nope */ select 1",
    );
    assert!(!ok && err.contains("42000: nope"), "psql: {err}");

    // node=second runs on the second cluster; unannotated queries on the database's own node.
    let own = pg.port.to_string();
    let other = second.port.to_string();
    let mut r = Raw::trust(proxy.port(), "tx");
    for _ in 0..3 {
        // Simple Query (postgres crate and raw).
        assert_eq!(simple_value(&mut c, PORT), own);
        assert_eq!(simple_value(&mut c, &format!("{TO_SECOND} {PORT}")), other);
        assert_eq!(first_value(&r.query(PORT)), Some(own.clone()));
        let m = r.query(&format!("{TO_SECOND} {PORT}"));
        assert_eq!(first_value(&m), Some(other.clone()), "{m:?}");
        // Extended: unnamed Parse/Bind/Execute/Sync in one go.
        let m = r.extended("", Some(&format!("{TO_SECOND} {PORT}")), &[]);
        assert_eq!(first_value(&m), Some(other.clone()), "{m:?}");
        let m = r.extended("", Some(PORT), &[]);
        assert_eq!(first_value(&m), Some(own.clone()), "{m:?}");
    }
    // primary / replica have nowhere else to go: the database's own node.
    for d in ["/* route: replica */", "/* route: primary */"] {
        assert_eq!(simple_value(&mut c, &format!("{d} {PORT}")), own, "{d}");
    }
    // Inside a transaction the attached server keeps the transaction.
    c.batch_execute("begin").unwrap();
    assert_eq!(simple_value(&mut c, PORT), own);
    assert_eq!(
        simple_value(&mut c, &format!("{TO_SECOND} {PORT}")),
        own,
        "a transaction never changes servers half-way"
    );
    c.batch_execute("commit").unwrap();
    // A transaction that starts with the annotation runs on the second node to its end.
    let m = r.query(&format!("{TO_SECOND} begin"));
    assert_eq!(ready_status(&m), b'T', "{m:?}");
    assert_eq!(first_value(&r.query(PORT)), Some(other.clone()));
    assert_eq!(ready_status(&r.query("commit")), b'I');
    assert_eq!(first_value(&r.query(PORT)), Some(own.clone()));

    // An unknown node is refused, naming it.
    let e = c
        .query("/* route: node=ghost */ select 1", &[])
        .unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, BLOCKED, "{msg}");
    assert!(
        msg.contains("'ghost'") && msg.contains("not a configured node") && msg.contains("route"),
        "{msg}"
    );
    let e = c
        .batch_execute("/* route: node=ghost */ select 1")
        .unwrap_err();
    assert!(db_error(&e).1.contains("ghost"), "{e}");
    assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);

    // Session attributes reach the hooks: helios.region = eu forbids audit_log.
    let count = "select count(*) from audit_log";
    assert_eq!(c.query_one(count, &[]).unwrap().get::<_, i64>(0), 1);
    c.batch_execute("SET helios.region = 'eu'").unwrap();
    let e = c.query_one(count, &[]).unwrap_err();
    assert_eq!(
        db_error(&e),
        (
            BLOCKED.into(),
            "cross-region read of audit_log forbidden".into()
        )
    );
    let e = c.batch_execute(count).unwrap_err();
    assert_eq!(db_error(&e).0, BLOCKED);
    assert_eq!(c.query_one("select 2", &[]).unwrap().get::<_, i32>(0), 2);
    // Other sessions are not affected.
    let mut c2 = connect(&proxy, SUPERUSER, "", "tx");
    assert_eq!(c2.query_one(count, &[]).unwrap().get::<_, i64>(0), 1);
    // Changing the attribute lifts it.
    c.batch_execute("set helios.region = 'us'").unwrap();
    assert_eq!(c.query_one(count, &[]).unwrap().get::<_, i64>(0), 1);
}

/// Regression (engine bug found by this suite; fixed in 6b9d176): a route plugin's node chosen
/// at a Parse that takes no server (transaction mode, named statement, outside a transaction:
/// the proxy answers the Parse) stayed in `Session::route_node` and sent the NEXT statement —
/// here an unannotated simple query — to that node.
#[test]
fn route_chosen_at_an_unattached_parse_does_not_leak_to_the_next_statement() {
    let (proxy, pg, _second, _db) = route_proxy();
    let own = pg.port.to_string();
    let mut r = Raw::trust(proxy.port(), "tx");
    let m = parse_only(&mut r, "routed", &format!("{TO_SECOND} {PORT}"));
    assert_eq!(first_error(&m), None, "{m:?}");
    let m = r.query(PORT);
    assert_eq!(
        first_value(&m),
        Some(own),
        "an unannotated query after Parse of a routed statement ran on the routed node"
    );
}

/// Regression (engine bug found by this suite; fixed in 6b9d176): a statement prepared with a
/// `node` route and executed later (the postgres crate's `query`: Parse/Describe/Sync, then
/// Bind/Execute/Sync — JDBC, asyncpg and pgbench -M prepared do the same) ran on the database's
/// own node: the route was decided at Parse only and the later Bind checked out the default pool.
#[test]
fn route_applies_to_a_prepared_statement_executed_later() {
    let (proxy, _pg, second, _db) = route_proxy();
    let other = second.port.to_string();
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    let v: String = c
        .query_one(&format!("{TO_SECOND} {PORT}"), &[])
        .unwrap()
        .get(0);
    assert_eq!(
        v, other,
        "a routed prepared statement ran on the default node"
    );
}

#[test]
fn on_error_fail_closed_blocks_and_fail_open_runs() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_onerror");

    // fail_closed: a trapping plugin and a looping one refuse the query, naming the plugin.
    let closed = plugins_section(
        "timeout_ms = 20",
        &(plugin_entry("faulty", "on_error = \"fail_closed\"")
            + &plugin_entry("spin", "on_error = \"fail_closed\"")),
    );
    let proxy = plugin_proxy(&pg, &db, &closed);
    let mut c = try_connect(&proxy, SUPERUSER, "", "tx").unwrap_or_else(|e| panic!("{e:?}"));
    let e = c.query("select 'panic'", &[]).unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, BLOCKED, "{msg}");
    assert!(
        msg.contains("'faulty'") && msg.contains("fail_closed"),
        "{msg}"
    );
    let e = c.batch_execute("spin").unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, BLOCKED, "{msg}");
    assert!(
        msg.contains("'spin'") && msg.contains("timed out") && msg.contains("fail_closed"),
        "{msg}"
    );
    // authenticate fails closed too: a login whose application_name makes faulty panic.
    let e = postgres::Client::connect(
        &(proxy.conn_str(SUPERUSER, "", "tx") + " application_name=panic"),
        postgres::NoTls,
    )
    .err()
    .expect("a login faulty panics on is refused");
    let (code, msg) = db_error(&e);
    assert_eq!(code, "28000", "{msg}");
    assert!(msg.contains("'faulty'"), "{msg}");
    // Every shard keeps serving, for new and old connections.
    let mut raws = clients_on_each_shard(proxy.port(), "tx", 2);
    for r in &mut raws {
        let m = r.query("select 'panic'");
        assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{m:?}");
        let m = r.query("spin");
        assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{m:?}");
        assert_eq!(
            first_value(&r.query("select 'calm'")).as_deref(),
            Some("calm")
        );
        let m = r.extended("", Some("select $1::text"), &["fine"]);
        assert_eq!(first_value(&m).as_deref(), Some("fine"));
    }
    assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    drop(raws);
    drop(c);
    drop(proxy);

    // fail_open: the failing plugins are skipped and the queries run.
    let open = plugins_section(
        "timeout_ms = 20",
        &(plugin_entry("faulty", "on_error = \"fail_open\"")
            + &plugin_entry("spin", "on_error = \"fail_open\"")),
    );
    let proxy = plugin_proxy(&pg, &db, &open);
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    let v: String = c.query_one("select 'panic'", &[]).unwrap().get(0);
    assert_eq!(v, "panic");
    // "spin" reaches PostgreSQL, which finds it is not SQL.
    let e = c.batch_execute("spin").unwrap_err();
    assert_eq!(db_error(&e).0, "42601", "{e}");
    let mut c2 = postgres::Client::connect(
        &(proxy.conn_str(SUPERUSER, "", "tx") + " application_name=panic"),
        postgres::NoTls,
    )
    .expect("fail_open: the failing authenticate defers");
    assert_eq!(c2.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    let mut raws = clients_on_each_shard(proxy.port(), "sess", 2);
    for r in &mut raws {
        let m = r.query("select 'panic'");
        assert_eq!(first_value(&m).as_deref(), Some("panic"), "{m:?}");
        let m = r.extended("", Some("select $1::text || ' panic'"), &["no"]);
        assert_eq!(first_value(&m).as_deref(), Some("no panic"), "{m:?}");
    }
    assert!(
        proxy.log().contains("faulty"),
        "the failures are logged:\n{}",
        proxy.log()
    );
}

#[test]
fn sighup_swaps_plugins_under_an_open_connection() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_reload");
    pg.psql(&db, "create table scratch1 (id int); create table scratch2 (id int); create table scratch3 (id int)")
        .unwrap();
    // Plugins on, none loaded.
    let mut proxy = plugin_proxy(&pg, &db, &plugins_section("", ""));
    let mut tx = connect(&proxy, SUPERUSER, "", "tx");
    let mut sess = Raw::trust(proxy.port(), "sess");
    tx.batch_execute("drop table scratch1").unwrap();
    assert!(!table_exists(&pg, &db, "scratch1"));

    proxy
        .write_config(&plugin_config(
            &pg,
            &db,
            &plugins_section("", &plugin_entry("block-drop", "")),
        ))
        .unwrap();
    proxy.reload().expect("reload");
    // The same connections now get 42000 for DROP TABLE.
    let e = tx.batch_execute("drop table scratch2").unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), DROP_REASON.into()));
    let e = tx.execute("drop table scratch2", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, BLOCKED);
    let m = sess.query("drop table scratch2");
    assert_eq!(first_error(&m).as_deref(), Some(BLOCKED), "{m:?}");
    assert!(table_exists(&pg, &db, "scratch2"));
    assert_eq!(tx.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);

    // Swap block-drop for rewrite: DROP runs again, unbounded SELECTs are capped.
    proxy
        .write_config(&plugin_config(
            &pg,
            &db,
            &plugins_section("", &plugin_entry("rewrite", "")),
        ))
        .unwrap();
    proxy.reload().expect("reload");
    tx.batch_execute("drop table scratch2").unwrap();
    assert!(!table_exists(&pg, &db, "scratch2"));
    assert_eq!(
        tx.query("select g from generate_series(1, 5000) g", &[])
            .unwrap()
            .len(),
        1000
    );
    assert_eq!(
        rows(&sess.query("select g from generate_series(1, 5000) g")),
        1000
    );

    // And none again.
    proxy
        .write_config(&plugin_config(&pg, &db, &plugins_section("", "")))
        .unwrap();
    proxy.reload().expect("reload");
    assert_eq!(
        tx.query("select g from generate_series(1, 5000) g", &[])
            .unwrap()
            .len(),
        5000
    );
    let m = sess.query("drop table scratch3");
    assert_eq!(first_error(&m), None, "{m:?}");
    assert!(!table_exists(&pg, &db, "scratch3"));
    sess.terminate();
}

/// Regression (engine bug found by this suite; fixed in 6b9d176): a proxy started with plugins
/// off (`[plugins] enabled = false`, the default) never loaded any: a SIGHUP that turned them on
/// reported "configuration reloaded", logged no warning, and DROP TABLE still ran on open and
/// new connections (no `PluginRuntime` existed to reload, and sessions opened without plugins
/// got no `Hooks`).
#[test]
fn sighup_turns_plugins_on_when_started_disabled() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_reload_off");
    pg.psql(
        &db,
        "create table scratch1 (id int); create table scratch2 (id int)",
    )
    .unwrap();
    let mut proxy = plugin_proxy(&pg, &db, "\n[plugins]\nenabled = false\n");
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    c.batch_execute("drop table scratch1").unwrap();
    proxy
        .write_config(&plugin_config(
            &pg,
            &db,
            &plugins_section("", &plugin_entry("block-drop", "")),
        ))
        .unwrap();
    proxy.reload().expect("reload");
    let fresh = connect(&proxy, SUPERUSER, "", "tx").batch_execute("drop table scratch2");
    let open = c.batch_execute("drop table scratch3");
    assert!(
        fresh.is_err() && open.is_err(),
        "DROP TABLE ran after a reload enabled block-drop (new connection: {fresh:?}, open \
         connection: {open:?}); log:\n{}",
        proxy.log()
    );
}

/// Runs a shell script in `dir`, panicking with its output if it fails.
fn sh(dir: &std::path::Path, script: &str) {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}\nfailed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `heliosproxy --check` on `config`: (exit success, stdout, stderr).
fn check(config: &str) -> (bool, String, String) {
    let dir = std::env::temp_dir().join(format!(
        "helios-check-{}-{}",
        std::process::id(),
        config.len()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, config).unwrap();
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .arg("--check")
        .env("HELIOS_TEST_PORT", "1")
        .env("HELIOS_TEST_ADMIN_PORT", "2")
        .output()
        .expect("run heliosproxy --check");
    let _ = std::fs::remove_dir_all(&dir);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The report, as a new user meets it: with a trust root, unsigned and wrongly signed
/// plugins used to be logged and left out while the proxy ran on and DROP TABLE went through.
/// Now they stop the start (and `--check`) unless marked `optional`, and the reference's
/// openssl flow (a signature over the wasm bytes, packed into an artefact) loads and blocks.
#[test]
fn trust_root_fails_closed_and_loads_what_the_documented_openssl_flow_signs() {
    if Command::new("openssl").arg("version").output().is_err() {
        panic!("openssl is needed to sign the test plugin (scripts/test.sh installs it)");
    }
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_signed");
    pg.psql(
        &db,
        "create table victim (id int); create table keep_me (id int)",
    )
    .unwrap();
    let dir = std::env::temp_dir().join(format!("helios-plugin-sign-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // block-drop is written with #[hook(PreQuery)]. Keys and signatures exactly as the
    // reference and docs/plugin-abi.md show; `forged/` is signed by a key the trust root does
    // not hold.
    sh(
        &dir,
        &format!(
            "mkdir -p keys unsigned forged
             openssl genpkey -algorithm Ed25519 -out signing.pem
             openssl genpkey -algorithm Ed25519 -out other.pem
             openssl pkey -in signing.pem -pubout -outform DER | tail -c 32 | base64 > keys/official.pub
             cp '{w}' plugin.wasm
             for d in unsigned forged; do cp '{w}' $d/block-drop.wasm; done
             openssl pkeyutl -sign -inkey signing.pem -rawin -in plugin.wasm | base64 -w 0 > plugin.sig
             openssl pkeyutl -sign -inkey other.pem -rawin -in forged/block-drop.wasm | base64 -w0 > forged/block-drop.sig",
            w = plugin_wasm("block-drop").display()
        ),
    );
    // `helios-plugin pack --wasm plugin.wasm --sig plugin.sig --name X --version 1.0 --hooks
    // pre_query --out x.tar.gz`, through the CLI's own code (plugin-host's tests run the CLI).
    let wasm = std::fs::read(dir.join("plugin.wasm")).unwrap();
    let packed = helios_plugin_host::artefact::pack(&helios_plugin_host::artefact::PackRequest {
        wasm: &wasm,
        name: "X",
        version: "1.0",
        hooks: vec!["pre_query".into()],
        description: None,
        license: None,
        signature: Some(std::fs::read(dir.join("plugin.sig")).unwrap()),
        manifest_signature: None,
        signed_by: None,
    })
    .unwrap();
    std::fs::write(dir.join("x.tar.gz"), packed).unwrap();
    let entry = |name: &str, source: &str, extra: &str| {
        format!(
            "[[plugins.plugin]]\nname = \"{name}\"\nsource = \"{}\"\n{extra}\n\n",
            dir.join(source).display()
        )
    };
    let trust = format!("trust_root = \"{}\"", dir.join("keys").display());

    // Unsigned and wrongly signed, required (the default): the proxy does not start, and says
    // which plugin and why; --check says the same and exits 1.
    let bad = entry("unsigned-drop", "unsigned/block-drop.wasm", "")
        + &entry("forged-drop", "forged/block-drop.wasm", "");
    let cfg = plugin_config(&pg, &db, &plugins_section(&trust, &bad));
    let err = match Proxy::start(std::path::Path::new(BIN), &cfg, None) {
        Ok(_) => panic!("the proxy started without its required plugins"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        err.contains("2 required plugins failed to load")
            && err.contains("plugin unsigned-drop")
            && err.contains("no signature")
            && err.contains("plugin forged-drop")
            && err.contains("does not verify against any key"),
        "{err}"
    );
    let (ok, _, stderr) = check(&cfg);
    assert!(!ok, "--check passed a config whose plugins do not load");
    assert!(
        stderr.contains("plugin unsigned-drop") && stderr.contains("no signature"),
        "{stderr}"
    );

    // Marked optional: the proxy starts without them, logs the refusal, and DROP runs.
    let optional = entry(
        "unsigned-drop",
        "unsigned/block-drop.wasm",
        "optional = true",
    ) + &entry("forged-drop", "forged/block-drop.wasm", "optional = true");
    let proxy = plugin_proxy(&pg, &db, &plugins_section(&trust, &optional));
    let log = proxy.log();
    for f in ["unsigned/block-drop.wasm", "forged/block-drop.wasm"] {
        assert!(
            log.lines()
                .any(|l| l.contains("refused") && l.contains(f) && l.contains("optional")),
            "no refusal of {f} in the log:\n{log}"
        );
    }
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    c.batch_execute("drop table victim").unwrap();
    assert!(!table_exists(&pg, &db, "victim"));
    drop(c);
    drop(proxy);

    // Signed as the reference says: --check passes, the proxy loads it (the log names the
    // signer) and it blocks.
    let good = plugins_section(&trust, &entry("X", "x.tar.gz", ""));
    let (ok, stdout, stderr) = check(&plugin_config(&pg, &db, &good));
    assert!(ok, "--check failed: {stdout}{stderr}");
    assert!(
        stdout.contains("plugin X OK (hooks pre_query") && stdout.contains("signed by official"),
        "{stdout}"
    );
    let proxy = plugin_proxy(&pg, &db, &good);
    let log = proxy.log();
    assert!(
        log.contains("signed by official"),
        "the signed plugin's load is not logged with its signer:\n{log}"
    );
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    let e = c.batch_execute("drop table keep_me").unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), DROP_REASON.into()));
    assert!(table_exists(&pg, &db, "keep_me"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// A SIGHUP whose configuration names a required plugin that does not load is refused as a
/// whole: the running plugins and the rest of the running configuration stay (a new database
/// alias in the same file does not appear), and the log says so loudly. Marked optional, the
/// same plugin is left out and the rest of the reload applies.
#[test]
fn sighup_with_a_failing_required_plugin_keeps_the_running_configuration() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_reload_closed");
    pg.psql(&db, "create table keep_me (id int)").unwrap();
    let dbs =
        db_section("tx", &db, "transaction", 4, "") + &db_section("sess", &db, "session", 4, "");
    let guard = plugin_entry("block-drop", "");
    let mut proxy = start_listening(&(config(&pg, TRUST, "", &dbs) + &plugins_section("", &guard)));
    let mut c = connect(&proxy, SUPERUSER, "", "tx");

    let missing = |extra: &str| {
        format!(
            "[[plugins.plugin]]\nname = \"missing\"\nsource = \"/nonexistent/helios/missing.wasm\"\n{extra}\n"
        )
    };
    let with_tx2 = dbs.clone() + &db_section("tx2", &db, "transaction", 4, "");
    proxy
        .write_config(
            &(config(&pg, TRUST, "", &with_tx2)
                + &plugins_section("", &(guard.clone() + &missing("")))),
        )
        .unwrap();
    proxy.signal(libc::SIGHUP);
    let line = poll(
        std::time::Duration::from_secs(10),
        "the refused reload in the log",
        || {
            proxy
                .log()
                .lines()
                .find(|l| l.contains("reload REFUSED"))
                .map(str::to_owned)
        },
    );
    assert!(
        line.contains("keeping the running configuration")
            && line.contains("plugin missing")
            && line.contains("missing.wasm"),
        "{line}"
    );
    assert!(
        postgres::Client::connect(&proxy.conn_str(SUPERUSER, "", "tx2"), postgres::NoTls).is_err(),
        "the refused reload's new database alias appeared"
    );
    let e = c.batch_execute("drop table keep_me").unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), DROP_REASON.into()));

    // optional = true: the reload applies without it.
    proxy
        .write_config(
            &(config(&pg, TRUST, "", &with_tx2)
                + &plugins_section("", &(guard + &missing("optional = true")))),
        )
        .unwrap();
    proxy.reload().expect("the reload applies");
    let mut c2 = connect(&proxy, SUPERUSER, "", "tx2");
    let e = c2.batch_execute("drop table keep_me").unwrap_err();
    assert_eq!(db_error(&e), (BLOCKED.into(), DROP_REASON.into()));
    assert!(table_exists(&pg, &db, "keep_me"));
    assert!(
        proxy.log().lines().any(|l| l.contains("plugin refused")
            && l.contains("missing.wasm")
            && l.contains("optional = true")),
        "{}",
        proxy.log()
    );
}

/// A plugin built for wasm32-wasip1 with std (clocks, HashMap) runs through the proxy, and a
/// file it tries to open is an error, not access.
#[test]
fn a_wasip1_plugin_runs_through_the_proxy() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "plug_wasi");
    let proxy = plugin_proxy(
        &pg,
        &db,
        &plugins_section("", &plugin_entry("wasi-std", "")),
    );
    let mut c = connect(&proxy, SUPERUSER, "", "tx");
    assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
    let e = c.batch_execute("wasi:time").unwrap_err();
    let (code, msg) = db_error(&e);
    assert_eq!(code, BLOCKED);
    assert!(
        msg.starts_with("time: unix=") && msg.ends_with("monotonic_ok=true"),
        "{msg}"
    );
    let e = c.batch_execute("wasi:open /etc/passwd").unwrap_err();
    let (_, msg) = db_error(&e);
    assert!(msg.starts_with("open /etc/passwd: failed: "), "{msg}");
    // Extended protocol too.
    let e = c.execute("select 1 -- wasi:env", &[]).unwrap_err();
    assert!(db_error(&e).1.starts_with("env: vars=0 args=0"), "{e}");
}

/// The plugin binaries exist where CI puts them (a clearer failure than a missing-file panic
/// deep inside a proxy start).
#[test]
fn guest_plugins_are_built() {
    for name in [
        "block-drop",
        "rewrite",
        "route",
        "faulty",
        "spin",
        "wasi-std",
    ] {
        let p: PathBuf = plugin_wasm(name);
        assert!(std::fs::metadata(&p).unwrap().len() > 0, "{}", p.display());
    }
}
