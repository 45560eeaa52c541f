//! Transaction pooling never lets one client's session state reach another: each case runs in
//! one psql session through a proxy with a single server connection, then a second psql session
//! checks — on that same server connection (same backend pid) — that it sees the defaults a
//! direct connection sees. Under each `unsafe_statements` policy.

mod common;

use std::process::Command;

use common::*;
use helios_testkit::SUPERUSER;

/// What a new session observes of session state (everything the cases below could leave).
const OBSERVE: &str = "select current_setting('statement_timeout'), current_setting('work_mem'), \
     current_setting('search_path'), current_setting('default_transaction_isolation'), \
     current_user, session_user, \
     (select count(*) from pg_tables where tablename = 't1'), \
     (select count(*) from pg_prepared_statements where name = 'p1'), \
     (select count(*) from pg_cursors), \
     (select count(*) from pg_locks where locktype = 'advisory')";

/// One psql session running each command in turn (`-c` … `-c` …): one client connection.
fn psql_session(url: &str, commands: &[&str]) -> std::process::Output {
    let mut cmd = Command::new("psql");
    cmd.arg(url).args(["-X", "-At", "-v", "ON_ERROR_STOP=1"]);
    for c in commands {
        cmd.args(["-c", c]);
    }
    cmd.output().expect("run psql")
}

fn ok_session(url: &str, commands: &[&str]) -> String {
    let out = psql_session(url, commands);
    assert!(
        out.status.success(),
        "psql {commands:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// (what the case runs in the first session, a name for messages)
const CASES: &[(&str, &str)] = &[
    (
        "SET statement_timeout = '1234ms'; SELECT 1",
        "SET in a multi-statement query",
    ),
    (
        "DO $$BEGIN PERFORM set_config('work_mem','7MB',false); END$$",
        "set_config in a DO block",
    ),
    ("CREATE TEMP TABLE t1(x int)", "temporary table"),
    (
        "SELECT set_config('work_mem', '7MB', false)",
        "set_config with literals",
    ),
    ("SET search_path TO pg_catalog, public", "SET"),
    (
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET SESSION CHARACTERISTICS",
    ),
    ("SET ROLE helios_other", "SET ROLE"),
    (
        "SET SESSION AUTHORIZATION helios_other",
        "SET SESSION AUTHORIZATION",
    ),
    ("PREPARE p1 AS SELECT 1", "SQL PREPARE"),
    ("SELECT pg_advisory_lock(4711)", "session advisory lock"),
    (
        "BEGIN; DECLARE c1 CURSOR WITH HOLD FOR SELECT 1; COMMIT",
        "WITH HOLD cursor",
    ),
    ("CALL helios_proc()", "CALL"),
];

fn setup(pg: &helios_testkit::PgCluster, db: &str) {
    pg.psql(
        db,
        // Roles are cluster-wide and the tests run in parallel: two may create it at once.
        "do $$begin create role helios_other; \
         exception when duplicate_object or unique_violation then null; end$$; \
         create procedure helios_proc() language plpgsql as \
         $$begin perform set_config('statement_timeout', '4321ms', false); end$$",
    )
    .unwrap();
}

fn one_connection_proxy(
    pg: &helios_testkit::PgCluster,
    db: &str,
    policy: &str,
) -> helios_testkit::proxy::Proxy {
    let dbs = db_section(
        "tx",
        db,
        "transaction",
        1,
        &format!("unsafe_statements = \"{policy}\""),
    );
    // One shard: a pool of exactly one server connection, so the next client gets the same one.
    let cfg = config(pg, TRUST, "", &dbs).replace("cores = 2", "cores = 1");
    start_proxy(&cfg, None)
}

#[test]
fn the_next_client_on_the_same_server_connection_sees_defaults() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "state");
    setup(&pg, &db);
    let defaults = ok_session(&pg.url(&db), &[OBSERVE]);
    for policy in ["pin", "reset"] {
        let proxy = one_connection_proxy(&pg, &db, policy);
        let url = proxy.url(SUPERUSER, PW, "tx");
        for (sql, what) in CASES {
            let first = ok_session(&url, &[sql, "select pg_backend_pid()"]);
            let first_pid = first.lines().last().unwrap().to_string();
            let second = ok_session(&url, &["select pg_backend_pid()", OBSERVE]);
            let mut lines = second.lines();
            assert_eq!(
                lines.next().unwrap(),
                first_pid,
                "{policy}/{what}: the second client must get the same server connection"
            );
            assert_eq!(
                lines.collect::<Vec<_>>().join("\n"),
                defaults.trim_end(),
                "{policy}/{what}: {sql:?} leaked to the next client"
            );
        }
    }
}

#[test]
fn a_pinned_client_keeps_its_state_and_a_reset_one_loses_only_the_untracked_part() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pin");
    setup(&pg, &db);
    // Pin: the temporary table lives on across the client's transactions.
    let proxy = one_connection_proxy(&pg, &db, "pin");
    let url = proxy.url(SUPERUSER, PW, "tx");
    let out = ok_session(
        &url,
        &[
            "CREATE TEMP TABLE t1(x int)",
            "INSERT INTO t1 VALUES (1), (2)",
            "SELECT count(*) FROM t1",
        ],
    );
    assert_eq!(out.lines().last(), Some("2"));
    drop(proxy);
    // Reset: the table is gone at the end of its transaction; tracked settings stay.
    let proxy = one_connection_proxy(&pg, &db, "reset");
    let url = proxy.url(SUPERUSER, PW, "tx");
    let out = psql_session(
        &url,
        &[
            "SET work_mem = '9MB'",
            "CREATE TEMP TABLE t1(x int)",
            "SHOW work_mem",
            "SELECT count(*) FROM t1",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("9MB"),
        "tracked setting re-established: {stdout}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("t1"),
        "the temporary table was discarded with the reset"
    );
}

#[test]
fn refuse_names_the_statement_class_with_0a000() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "refuse_cls");
    setup(&pg, &db);
    let proxy = one_connection_proxy(&pg, &db, "refuse");
    let mut c = connect(&proxy, SUPERUSER, PW, "tx");
    for (sql, class) in [
        ("CREATE TEMP TABLE t1(x int)", "CREATE TEMP"),
        ("DO $$BEGIN END$$", "DO block"),
        ("SET ROLE helios_other", "SET ROLE"),
        ("PREPARE p1 AS SELECT 1", "PREPARE"),
    ] {
        for extended in [false, true] {
            let e = if extended {
                c.query(sql, &[]).map(|_| ()).unwrap_err()
            } else {
                c.batch_execute(sql).unwrap_err()
            };
            assert_eq!(sqlstate(&e), Some("0A000"), "{sql}: {e}");
            let msg = e.as_db_error().unwrap().message().to_string();
            assert!(msg.contains(class), "{sql}: {msg}");
            assert_eq!(c.query_one("select 1", &[]).unwrap().get::<_, i32>(0), 1);
        }
    }
    // Tracked statements are not refused.
    c.batch_execute("SET work_mem = '5MB'; SELECT set_config('work_mem', '6MB', false)")
        .unwrap();
}
