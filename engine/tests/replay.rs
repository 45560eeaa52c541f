//! The write journal and `POST /api/replay` against real PostgreSQL: writes made through the
//! proxy (simple and extended protocol, binary parameters, committed, rolled back and failed
//! transactions) are journaled, reads are not, and the journal replayed onto a second cluster
//! with the same schema gives the same table; a second replay of the same window stops at its
//! first error (a duplicate key) and says what it applied (docs/replay.md).

mod common;

use common::*;
use helios_testkit::{PgOptions, SUPERUSER};
use postgres::types::ToSql;

const SCHEMA: &str = "create table acc(id int primary key, v text, n bigint, b bytea)";

fn table(pg: &helios_testkit::PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "select coalesce(string_agg(id || ':' || coalesce(v, 'null') || ':' || coalesce(n::text, 'null') || ':' || coalesce(encode(b, 'hex'), 'null'), ',' order by id), '') from acc",
    )
    .unwrap()
}

#[test]
fn journaled_writes_replay_onto_another_node_and_a_second_replay_stops_at_its_first_error() {
    let src = shared_pg();
    let db = fresh_db(&src, "jr");
    src.psql(&db, SCHEMA).unwrap();
    let dst = own_pg(PgOptions::default());
    dst.psql("postgres", &format!("create database {db}"))
        .unwrap();
    dst.psql(&db, SCHEMA).unwrap();

    let dir = std::env::temp_dir().join(format!("helios-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config(
        &src,
        TRUST,
        "",
        &format!(
            "[[nodes]]\nname = \"restore\"\nhost = \"127.0.0.1\"\nport = {}\n\n{}\n\
             [journal]\nenabled = true\npath = \"{}\"\nmax_file_bytes = 4096\nmax_files = 50\n",
            dst.port,
            db_section("app", &db, "transaction", 4, ""),
            dir.display()
        ),
    )
    .replace(
        "[admin]\n",
        &format!(
            "[admin]\ntoken = \"{ADMIN_TOKEN}\"\nsql_user = \"{SUPERUSER}\"\nsql_password = \"{PW}\"\n"
        ),
    );
    let proxy = start_proxy(&cfg, None);
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    // Simple protocol: a write, a read (not journaled), a SET.
    c.batch_execute("insert into acc values (1, 'one', 10, '\\x01')")
        .unwrap();
    c.batch_execute("select * from acc").unwrap();
    c.batch_execute("set application_name = 'journaled'")
        .unwrap();
    // Extended protocol with binary parameters (the postgres crate binds int4, text, int8, bytea
    // in binary), executed repeatedly.
    let ins = c
        .prepare("insert into acc values ($1, $2, $3, $4)")
        .unwrap();
    for i in 2..6i32 {
        let params: [&(dyn ToSql + Sync); 4] = [
            &i,
            &format!("v{i}"),
            &(i64::from(i) * 1000),
            &vec![i as u8, 0xff],
        ];
        c.execute(&ins, &params).unwrap();
    }
    let none: Option<String> = None;
    c.execute(
        "insert into acc values ($1, $2, null, null)",
        &[&6i32, &none],
    )
    .unwrap();
    // A committed transaction, a rolled-back one, one whose statement failed (COMMIT is
    // answered ROLLBACK), a statement that failed alone.
    c.batch_execute("begin; update acc set n = n + 1 where id < 4; insert into acc values (7, 'tx', 7, null); commit")
        .unwrap();
    c.batch_execute("begin").unwrap();
    c.execute("insert into acc values (8, 'rolled back', 8, null)", &[])
        .unwrap();
    c.batch_execute("rollback").unwrap();
    c.batch_execute("begin").unwrap();
    c.execute("insert into acc values (9, 'lost', 9, null)", &[])
        .unwrap();
    assert!(c
        .execute("insert into acc values (1, 'dup', 0, null)", &[])
        .is_err());
    c.batch_execute("commit").unwrap();
    assert!(c
        .batch_execute("insert into acc values (2, 'dup', 0, null)")
        .is_err());
    c.execute("delete from acc where id = $1", &[&5i32])
        .unwrap();
    // Enough entries to rotate the 4 KiB journal file a few times; they cancel out.
    for i in 100..140i32 {
        c.execute(
            "insert into acc values ($1, 'bulk', $2, null)",
            &[&i, &i64::from(i)],
        )
        .unwrap();
    }
    c.batch_execute("delete from acc where id >= 100").unwrap();
    let want = table(&src, &db);
    assert_eq!(
        want,
        "1:one:11:01,2:v2:2001:02ff,3:v3:3001:03ff,4:v4:4000:04ff,6:null:null:null,7:tx:7:null"
    );

    // The journal: on disk, rotated (4 KiB files), no read in it.
    let admin = proxy.admin_port();
    let status = poll(
        std::time::Duration::from_secs(10),
        "journal written",
        || {
            let (code, _, body) = http(admin, "GET", "/api/replay", Some(ADMIN_TOKEN)).unwrap();
            assert_eq!(code, 200, "{body}");
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (v["entries"].as_u64() >= Some(58)).then_some(v)
        },
    );
    println!("journal: {status}");
    let text: String = std::fs::read_dir(&dir)
        .unwrap()
        .map(|f| std::fs::read_to_string(f.unwrap().path()).unwrap())
        .collect();
    assert!(
        !text.contains("select * from acc"),
        "reads are not journaled"
    );
    assert!(
        text.contains("\"b\":\"AAAAAg==\""),
        "binary parameters are kept: {text}"
    );
    assert!(
        std::fs::read_dir(&dir).unwrap().count() > 1,
        "journal.jsonl is rotated past max_file_bytes"
    );

    // Refusals: no body fields, an unknown node, no token.
    let post = |body: &str, token: Option<&str>| {
        let (code, _, body) = http_body(admin, "POST", "/api/replay", token, body).unwrap();
        (
            code,
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_default(),
        )
    };
    assert_eq!(post("{}", Some(ADMIN_TOKEN)).0, 400);
    assert_eq!(post(r#"{"node":"ghost"}"#, Some(ADMIN_TOKEN)).0, 404);
    assert_eq!(post(r#"{"node":"restore"}"#, None).0, 401);
    // A dry run counts; nothing changes on the target.
    let (code, dry) = post(r#"{"node":"restore","dry_run":true}"#, Some(ADMIN_TOKEN));
    assert_eq!(code, 200, "{dry}");
    assert_eq!(table(&dst, &db), "");

    // The replay: the same table on the target.
    let body = format!(r#"{{"node":"restore","from_ms":{started_ms}}}"#);
    let (code, r) = post(&body, Some(ADMIN_TOKEN));
    println!("replay: {r}");
    assert_eq!(code, 200, "{r}");
    assert_eq!(r["applied"], dry["applied"], "{r}");
    assert_eq!(
        r["skipped_failed"], 2,
        "the two statements that failed: {r}"
    );
    assert!(r["stopped"].is_null(), "{r}");
    assert_eq!(table(&dst, &db), want);

    // Again: the first insert is now a duplicate; the replay stops there, applies nothing more.
    let (code, again) = post(&body, Some(ADMIN_TOKEN));
    assert_eq!(code, 422, "{again}");
    assert_eq!(again["stopped"]["sqlstate"], "23505", "{again}");
    assert_eq!(again["applied"], 0, "{again}");
    assert_eq!(
        table(&dst, &db),
        want,
        "a stopped replay leaves no half transaction"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

/// The rows of `w` in `db`, in order.
fn rows(pg: &helios_testkit::PgCluster, db: &str) -> String {
    pg.psql(
        db,
        "select coalesce(string_agg(x::text, ',' order by x), '') from w",
    )
    .unwrap()
    .trim()
    .to_string()
}

/// The replay window's bounds: `to_ms` leaves the later writes out, `from_ms` the earlier ones.
/// The target is the source node itself, its table emptied directly (not through the proxy, so
/// not journaled) before each replay.
#[test]
fn the_replay_window_excludes_what_is_outside_it() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "jwin");
    pg.psql(&db, "create table w(x int primary key)").unwrap();
    let dir = std::env::temp_dir().join(format!("helios-journal-win-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config(
        &pg,
        TRUST,
        "",
        &format!(
            "{}\n[journal]\nenabled = true\npath = \"{}\"\n",
            db_section("app", &db, "session", 2, ""),
            dir.display()
        ),
    )
    .replace("[admin]\n", &format!("[admin]\ntoken = \"{ADMIN_TOKEN}\"\nsql_user = \"{SUPERUSER}\"\nsql_password = \"{PW}\"\n"));
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    for x in 1..=3 {
        c.execute("insert into w values ($1)", &[&x]).unwrap();
    }
    // A clear gap in time between the two halves (journal timestamps are milliseconds).
    std::thread::sleep(std::time::Duration::from_millis(50));
    let mid = now_ms();
    std::thread::sleep(std::time::Duration::from_millis(50));
    for x in 4..=6 {
        c.batch_execute(&format!("insert into w values ({x})"))
            .unwrap();
    }
    assert_eq!(rows(&pg, &db), "1,2,3,4,5,6");
    poll(
        std::time::Duration::from_secs(10),
        "six journaled writes",
        || {
            let (_, _, body) = http(admin, "GET", "/api/replay", Some(ADMIN_TOKEN)).unwrap();
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            (v["entries"].as_u64() >= Some(6)).then_some(())
        },
    );
    let replay = |body: String| {
        let (code, _, body) =
            http_body(admin, "POST", "/api/replay", Some(ADMIN_TOKEN), &body).unwrap();
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(code, 200, "{v}");
        v
    };
    // Up to `mid`: the first three only.
    pg.psql(&db, "truncate w").unwrap();
    let r = replay(format!(r#"{{"node":"pg","to_ms":{mid}}}"#));
    assert_eq!(r["applied"], 3, "{r}");
    assert_eq!(rows(&pg, &db), "1,2,3");
    // From `mid`: the last three only.
    pg.psql(&db, "truncate w").unwrap();
    let r = replay(format!(r#"{{"node":"pg","from_ms":{mid}}}"#));
    assert_eq!(r["applied"], 3, "{r}");
    assert_eq!(rows(&pg, &db), "4,5,6");
    // A window with nothing in it applies nothing.
    pg.psql(&db, "truncate w").unwrap();
    let r = replay(format!(
        r#"{{"node":"pg","from_ms":{},"to_ms":{}}}"#,
        mid - 10,
        mid + 10
    ));
    assert_eq!(r["applied"], 0, "{r}");
    assert_eq!(rows(&pg, &db), "");
    // from_ms after to_ms: 400.
    let (code, _, _) = http_body(
        admin,
        "POST",
        "/api/replay",
        Some(ADMIN_TOKEN),
        &format!(r#"{{"node":"pg","from_ms":{},"to_ms":{mid}}}"#, mid + 1),
    )
    .unwrap();
    assert_eq!(code, 400);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The journal's size bound: with `max_files = 2`, rotation after rotation deletes the oldest
/// file, so at most three files (the current one and two rotated) are on disk and the first
/// entries are gone. And without `admin.token`, `POST /api/replay` is refused with 403 (it
/// writes to a node), while `GET` still shows the journal.
#[test]
fn the_journal_keeps_max_files_and_replay_needs_a_configured_token() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "jbound");
    pg.psql(&db, "create table w(x int, pad text)").unwrap();
    let dir = std::env::temp_dir().join(format!("helios-journal-bound-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = config(
        &pg,
        TRUST,
        "",
        &format!(
            "{}\n[journal]\nenabled = true\npath = \"{}\"\nmax_file_bytes = 4096\nmax_files = 2\n",
            db_section("app", &db, "transaction", 2, ""),
            dir.display()
        ),
    );
    assert!(!cfg.contains("token"));
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    // ~300 bytes a line: 200 lines are ~60 KiB, some fifteen 4 KiB files' worth.
    let pad = "p".repeat(200);
    for x in 0..200i32 {
        c.execute("insert into w values ($1, $2)", &[&x, &pad])
            .unwrap();
    }
    let files = || -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|f| f.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    // Everything written: the last entry (seq 200) is in journal.jsonl.
    poll(
        std::time::Duration::from_secs(10),
        "the last entry on disk",
        || {
            let t = std::fs::read_to_string(dir.join("journal.jsonl")).unwrap_or_default();
            t.contains("\"seq\":200,").then_some(())
        },
    );
    let names = files();
    assert!(
        names.len() <= 3,
        "max_files = 2 keeps two rotated files: {names:?}"
    );
    assert_eq!(names.len(), 3, "{names:?}");
    assert!(names.contains(&"journal.jsonl".to_string()), "{names:?}");
    let text: String = names
        .iter()
        .map(|n| std::fs::read_to_string(dir.join(n)).unwrap())
        .collect();
    let seqs: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["seq"]
                .as_u64()
                .unwrap()
        })
        .collect();
    let first = *seqs.iter().min().unwrap();
    assert!(
        first > 1,
        "the oldest entries are deleted, yet seq 1 is still there"
    );
    assert_eq!(*seqs.iter().max().unwrap(), 200);
    assert!(
        seqs.len() < 200 && seqs.len() as u64 == 200 - first + 1,
        "what is kept is the newest entries, without holes: {} from {first}",
        seqs.len()
    );
    assert!(proxy.log().contains("journal: deleting"), "{}", proxy.log());
    // GET shows what is kept; POST without a configured token is refused, nothing applied.
    let (code, _, body) = http(admin, "GET", "/api/replay", None).unwrap();
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["entries"].as_u64(), Some(seqs.len() as u64), "{v}");
    let (code, _, body) =
        http_body(admin, "POST", "/api/replay", None, r#"{"node":"pg"}"#).unwrap();
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("set admin.token"), "{body}");
    assert_eq!(
        pg.psql(&db, "select count(*) from w").unwrap().trim(),
        "200"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
