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
