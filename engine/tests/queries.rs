//! Queries through the proxy, in session and transaction pooling, compared with a direct
//! connection: results, types, errors, COPY, cancel, prepared statements, session state.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::SUPERUSER;
use postgres::types::{FromSql, Type};
use postgres::{NoTls, SimpleQueryMessage};

const MODES: [&str; 2] = ["sess", "tx"];

/// The rows of a simple query as text, NULL as `None`.
fn simple_rows(c: &mut postgres::Client, sql: &str) -> Vec<Vec<Option<String>>> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => {
                Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
            }
            _ => None,
        })
        .collect()
}

/// A column exactly as it came over the wire (binary format), whatever its type.
#[derive(Debug, PartialEq)]
struct Wire(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Wire {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Wire(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

fn wire_row(row: &postgres::Row) -> Vec<Wire> {
    (0..row.len()).map(|i| row.get::<_, Wire>(i)).collect()
}

#[test]
fn results_match_direct_with_rust_client_and_psql() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "results");
    pg.psql(
        &db,
        "create table t as select x, md5(x::text) as s, x % 7 = 0 as b from generate_series(1, 1000) x",
    )
    .unwrap();
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let md5_series =
        "select md5(string_agg(x::text, ',' order by x)) from generate_series(1, 1000) x";
    let md5_table = "select md5(string_agg(x || ':' || s || ':' || b, ',' order by x)) from t";
    let rows_sql = "select x, s, b from t order by x";

    let mut d = direct(&pg, &db);
    let want_series: String = d.query_one(md5_series, &[]).unwrap().get(0);
    let want_table: String = d.query_one(md5_table, &[]).unwrap().get(0);
    let want_rows: Vec<Vec<Wire>> = d
        .query(rows_sql, &[])
        .unwrap()
        .iter()
        .map(wire_row)
        .collect();
    let want_text = simple_rows(&mut d, rows_sql);
    let want_psql = psql_ok(&pg.url(&db), rows_sql);
    assert_eq!(want_rows.len(), 1000);

    for alias in MODES {
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        let got: String = c.query_one(md5_series, &[]).unwrap().get(0);
        assert_eq!(got, want_series, "{alias}: md5 of generate_series");
        let got: String = c.query_one(md5_table, &[]).unwrap().get(0);
        assert_eq!(got, want_table, "{alias}: md5 of the table");
        let got: Vec<Vec<Wire>> = c
            .query(rows_sql, &[])
            .unwrap()
            .iter()
            .map(wire_row)
            .collect();
        assert!(
            got == want_rows,
            "{alias}: 1,000 rows (binary) differ from direct"
        );
        assert!(
            simple_rows(&mut c, rows_sql) == want_text,
            "{alias}: 1,000 rows (text) differ"
        );
        let url = proxy.url(SUPERUSER, PW, alias);
        assert_eq!(
            psql_ok(&url, md5_series).trim(),
            want_series,
            "{alias}: psql md5"
        );
        assert_eq!(
            psql_ok(&url, md5_table).trim(),
            want_table,
            "{alias}: psql md5 of the table"
        );
        assert!(
            psql_ok(&url, rows_sql) == want_psql,
            "{alias}: psql rows differ from direct"
        );
    }
}

#[test]
fn types_round_trip_like_direct() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "types");
    pg.psql(
        &db,
        "create table ty (id int, b bytea, nul int, n numeric, ts timestamptz, a int4[], ta text[], u text, j jsonb)",
    )
    .unwrap();
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let bytes: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let numeric = "-12345678901234567890.000123456789";
    let ts = "2024-02-29 23:59:59.123456+05:30";
    let ints = vec![1i32, -2, i32::MAX, i32::MIN, 0];
    let texts: Vec<String> = ["a", "b c", "\"q\"", "NULL", "", "ü,{}", "back\\slash"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let unicode = "héllo wörld ✓ 日本語 🎉 'single' \"double\" tab\there\nnewline";
    let null: Option<i32> = None;
    let select =
        "select $1::bytea, $2::int4, $3::text::numeric, $4::text::timestamptz, $5::int4[], \
                  $6::text[], $7::text, '{\"k\": [1, \"ü\", null]}'::jsonb, 'NaN'::numeric, \
                  '-infinity'::timestamptz, '{{1,2},{3,NULL}}'::int[], E'\\\\x00ff'::bytea";
    let literals = "select '\\x00ff10'::bytea, null::int, 1.50::numeric, '1999-12-31 23:59:59.999999+00'::timestamptz, \
                    array[1,null,3], array['x', null, 'ÿ'], 'ελληνικά ✓'::text, '[]'::jsonb";
    let table = "select id, b, nul, n, ts, a, ta, u, j from ty order by id";

    let mut d = direct(&pg, &db);
    let params: [&(dyn postgres::types::ToSql + Sync); 7] =
        [&bytes, &null, &numeric, &ts, &ints, &texts, &unicode];
    let want = wire_row(&d.query_one(select, &params).unwrap());
    let want_lit = simple_rows(&mut d, literals);
    let want_lit_bin = wire_row(&d.query_one(literals, &[]).unwrap());

    for (i, alias) in MODES.iter().enumerate() {
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        assert_eq!(
            wire_row(&c.query_one(select, &params).unwrap()),
            want,
            "{alias}: parameters and results"
        );
        assert_eq!(
            simple_rows(&mut c, literals),
            want_lit,
            "{alias}: text literals"
        );
        assert_eq!(
            wire_row(&c.query_one(literals, &[]).unwrap()),
            want_lit_bin,
            "{alias}: binary literals"
        );
        // The typed values themselves.
        let row = c.query_one(select, &params).unwrap();
        assert_eq!(row.get::<_, Vec<u8>>(0), bytes);
        assert_eq!(row.get::<_, Option<i32>>(1), None);
        assert_eq!(row.get::<_, Vec<i32>>(4), ints);
        assert_eq!(row.get::<_, Vec<String>>(5), texts);
        assert_eq!(row.get::<_, String>(6), unicode);
        // Written through the proxy, read directly.
        c.execute(
            "insert into ty values ($1, $2, $3, $4::text::numeric, $5::text::timestamptz, $6, $7, $8, '{\"a\": \"ü\"}')",
            &[&(i as i32), &bytes, &null, &numeric, &ts, &ints, &texts, &unicode],
        )
        .unwrap();
    }
    let want_table = simple_rows(&mut d, table);
    assert_eq!(want_table.len(), 2);
    assert_eq!(
        want_table[0][1..],
        want_table[1][1..],
        "rows written in the two modes differ"
    );
    let want_psql = psql_ok(&pg.url(&db), table);
    for alias in MODES {
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        assert_eq!(
            simple_rows(&mut c, table),
            want_table,
            "{alias}: table read back"
        );
        assert!(
            psql_ok(&proxy.url(SUPERUSER, PW, alias), table) == want_psql,
            "{alias}: psql table"
        );
    }
}

#[test]
fn error_inside_a_transaction_then_rollback_leaves_the_session_usable() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "errors");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    for alias in MODES {
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        // Simple protocol.
        c.batch_execute("begin").unwrap();
        let e = c.batch_execute("select 1/0").unwrap_err();
        assert_eq!(sqlstate(&e), Some("22012"), "{alias}: {e}");
        let e = c.batch_execute("select 1").unwrap_err();
        assert_eq!(
            sqlstate(&e),
            Some("25P02"),
            "{alias}: the transaction must be aborted: {e}"
        );
        c.batch_execute("rollback").unwrap();
        assert_eq!(c.query_one("select 2", &[]).unwrap().get::<_, i32>(0), 2);
        // Extended protocol.
        let mut t = c.transaction().unwrap();
        t.execute("create temp table if not exists tt (x int)", &[])
            .ok();
        let e = t.query("select 1/$1::int", &[&0i32]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("22012"), "{alias}: {e}");
        let e = t.query("select 1", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("25P02"), "{alias}: {e}");
        t.rollback().unwrap();
        assert_eq!(
            c.query_one("select $1::int", &[&3i32])
                .unwrap()
                .get::<_, i32>(0),
            3
        );
        // An error outside a transaction.
        let e = c.query("select * from no_such_table", &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("42P01"));
        assert_eq!(c.query_one("select 4", &[]).unwrap().get::<_, i32>(0), 4);
        // psql: a script that fails mid-transaction and carries on after ROLLBACK.
        let out = std::process::Command::new("psql")
            .arg(proxy.url(SUPERUSER, PW, alias))
            .args([
                "-X",
                "-At",
                "-c",
                "begin",
                "-c",
                "select 1/0",
                "-c",
                "select 'never'",
                "-c",
                "rollback",
                "-c",
                "select 'after'",
            ])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains("division by zero"), "{alias}: {stderr}");
        assert!(
            stderr.contains("current transaction is aborted"),
            "{alias}: {stderr}"
        );
        assert!(
            stdout.lines().any(|l| l == "after"),
            "{alias}: {stdout} / {stderr}"
        );
        assert!(!stdout.contains("never"), "{alias}: {stdout}");
    }
}

#[test]
fn copy_in_and_out_100k_rows_like_direct() {
    use std::io::{Read, Write};
    let pg = shared_pg();
    let db = fresh_db(&pg, "copy");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let out_sql = "copy (select x, md5(x::text), now()::date - x from generate_series(1, 100000) x) to stdout";
    let mut d = direct(&pg, &db);
    let mut want_out = Vec::new();
    d.copy_out(out_sql)
        .unwrap()
        .read_to_end(&mut want_out)
        .unwrap();
    assert!(want_out.len() > 3_000_000);
    let digest = "select count(*), md5(string_agg(id || ':' || v, ',' order by id)) from ";
    let want_digest: (i64, String) = {
        let r = d
            .query_one(
                "select count(*), md5(string_agg(x || ':' || 'value-' || x || '-ü', ',' order by x)) \
                 from generate_series(1, 100000) x",
                &[],
            )
            .unwrap();
        (r.get(0), r.get(1))
    };
    for alias in MODES {
        let table = format!("copy_in_{alias}");
        d.batch_execute(&format!("create table {table} (id int, v text)"))
            .unwrap();
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        let mut w = c.copy_in(&format!("copy {table} from stdin")).unwrap();
        let mut chunk = String::new();
        for x in 1..=100_000 {
            chunk.push_str(&format!("{x}\tvalue-{x}-ü\n"));
            if chunk.len() > 60_000 {
                w.write_all(chunk.as_bytes()).unwrap();
                chunk.clear();
            }
        }
        w.write_all(chunk.as_bytes()).unwrap();
        assert_eq!(
            w.finish().unwrap(),
            100_000,
            "{alias}: COPY FROM STDIN row count"
        );
        let r = d.query_one(&format!("{digest}{table}"), &[]).unwrap();
        assert_eq!(
            (r.get::<_, i64>(0), r.get::<_, String>(1)),
            want_digest,
            "{alias}: copied-in rows"
        );

        let mut got = Vec::new();
        c.copy_out(out_sql).unwrap().read_to_end(&mut got).unwrap();
        assert!(
            got == want_out,
            "{alias}: COPY TO STDOUT differs from direct ({} vs {} bytes)",
            got.len(),
            want_out.len()
        );
        // The session carries on normally after both.
        assert_eq!(c.query_one("select 8", &[]).unwrap().get::<_, i32>(0), 8);

        // psql's \copy out goes through the same path.
        let psql_out = std::process::Command::new("psql")
            .arg(proxy.url(SUPERUSER, PW, alias))
            .args(["-X", "-c", &format!("\\{}", out_sql)])
            .output()
            .unwrap();
        assert!(
            psql_out.status.success(),
            "{}",
            String::from_utf8_lossy(&psql_out.stderr)
        );
        assert!(
            psql_out.stdout == want_out,
            "{alias}: psql \\copy out differs from direct"
        );
    }
}

#[test]
fn cancel_of_pg_sleep_returns_57014_within_a_second() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "cancel");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    // Each cancel request is a new connection the kernel hands to either shard; several rounds
    // per mode make it all but certain both the same-shard and the cross-shard path are taken.
    for alias in MODES {
        for round in 0..4 {
            let mut c = connect(&proxy, SUPERUSER, PW, alias);
            let token = c.cancel_token();
            let tag = format!("cancel_probe_{alias}_{round}");
            let watcher = {
                let conn = pg.conn_str(&db);
                let tag = tag.clone();
                // Returns when it sent the cancel, or None if the query was not seen running
                // within 10 s (the main thread then reports what its client got instead).
                std::thread::spawn(move || {
                    let mut d = postgres::Client::connect(&conn, NoTls).unwrap();
                    try_poll(Duration::from_secs(10), || {
                        let n: i64 = d
                            .query_one(
                                "select count(*) from pg_stat_activity where state = 'active' and query like $1",
                                &[&format!("%{tag}%")],
                            )
                            .unwrap()
                            .get(0);
                        (n == 1).then_some(())
                    })?;
                    let sent = Instant::now();
                    token.cancel_query(NoTls).expect("send the cancel request");
                    Some(sent)
                })
            };
            let started = Instant::now();
            let e = c
                .batch_execute(&format!("select pg_sleep(10) /* {tag} */"))
                .unwrap_err();
            let done = Instant::now();
            let Some(sent) = watcher.join().unwrap() else {
                panic!(
                    "{alias} round {round}: pg_sleep was never seen running; the client got, after {:?}: {e:?}",
                    done.duration_since(started)
                );
            };
            assert_eq!(sqlstate(&e), Some("57014"), "{alias} round {round}: {e}");
            assert!(
                done.duration_since(sent) < Duration::from_secs(1),
                "{alias} round {round}: cancelled {:?} after the request",
                done.duration_since(sent)
            );
            assert!(done.duration_since(started) < Duration::from_secs(9));
            assert_eq!(c.query_one("select 5", &[]).unwrap().get::<_, i32>(0), 5);
        }
    }
}

#[test]
fn fifty_clients_share_five_server_connections_with_named_prepared_statements() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "prepared");
    let dbs = db_section("tx", &db, "transaction", 5, "checkout_timeout_ms = 20000");
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    const CLIENTS: usize = 50;
    let barrier = Arc::new(Barrier::new(CLIENTS + 1));
    let done = Arc::new(AtomicBool::new(false));
    let checked = Arc::new(AtomicUsize::new(0));
    let monitor = {
        let conn = pg.conn_str("postgres");
        let db = db.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let mut d = postgres::Client::connect(&conn, NoTls).unwrap();
            let mut max = 0;
            while !done.load(Ordering::Relaxed) {
                let n: i64 = d
                    .query_one(
                        "select count(*) from pg_stat_activity where datname = $1",
                        &[&db],
                    )
                    .unwrap()
                    .get(0);
                max = max.max(n);
                std::thread::sleep(Duration::from_millis(5));
            }
            max
        })
    };
    let workers: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let conn = proxy.conn_str(SUPERUSER, PW, "tx");
            let barrier = barrier.clone();
            let checked = checked.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conn, NoTls).unwrap();
                barrier.wait();
                let i = i as i32;
                // The same text in every client, and a text of this client's own.
                let add = c
                    .prepare("select $1::int4 + $2::int4, pg_backend_pid()")
                    .unwrap();
                let own = c
                    .prepare(&format!("select $1::text || '-{i}', $2::int4 * {i}"))
                    .unwrap();
                for j in 0..20i32 {
                    if j % 3 == 0 {
                        let mut t = c.transaction().unwrap();
                        let r = t.query_one(&add, &[&i, &j]).unwrap();
                        assert_eq!(r.get::<_, i32>(0), i + j);
                        let r = t.query_one(&own, &[&format!("c{j}"), &j]).unwrap();
                        assert_eq!(r.get::<_, String>(0), format!("c{j}-{i}"));
                        assert_eq!(r.get::<_, i32>(1), i * j);
                        t.commit().unwrap();
                    } else {
                        let r = c.query_one(&add, &[&i, &j]).unwrap();
                        assert_eq!(r.get::<_, i32>(0), i + j);
                        let r = c.query_one(&own, &[&format!("c{j}"), &j]).unwrap();
                        assert_eq!(r.get::<_, String>(0), format!("c{j}-{i}"));
                    }
                    checked.fetch_add(1, Ordering::Relaxed);
                }
                // A statement closed by the client is gone for it, the other still works.
                drop(own);
                let r = c.query_one(&add, &[&1i32, &2i32]).unwrap();
                assert_eq!(r.get::<_, i32>(0), 3);
            })
        })
        .collect();
    barrier.wait();
    let mut panics = 0;
    for w in workers {
        if w.join().is_err() {
            panics += 1;
        }
    }
    done.store(true, Ordering::Relaxed);
    let max_servers = monitor.join().unwrap();
    assert_eq!(
        panics, 0,
        "{panics} clients failed (see their panic messages)"
    );
    assert_eq!(checked.load(Ordering::Relaxed), CLIENTS * 20);
    assert!(
        (1..=5).contains(&max_servers),
        "{max_servers} server connections were open for pool_size 5"
    );
}

#[test]
fn search_path_is_honoured_in_transaction_mode_while_others_churn_the_pool() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "search_path");
    pg.psql(
        &db,
        "create schema sa; create schema sb; create table public.t (v text); create table sa.t (v text); \
         create table sb.t (v text); insert into public.t values ('public'); insert into sa.t values ('a'); \
         insert into sb.t values ('b')",
    )
    .unwrap();
    // One server connection per shard: every client on a shard takes turns on the same one.
    let dbs = db_section("tx", &db, "transaction", 2, "checkout_timeout_ms = 20000");
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    let stop = Arc::new(AtomicBool::new(false));
    let churners: Vec<_> = (0..6)
        .map(|i| {
            let conn = proxy.conn_str(SUPERUSER, PW, "tx");
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut c = postgres::Client::connect(&conn, NoTls).unwrap();
                // Half the churners have a search_path of their own.
                let (want_schemas, want_v) = if i % 2 == 0 {
                    ("{public}", "public")
                } else {
                    c.batch_execute("set search_path to sa").unwrap();
                    ("{sa}", "a")
                };
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) || n < 10 {
                    let r = simple_rows(
                        &mut c,
                        "select current_schemas(false)::text, (select v from t)",
                    );
                    assert_eq!(r[0][0].as_deref(), Some(want_schemas), "churner {i}");
                    assert_eq!(r[0][1].as_deref(), Some(want_v), "churner {i}");
                    let mut t = c.transaction().unwrap();
                    let v: String = t.query_one("select v from t", &[]).unwrap().get(0);
                    assert_eq!(v, want_v, "churner {i}");
                    t.commit().unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();

    let check = |c: &mut postgres::Client, schemas: &str, v: &str, what: &str| {
        for round in 0..10 {
            let r = simple_rows(c, "select current_schemas(false)::text, (select v from t)");
            assert_eq!(
                r[0][0].as_deref(),
                Some(schemas),
                "{what}, round {round} (simple)"
            );
            assert_eq!(
                r[0][1].as_deref(),
                Some(v),
                "{what}, round {round} (simple)"
            );
            let r = c
                .query_one(
                    "select current_schemas(false)::text, (select v from t)",
                    &[],
                )
                .unwrap();
            assert_eq!(
                r.get::<_, String>(0),
                schemas,
                "{what}, round {round} (extended)"
            );
            assert_eq!(r.get::<_, String>(1), v, "{what}, round {round} (extended)");
            let mut t = c.transaction().unwrap();
            let got: String = t.query_one("select v from t", &[]).unwrap().get(0);
            assert_eq!(got, v, "{what}, round {round} (in a transaction)");
            t.commit().unwrap();
        }
    };
    let mut c = connect(&proxy, SUPERUSER, PW, "tx");
    check(&mut c, "{public}", "public", "default");
    c.batch_execute("SET search_path TO sb, public").unwrap();
    check(
        &mut c,
        "{sb,public}",
        "b",
        "after SET search_path TO sb, public",
    );
    c.batch_execute("set search_path = sa").unwrap();
    check(&mut c, "{sa}", "a", "after set search_path = sa");
    c.batch_execute("RESET search_path").unwrap();
    check(&mut c, "{public}", "public", "after RESET");
    // From the startup packet (options=-c search_path=…).
    let mut o = postgres::Client::connect(
        &format!(
            "{} options='-c search_path=sb'",
            proxy.conn_str(SUPERUSER, PW, "tx")
        ),
        NoTls,
    )
    .unwrap();
    check(&mut o, "{sb}", "b", "options=-c search_path=sb");
    o.batch_execute("reset search_path").unwrap();
    check(&mut o, "{sb}", "b", "RESET back to the startup value");
    stop.store(true, Ordering::Relaxed);
    for (i, ch) in churners.into_iter().enumerate() {
        let n = ch.join().unwrap_or_else(|_| panic!("churner {i} failed"));
        assert!(n >= 10);
    }
}

#[test]
fn transaction_mode_refuses_session_features_with_0a000_and_stays_usable() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "refuse");
    // LISTEN with other statements is refused in transaction mode (alone it is served:
    // tests/listen.rs); the others because this database says so (the default, `pin`, serves
    // them: tests/session_state.rs).
    let proxy = both_modes_proxy(&pg, &db, 4, "unsafe_statements = \"refuse\"");
    let refused = [
        "LISTEN chan; select 1",
        "select pg_advisory_lock(42)",
        "declare cur cursor with hold for select 1",
    ];
    let mut c = connect(&proxy, SUPERUSER, PW, "tx");
    for sql in refused {
        // Simple protocol, outside a transaction.
        let e = c.batch_execute(sql).unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "{sql} (simple): {e}");
        assert_eq!(
            c.query_one("select 1", &[]).unwrap().get::<_, i32>(0),
            1,
            "{sql}"
        );
        // Extended protocol, outside a transaction.
        let e = c.query(sql, &[]).unwrap_err();
        assert_eq!(sqlstate(&e), Some("0A000"), "{sql} (extended): {e}");
        assert_eq!(
            c.query_one("select 2", &[]).unwrap().get::<_, i32>(0),
            2,
            "{sql}"
        );
        // Inside a transaction: the transaction fails, ROLLBACK works.
        c.batch_execute("begin").unwrap();
        c.batch_execute("select 1").unwrap();
        let e = c.batch_execute(sql).unwrap_err();
        assert_eq!(
            sqlstate(&e),
            Some("0A000"),
            "{sql} (simple, in a transaction): {e}"
        );
        let e = c.batch_execute("select 1").unwrap_err();
        assert_eq!(
            sqlstate(&e),
            Some("25P02"),
            "{sql}: the transaction must be failed: {e}"
        );
        c.batch_execute("rollback").unwrap();
        let mut t = c.transaction().unwrap();
        t.query_one("select 1", &[]).unwrap();
        let e = t.query(sql, &[]).unwrap_err();
        assert_eq!(
            sqlstate(&e),
            Some("0A000"),
            "{sql} (extended, in a transaction): {e}"
        );
        let e = t.query("select 1", &[]).unwrap_err();
        assert_eq!(
            sqlstate(&e),
            Some("25P02"),
            "{sql}: the transaction must be failed: {e}"
        );
        t.rollback().unwrap();
        assert_eq!(
            c.query_one("select 3", &[]).unwrap().get::<_, i32>(0),
            3,
            "{sql}"
        );
    }
    // Nothing was taken on the server: no advisory lock is held.
    let held: i64 = direct(&pg, &db)
        .query_one(
            "select count(*) from pg_locks where locktype = 'advisory'",
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(held, 0);
    // LISTEN on its own is served (through the shard's notify hub).
    c.batch_execute("LISTEN chan").unwrap();
    c.batch_execute("UNLISTEN chan").unwrap();
    // Session pooling allows them.
    let mut s = connect(&proxy, SUPERUSER, PW, "sess");
    s.batch_execute("LISTEN chan; select pg_advisory_lock(42); select pg_advisory_unlock(42)")
        .unwrap();
    s.batch_execute("begin; declare cur cursor with hold for select 1; commit; close cur")
        .unwrap();
}

/// One step of the statement-lifecycle script: what it returned and its first error.
fn statement_script(r: &mut Raw) -> Vec<(Option<String>, Option<String>)> {
    let mut out = Vec::new();
    let mut step = |msgs: Vec<Msg>| out.push((first_value(&msgs), first_error(&msgs)));
    step(r.extended("st", Some("select 1"), &[]));
    step(r.extended("st", None, &[]));
    step(r.query("DEALLOCATE st"));
    step(r.extended("st", None, &[]));
    step(r.extended("st", Some("select $1::int * 10"), &["2"]));
    step(r.query("begin"));
    step(r.extended("st", None, &["3"]));
    step(r.query("commit"));
    step(r.query("deallocate prepare st"));
    step(r.extended("st", Some("select 'again'"), &[]));
    step(r.extended("other", Some("select 'other'"), &[]));
    step(r.query("DEALLOCATE ALL"));
    step(r.extended("st", None, &[]));
    step(r.extended("other", None, &[]));
    step(r.extended("st", Some("select current_setting('search_path')"), &[]));
    step(r.query("SET search_path TO pg_catalog"));
    step(r.query("show search_path"));
    step(r.extended("st", None, &[]));
    step(r.query("DISCARD ALL"));
    step(r.query("show search_path"));
    step(r.extended("st", None, &[]));
    step(r.extended("st", Some("select 'after discard'"), &[]));
    step(r.query("show search_path"));
    out
}

#[test]
fn deallocate_and_discard_all_are_honoured_like_direct() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "dealloc");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let mut d = match Raw::login(pg.port, SUPERUSER, PW, &db) {
        Ok(r) => r,
        Err(e) => panic!("direct raw login: {e:?}"),
    };
    let want = statement_script(&mut d);
    // Sanity: the script does what it says on a real server.
    assert_eq!(want[0].0.as_deref(), Some("1"));
    assert_eq!(want[3].1.as_deref(), Some("26000"));
    assert_eq!(want[4].0.as_deref(), Some("20"));
    assert_eq!(want[21].0.as_deref(), Some("after discard"));
    for alias in MODES {
        let mut r = Raw::trust(proxy.port(), alias);
        let got = statement_script(&mut r);
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert_eq!(
                g, w,
                "{alias}: step {i} differs from direct (whole run: {got:?})"
            );
        }
        // And the session keeps working across transactions afterwards.
        assert_eq!(
            first_value(&r.query("select 'still here'")).as_deref(),
            Some("still here")
        );
        r.terminate();
    }
}

#[test]
fn pg_terminate_backend_mid_transaction_errors_that_client_only() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "terminate");
    let proxy = both_modes_proxy(&pg, &db, 8, "");
    let mut d = direct(&pg, &db);
    for alias in MODES {
        let mut bystander = connect(&proxy, SUPERUSER, PW, alias);
        // A hand-driven client sees exactly what arrives.
        let mut r = Raw::trust(proxy.port(), alias);
        r.query("begin");
        let pid: i32 = first_value(&r.query("select pg_backend_pid()"))
            .unwrap()
            .parse()
            .unwrap();
        let ok: bool = d
            .query_one("select pg_terminate_backend($1)", &[&pid])
            .unwrap()
            .get(0);
        assert!(ok);
        let msgs = r.until_closed();
        let codes: Vec<String> = msgs.iter().filter_map(|m| m.code()).collect();
        assert!(
            codes.iter().any(|c| c == "57P01" || c.starts_with("08")),
            "{alias}: expected 57P01 or 08xxx, got {msgs:?}"
        );
        // The same with the Rust client: its next statement fails.
        let mut c = connect(&proxy, SUPERUSER, PW, alias);
        c.batch_execute("begin").unwrap();
        let pid: i32 = c.query_one("select pg_backend_pid()", &[]).unwrap().get(0);
        terminate_backend(&mut d, pid);
        let e = c.batch_execute("select 1").unwrap_err();
        assert!(
            sqlstate(&e).map_or(e.is_closed(), |s| s == "57P01" || s.starts_with("08")),
            "{alias}: {e:?}"
        );
        // New sessions work (on either shard), and so does the client next to it.
        for _ in 0..4 {
            let mut n = connect(&proxy, SUPERUSER, PW, alias);
            let mut t = n.transaction().unwrap();
            assert_eq!(
                t.query_one("select 6", &[]).unwrap().get::<_, i32>(0),
                6,
                "{alias}"
            );
            t.commit().unwrap();
        }
        assert_eq!(
            bystander
                .query_one("select 7", &[])
                .unwrap()
                .get::<_, i32>(0),
            7
        );
    }
}

fn tags(msgs: &[Msg]) -> String {
    msgs.iter().map(|m| m.tag as char).collect()
}

/// What tokio-postgres's `copy_in` sends: Bind, Execute and Sync at once, the data after the
/// CopyInResponse, then CopyDone and another Sync; then Close of the statement. The server
/// ignores a Sync that arrives during COPY FROM STDIN, so it answers the two Syncs with one
/// ReadyForQuery.
fn extended_copy_in_script(r: &mut Raw) -> Vec<String> {
    use bytes::BytesMut;
    use postgres_protocol::message::frontend;
    let mut out = Vec::new();
    r.query("create table if not exists ext_copy (x int)");
    let mut b = BytesMut::new();
    frontend::parse("s0", "copy ext_copy from stdin", std::iter::empty(), &mut b).unwrap();
    frontend::describe(b'S', "s0", &mut b).unwrap();
    frontend::sync(&mut b);
    r.send(&b);
    out.push(tags(&r.until_ready()));
    let mut b = BytesMut::new();
    frontend::bind(
        "",
        "s0",
        std::iter::empty::<i16>(),
        std::iter::empty::<&[u8]>(),
        |_, _| Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No),
        Some(0),
        &mut b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::execute("", 0, &mut b).unwrap();
    frontend::sync(&mut b);
    r.send(&b);
    let mut got = Vec::new();
    while got.last().map(|m: &Msg| m.tag) != Some(b'G') {
        match r.recv().unwrap() {
            Some(m) => got.push(m),
            None => panic!("closed during COPY; got {got:?}"),
        }
    }
    out.push(tags(&got));
    let mut b = BytesMut::new();
    frontend::CopyData::new(&b"1\n2\n"[..])
        .unwrap()
        .write(&mut b);
    frontend::copy_done(&mut b);
    frontend::sync(&mut b);
    r.send(&b);
    out.push(tags(&r.until_ready()));
    let mut b = BytesMut::new();
    frontend::close(b'S', "s0", &mut b).unwrap();
    frontend::sync(&mut b);
    r.send(&b);
    out.push(tags(&r.until_ready()));
    out.push(tags(&r.query("select 1")));
    out
}

/// Engine bug (see the test report): Frontend Sync messages sent while the server is in
/// COPY FROM STDIN are ignored by the server, but the session queues an `Expect::Sync` for
/// each; the surplus entry shifts every later response (CloseComplete arrives after the
/// ReadyForQuery it should precede) and in transaction mode keeps the server connection
/// attached for good.
#[test]
fn extended_copy_from_stdin_keeps_response_order_and_releases_the_server() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ext_copy");
    let dbs = db_section("sess", &db, "session", 4, "")
        + &db_section("tx", &db, "transaction", 1, "checkout_timeout_ms = 500");
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    let mut d = match Raw::login(pg.port, SUPERUSER, PW, &db) {
        Ok(r) => r,
        Err(e) => panic!("direct raw login: {e:?}"),
    };
    let want = extended_copy_in_script(&mut d);
    assert_eq!(want, ["1tnZ", "2G", "CZ", "3Z", "TDCZ"]);
    for alias in MODES {
        let mut r = Raw::trust(proxy.port(), alias);
        assert_eq!(
            extended_copy_in_script(&mut r),
            want,
            "{alias}: responses differ from direct"
        );
        if alias == "tx" {
            // pool_size 1 per shard: another client on the same shard needs the connection the
            // idle client above must have given back.
            // (Those landing elsewhere stay connected: clients are spread evenly over the
            // shards, so the next one goes where there are fewer.)
            let mut elsewhere = Vec::new();
            let mut tried = 0;
            loop {
                let mut o = Raw::trust(proxy.port(), "tx");
                if o.shard() == r.shard() {
                    let m = o.query("select 1");
                    assert_eq!(
                        first_error(&m),
                        None,
                        "the idle client still holds the server connection: {m:?}"
                    );
                    break;
                }
                elsewhere.push(o);
                tried += 1;
                assert!(tried < 40, "no client landed on shard {}", r.shard());
            }
        }
    }
}

/// Raw clients on the same shard as `r` until one is found (the pool is per shard). Those that
/// land elsewhere stay connected until then: clients are spread evenly over the shards.
fn same_shard(port: u16, db: &str, r: &Raw) -> Raw {
    let mut elsewhere = Vec::new();
    for _ in 0..60 {
        let o = Raw::trust(port, db);
        if o.shard() == r.shard() {
            return o;
        }
        elsewhere.push(o);
    }
    panic!("no client landed on shard {}", r.shard());
}

/// Engine bug (see the test report): in transaction mode a SET sent with the extended
/// protocol (what `Client::execute` does) is not tracked, so it stays on the server connection
/// and every other client that gets that connection inherits it.
#[test]
fn set_through_the_extended_protocol_does_not_leak_to_other_clients() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "ext_set");
    // One server connection per shard: the next client on the shard gets the same one.
    let dbs = db_section("tx", &db, "transaction", 1, "checkout_timeout_ms = 5000");
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    let mut r = Raw::trust(proxy.port(), "tx");
    let msgs = r.extended("", Some("set application_name = 'leaky'"), &[]);
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    assert_eq!(
        first_value(&r.query("show application_name")).as_deref(),
        Some("leaky")
    );
    for i in 0..3 {
        let mut o = same_shard(proxy.port(), "tx", &r);
        let seen = first_value(&o.query("show application_name"));
        assert_eq!(
            seen.as_deref(),
            Some(""),
            "client {i} on shard {} sees another client's SET",
            o.shard()
        );
        // The client that set it keeps it.
        assert_eq!(
            first_value(&r.query("show application_name")).as_deref(),
            Some("leaky")
        );
    }
}

/// Engine bug (see the test report): a SET inside a transaction that is rolled back is undone by
/// the server, but the session keeps it as wanted and re-applies it on the next server
/// connection the client gets.
#[test]
fn set_inside_a_rolled_back_transaction_is_forgotten() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "rollback_set");
    pg.psql(&db, "create schema sa").unwrap();
    // Two server connections per shard, so the client can be moved to the other one.
    let dbs = db_section("tx", &db, "transaction", 4, "checkout_timeout_ms = 5000");
    let proxy = start_proxy(&config(&pg, TRUST, "", &dbs), None);
    let default = first_value(&Raw::trust(proxy.port(), "tx").query("show search_path"));
    let mut r = Raw::trust(proxy.port(), "tx");
    r.query("begin");
    assert_eq!(first_error(&r.query("set search_path to sa")), None);
    assert_eq!(ready_status(&r.query("rollback")), b'I');
    assert_eq!(
        first_value(&r.query("show search_path")),
        default,
        "same server connection"
    );
    // Hold the connection the client just used, so its next query runs on the other one.
    let mut holder = same_shard(proxy.port(), "tx", &r);
    holder.query("begin");
    holder.query("select 1");
    assert_eq!(
        first_value(&r.query("show search_path")),
        default,
        "on another server connection, after ROLLBACK undid the SET"
    );
    holder.query("commit");
}

/// Engine bug (see the test report): in transaction mode a Parse reusing the name of a statement
/// the client has not closed replaces it silently; PostgreSQL refuses it with 42P05.
#[test]
fn parse_of_an_existing_statement_name_is_refused_like_direct() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "dup_parse");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let script = |r: &mut Raw| {
        let a = r.extended("dup", Some("select 1"), &[]);
        let b = r.extended("dup", Some("select 2"), &[]);
        let c = r.extended("dup", None, &[]);
        [a, b, c].map(|m| (first_value(&m), first_error(&m)))
    };
    let mut d = match Raw::login(pg.port, SUPERUSER, PW, &db) {
        Ok(r) => r,
        Err(e) => panic!("direct raw login: {e:?}"),
    };
    let want = script(&mut d);
    assert_eq!(want[1].1.as_deref(), Some("42P05"));
    assert_eq!(want[2].0.as_deref(), Some("1"));
    for alias in MODES {
        let mut r = Raw::trust(proxy.port(), alias);
        assert_eq!(script(&mut r), want, "{alias}");
    }
}

/// Bind (+ Parse when `sql` is given), Describe portal, Execute, then Sync if `sync`.
fn portal_batch(b: &mut bytes::BytesMut, name: &str, sql: Option<&str>, sync: bool) {
    use postgres_protocol::message::frontend;
    if let Some(sql) = sql {
        frontend::parse(name, sql, std::iter::empty(), b).unwrap();
    }
    frontend::bind(
        "",
        name,
        std::iter::empty::<i16>(),
        std::iter::empty::<&[u8]>(),
        |_, _| Ok::<_, Box<dyn std::error::Error + Sync + Send>>(postgres_protocol::IsNull::No),
        Some(0),
        b,
    )
    .map_err(|_| ())
    .unwrap();
    frontend::describe(b'P', "", b).unwrap();
    frontend::execute("", 0, b).unwrap();
    if sync {
        frontend::sync(b);
    }
}

/// Several batches written at once, with errors in some, in and out of a transaction.
fn pipeline_script(r: &mut Raw) -> Vec<String> {
    use postgres_protocol::message::frontend;
    let mut out = Vec::new();
    let mut b = bytes::BytesMut::new();
    portal_batch(&mut b, "", Some("select 1/0"), true);
    portal_batch(&mut b, "", Some("select 2"), true);
    portal_batch(&mut b, "n1", Some("select 3"), true);
    portal_batch(&mut b, "n1", None, true);
    r.send(&b);
    for _ in 0..4 {
        out.push(tags(&r.until_ready()));
    }
    let mut b = bytes::BytesMut::new();
    frontend::query("begin", &mut b).unwrap();
    portal_batch(&mut b, "n2", Some("select 4"), true);
    portal_batch(&mut b, "", Some("select 1/0"), true);
    portal_batch(&mut b, "n2", None, true);
    frontend::query("rollback", &mut b).unwrap();
    portal_batch(&mut b, "n2", None, true);
    r.send(&b);
    for _ in 0..6 {
        out.push(tags(&r.until_ready()));
    }
    // Two executions before one Sync, with a Flush between.
    let mut b = bytes::BytesMut::new();
    portal_batch(&mut b, "n3", Some("select 5"), false);
    frontend::flush(&mut b);
    portal_batch(&mut b, "n3", None, false);
    frontend::sync(&mut b);
    r.send(&b);
    out.push(tags(&r.until_ready()));
    out
}

#[test]
fn pipelined_extended_batches_match_direct() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pipeline");
    let proxy = both_modes_proxy(&pg, &db, 4, "");
    let mut d = match Raw::login(pg.port, SUPERUSER, PW, &db) {
        Ok(r) => r,
        Err(e) => panic!("direct raw login: {e:?}"),
    };
    let want = pipeline_script(&mut d);
    assert_eq!(want[0], "1EZ");
    for alias in MODES {
        let mut r = Raw::trust(proxy.port(), alias);
        assert_eq!(pipeline_script(&mut r), want, "{alias}");
        assert_eq!(ready_status(&r.query("select 1")), b'I');
    }
}
