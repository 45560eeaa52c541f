//! Four first-party plugins through the proxy against real PostgreSQL (docs/plugins.md), each in
//! the simple and the extended protocol (a statement prepared once and executed repeatedly is
//! decided at every execution), configured through its `config` table and changed through the
//! admin KV routes as an operator would:
//!
//! - `pgvector-router` and `residency-router` on a primary with a streaming standby (node `r1`
//!   tagged `vector`); which node served a statement is `pg_is_in_recovery()` /
//!   `inet_server_port()`;
//! - `column-mask` with a mask function created in the database;
//! - `audit-chain`, its chain checked by `helios-plugin audit verify` through the admin API and
//!   from the KV export (`kv_persist_path`), before and after one record is tampered with.
//!
//! The guest plugins come from `scripts/build-plugins.sh` (`target/plugins/<name>.wasm`).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use common::*;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};
use postgres::{Client, SimpleQueryMessage};

/// One admin request: (status, body).
fn request(port: u16, method: &str, target: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .unwrap();
    s.write_all(body).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, raw[at + 4..].to_vec())
}

fn put_kv(admin: u16, plugin: &str, key: &str, value: &str) {
    let (st, body) = request(
        admin,
        "PUT",
        &format!("/plugins/{plugin}/kv/{key}"),
        value.as_bytes(),
    );
    assert_eq!(st, 200, "{}", String::from_utf8_lossy(&body));
}

fn get_kv(admin: u16, plugin: &str, key: &str) -> Option<Vec<u8>> {
    let (st, body) = request(admin, "GET", &format!("/plugins/{plugin}/kv/{key}"), b"");
    match st {
        200 => Some(body),
        404 => None,
        s => panic!("GET {key}: {s} {}", String::from_utf8_lossy(&body)),
    }
}

/// The first value of the last row of a simple query.
fn one(c: &mut Client, sql: &str) -> String {
    let msgs = c
        .simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    let mut v = None;
    for m in msgs {
        if let SimpleQueryMessage::Row(r) = m {
            v = Some(r.get(0).unwrap_or("NULL").to_string());
        }
    }
    v.unwrap_or_default()
}

/// Every row's values of a simple query.
fn all_rows(c: &mut Client, sql: &str) -> Vec<Vec<String>> {
    c.simple_query(sql)
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                (0..r.len())
                    .map(|i| r.get(i).unwrap_or("NULL").to_string())
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// `(SQLSTATE, message)` of an ErrorResponse.
fn db_error(e: &postgres::Error) -> (String, String) {
    let d = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not an ErrorResponse: {e}"));
    (d.code().code().to_string(), d.message().to_string())
}

// ---------------------------------------------------------------------------------------------
// A primary and a streaming standby
// ---------------------------------------------------------------------------------------------

struct Pair {
    primary: PgCluster,
    r1: PgCluster,
    db: String,
}

/// Shared by the routing tests of this binary: a database with `items` (points; the operators
/// `<#>` and `<=>` made for points, `<->` is PostgreSQL's own point distance) and `t`.
fn pair() -> Arc<Pair> {
    static SHARED: Mutex<Weak<Pair>> = Mutex::new(Weak::new());
    let mut w = SHARED.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(c) = w.upgrade() {
        return c;
    }
    let primary = PgCluster::start().expect("primary");
    let db = fresh_db(&primary, "proute");
    primary
        .psql(
            &db,
            "create table items(id int primary key, p point); \
             insert into items values (1, '(0,1)'), (2, '(2,2)'), (3, '(5,5)'); \
             create table t(id serial primary key, v text); \
             create function ip_neg(point, point) returns float8 language sql immutable \
               as 'select -($1[0] * $2[0] + $1[1] * $2[1])'; \
             create operator <#> (leftarg = point, rightarg = point, function = ip_neg); \
             create function cos_dist(point, point) returns float8 language sql immutable \
               as 'select 1 - ($1[0] * $2[0] + $1[1] * $2[1]) / nullif(sqrt(($1[0]^2 + $1[1]^2) * ($2[0]^2 + $2[1]^2)), 0)'; \
             create operator <=> (leftarg = point, rightarg = point, function = cos_dist)",
        )
        .unwrap();
    let r1 = PgCluster::standby_of(&primary, PgOptions::default()).expect("standby r1");
    r1.wait_replayed(&primary, Duration::from_secs(30)).unwrap();
    let c = Arc::new(Pair { primary, r1, db });
    *w = Arc::downgrade(&c);
    c
}

/// Nodes `p` (role auto) and `r1` (replica, tags `vector` and `ann`); database `app` on both,
/// without read/write split (so default routing is the primary).
fn topo_config(c: &Pair, plugins: &str) -> String {
    format!(
        "[server]\nlisten = [\"127.0.0.1:${{HELIOS_TEST_PORT}}\"]\ncores = 2\nshutdown_timeout_ms = 5000\n\n\
         [admin]\nlisten = \"127.0.0.1:${{HELIOS_TEST_ADMIN_PORT}}\"\n\n\
         [io]\nbackend = \"${{HELIOS_TEST_IO_BACKEND:-uring}}\"\n\n\
         [auth]\nmethod = \"trust\"\nadmin_users = [\"{SUPERUSER}\"]\n\n\
         [[nodes]]\nname = \"p\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"auto\"\n\n\
         [[nodes]]\nname = \"r1\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\ntags = {{ vector = true, ann = true }}\n\n\
         [health]\ninterval_ms = 100\ntimeout_ms = 1000\nfailures = 2\nsuccesses = 1\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n\
         {}\n{plugins}",
        c.primary.port,
        c.r1.port,
        db_section("app", &c.db, "transaction", 4, "nodes = [\"p\", \"r1\"]")
    )
}

const TOP_K: &str = "SELECT pg_is_in_recovery() FROM items ORDER BY p <-> point '(0,0)' LIMIT 1";

#[test]
fn pgvector_router_sends_top_k_queries_to_the_vector_node() {
    let c = pair();
    let plugins = plugins_section("", &plugin_entry("pgvector-router", ""));
    let proxy = start_proxy(&topo_config(&c, &plugins), None);
    let admin = proxy.admin_port();
    let mut cl = connect(&proxy, SUPERUSER, "", "app");
    // r1 serves once the health checker has probed it.
    poll(Duration::from_secs(15), "a top-K query on r1", || {
        (one(&mut cl, TOP_K) == "t").then_some(())
    });
    for op in ["<->", "<#>", "<=>"] {
        let sql =
            format!("SELECT pg_is_in_recovery() FROM items ORDER BY p {op} point '(1,1)' LIMIT 2");
        assert_eq!(one(&mut cl, &sql), "t", "{sql}");
    }
    // The answer is the nearest neighbours, computed on the standby.
    assert_eq!(
        all_rows(
            &mut cl,
            "SELECT id, inet_server_port() FROM items ORDER BY p <-> point '(0,0)' LIMIT 2"
        ),
        [
            vec!["1".to_string(), c.r1.port.to_string()],
            vec!["2".to_string(), c.r1.port.to_string()]
        ]
    );
    // Not top-K queries: default routing (the primary).
    for sql in [
        "SELECT pg_is_in_recovery(), 'ORDER BY p <-> point' FROM items LIMIT 1",
        "SELECT pg_is_in_recovery() /* ORDER BY p <-> point '(0,0)' */",
        "SELECT pg_is_in_recovery(), p <-> point '(0,0)' FROM items LIMIT 1",
        "SELECT pg_is_in_recovery() FROM items ORDER BY id LIMIT 1",
    ] {
        assert_eq!(one(&mut cl, sql), "f", "{sql}");
    }
    // A write whose subquery orders by distance stays on the primary (it must).
    assert_eq!(
        one(
            &mut cl,
            "WITH d AS (DELETE FROM t WHERE id IN (SELECT id FROM items ORDER BY p <-> point '(0,0)' LIMIT 1) RETURNING 1) \
             SELECT pg_is_in_recovery()"
        ),
        "f"
    );

    // Extended protocol: prepared once, every execution routed.
    let knn = cl
        .prepare("SELECT pg_is_in_recovery() FROM items ORDER BY p <-> $1::text::point LIMIT 1")
        .unwrap();
    let plain = cl
        .prepare("SELECT pg_is_in_recovery() FROM items WHERE id = $1")
        .unwrap();
    for _ in 0..3 {
        assert!(cl.query_one(&knn, &[&"(1,1)"]).unwrap().get::<_, bool>(0));
        assert!(!cl.query_one(&plain, &[&1i32]).unwrap().get::<_, bool>(0));
    }

    // The operator changes the tag to follow (KV `tag`): no node has `gpu` → default routing,
    // `ann` (r1 has it) → r1 again.
    put_kv(admin, "pgvector-router", "tag", "\"gpu\"");
    poll(
        Duration::from_secs(10),
        "tag gpu: top-K on the primary",
        || (one(&mut cl, TOP_K) == "f").then_some(()),
    );
    for _ in 0..3 {
        assert!(!cl.query_one(&knn, &[&"(1,1)"]).unwrap().get::<_, bool>(0));
    }
    put_kv(admin, "pgvector-router", "tag", "\"ann\"");
    poll(Duration::from_secs(10), "tag ann: top-K on r1", || {
        (one(&mut cl, TOP_K) == "t").then_some(())
    });
    assert!(cl.query_one(&knn, &[&"(1,1)"]).unwrap().get::<_, bool>(0));
}

#[test]
fn residency_router_keeps_sessions_in_their_region() {
    let c = pair();
    let plugins = plugins_section(
        "",
        &plugin_entry(
            "residency-router",
            "config = { regions = { eu = \"r1\", us = \"p\" }, enforce = true }",
        ),
    );
    let proxy = start_proxy(&topo_config(&c, &plugins), None);
    let admin = proxy.admin_port();
    let (p, r1) = (c.primary.port.to_string(), c.r1.port.to_string());

    let mut eu = connect(&proxy, SUPERUSER, "", "app");
    // The SET is routed to r1 too: poll until the health checker has it serving.
    poll(Duration::from_secs(15), "eu on r1", || {
        eu.batch_execute("SET helios.region = 'eu'").ok()?;
        (one(&mut eu, "SELECT inet_server_port()") == r1).then_some(())
    });
    let port_of = eu.prepare("SELECT inet_server_port()::text").unwrap();
    for _ in 0..3 {
        assert_eq!(one(&mut eu, "SELECT inet_server_port()"), r1);
        assert_eq!(eu.query_one(&port_of, &[]).unwrap().get::<_, String>(0), r1);
    }
    // A write from an EU session is not sent out of region: the in-region node is a standby,
    // which refuses it (fails closed).
    let e = eu
        .simple_query("INSERT INTO t(v) VALUES ('eu')")
        .unwrap_err();
    assert_eq!(db_error(&e).0, "25006", "{e:?}");

    let mut us = connect(&proxy, SUPERUSER, "", "app");
    us.batch_execute("SET helios.region = 'US'").unwrap();
    let us_port = us.prepare("SELECT inet_server_port()::text").unwrap();
    for _ in 0..3 {
        assert_eq!(one(&mut us, "SELECT inet_server_port()"), p);
        assert_eq!(us.query_one(&us_port, &[]).unwrap().get::<_, String>(0), p);
    }

    // No region: default routing.
    let mut none = connect(&proxy, SUPERUSER, "", "app");
    assert_eq!(one(&mut none, "SELECT inet_server_port()"), p);

    // A region without a node, enforced: every execution refused, in both protocols.
    let mut apac = connect(&proxy, SUPERUSER, "", "app");
    let st = apac.prepare("SELECT inet_server_port()::text").unwrap();
    apac.batch_execute("SET helios.region = 'apac'")
        .unwrap_err();
    // (The SET itself is routed too, and refused; the attribute is set all the same, as the
    // proxy records `SET helios.*` before the hooks run.)
    for _ in 0..3 {
        let e = apac.simple_query("SELECT 1").unwrap_err();
        let (code, msg) = db_error(&e);
        assert_eq!(code, "42000");
        assert_eq!(
            msg,
            "residency-router: no in-region replica for user (region apac)"
        );
        let e = apac.query_one(&st, &[]).unwrap_err();
        assert_eq!(db_error(&e).0, "42000", "{e:?}");
    }
    // The operator turns enforcement off: default routing for apac.
    put_kv(admin, "residency-router", "enforce", "false");
    poll(Duration::from_secs(10), "apac on the primary", || {
        apac.simple_query("SELECT 1").ok()
    });
    assert_eq!(one(&mut apac, "SELECT inet_server_port()"), p);
    assert_eq!(apac.query_one(&st, &[]).unwrap().get::<_, String>(0), p);
    // … and maps apac to r1.
    put_kv(
        admin,
        "residency-router",
        "regions",
        r#"{"eu": "r1", "us": "p", "apac": "r1"}"#,
    );
    poll(Duration::from_secs(10), "apac on r1", || {
        (one(&mut apac, "SELECT inet_server_port()") == r1).then_some(())
    });
    assert_eq!(apac.query_one(&st, &[]).unwrap().get::<_, String>(0), r1);
}

// ---------------------------------------------------------------------------------------------
// column-mask
// ---------------------------------------------------------------------------------------------

#[test]
fn column_mask_masks_by_role_and_refuses_what_it_cannot_mask() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "cmask");
    pg.psql(
        &db,
        "create table customers(id int primary key, name text, ssn text); \
         insert into customers values (1, 'ann', '123-45-6789'), (2, 'bob', '987-65-4321'); \
         create function mask_ssn(text) returns text language sql immutable \
           as $$select 'XXX-XX-' || right($1, 4)$$",
    )
    .unwrap();
    let entry = plugin_entry(
        "column-mask",
        "config = { rules = [{ table = \"customers\", column = \"ssn\", mask_function = \"mask_ssn\", \
         unmask_role = \"pii_reader\" }], trust_session_roles = true }",
    );
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, ""),
    ) + &plugins_section("", &entry);
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, "", "app");

    // Simple protocol: masked, the column keeps its name.
    let msgs = c
        .simple_query("SELECT id, ssn FROM customers ORDER BY id")
        .unwrap();
    let rows: Vec<_> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .collect();
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].columns()[1].name(), "ssn");
    assert_eq!(
        (rows[0].get(1), rows[1].get(1)),
        (Some("XXX-XX-6789"), Some("XXX-XX-4321"))
    );
    assert_eq!(
        one(&mut c, "SELECT upper(ssn) FROM customers WHERE id = 1"),
        "XXX-XX-6789"
    );
    // Not masked when the word is not the column.
    assert_eq!(
        one(&mut c, "SELECT 'ssn' || name FROM customers WHERE id = 1"),
        "ssnann"
    );
    // What a rewrite cannot mask is refused.
    for (sql, want) in [
        ("SELECT * FROM customers", "SELECT *"),
        ("SELECT c FROM customers c", "whole-row"),
        ("TABLE customers", "TABLE/COPY"),
        (
            "SELECT id FROM customers WHERE ssn = '123-45-6789'",
            "select list",
        ),
    ] {
        let e = c.simple_query(sql).unwrap_err();
        let (code, msg) = db_error(&e);
        assert_eq!(code, "42000", "{sql}");
        assert!(
            msg.starts_with("column-mask:") && msg.contains(want),
            "{sql}: {msg}"
        );
    }

    // Extended protocol: the prepared statement is masked at every execution, and the role
    // decides per execution.
    let st = c
        .prepare("SELECT ssn FROM customers WHERE id = $1")
        .unwrap();
    for _ in 0..3 {
        let v: String = c.query_one(&st, &[&1i32]).unwrap().get(0);
        assert_eq!(v, "XXX-XX-6789");
    }
    let e = c.query("SELECT * FROM customers", &[]).unwrap_err();
    assert_eq!(db_error(&e).0, "42000");
    c.batch_execute("SET helios.roles = 'analyst,pii_reader'")
        .unwrap();
    for _ in 0..3 {
        let v: String = c.query_one(&st, &[&1i32]).unwrap().get(0);
        assert_eq!(v, "123-45-6789");
    }
    assert_eq!(
        one(&mut c, "SELECT ssn FROM customers WHERE id = 2"),
        "987-65-4321"
    );
    assert_eq!(all_rows(&mut c, "SELECT * FROM customers").len(), 2);

    // The operator stops trusting session roles (KV): masked again despite SET helios.roles.
    put_kv(admin, "column-mask", "trust_session_roles", "false");
    poll(Duration::from_secs(10), "masked again", || {
        (one(&mut c, "SELECT ssn FROM customers WHERE id = 2") == "XXX-XX-4321").then_some(())
    });
    let v: String = c.query_one(&st, &[&1i32]).unwrap().get(0);
    assert_eq!(v, "XXX-XX-6789");
    // Without rules nothing is masked.
    let (st_code, _) = request(admin, "DELETE", "/plugins/column-mask/kv/rules", b"");
    assert_eq!(st_code, 200);
    poll(Duration::from_secs(10), "no rules", || {
        (one(&mut c, "SELECT ssn FROM customers WHERE id = 2") == "987-65-4321").then_some(())
    });
    // A broken policy fails closed.
    put_kv(admin, "column-mask", "rules", "{not json");
    let e = poll(Duration::from_secs(10), "broken rules refuse", || {
        c.simple_query("SELECT 1").err()
    });
    assert!(db_error(&e).1.contains("do not parse"), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// audit-chain
// ---------------------------------------------------------------------------------------------

/// The `helios-plugin` CLI (package helios-plugin-host). `cargo test --workspace` (scripts/test.sh)
/// builds it beside this test; run alone, build it with
/// `cargo build -p helios-engine -p helios-plugin-host --tests --bins` (a build of the binary
/// alone selects other dependency features and recompiles wasmtime). Built here only if missing.
fn helios_plugin_cli() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let bin = target.join("debug/helios-plugin");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let st = Command::new(cargo)
            .current_dir(&root)
            .args([
                "build",
                "-q",
                "-p",
                "helios-plugin-host",
                "--bin",
                "helios-plugin",
            ])
            .status()
            .expect("run cargo build");
        assert!(st.success(), "building helios-plugin failed");
    }
    bin
}

fn verify(cli: &PathBuf, source: &[&str]) -> (bool, String) {
    let out = Command::new(cli)
        .args(["audit", "verify"])
        .args(source)
        .output()
        .expect("run helios-plugin");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn audit_chain_records_every_execution_and_the_verifier_finds_a_tampered_record() {
    let cli = helios_plugin_cli();
    let pg = shared_pg();
    let db = fresh_db(&pg, "audit");
    let dir = std::env::temp_dir().join(format!("helios-audit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let export = dir.join("kv.json");
    let _ = std::fs::remove_file(&export);
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, ""),
    ) + &plugins_section(
        &format!("kv_persist_path = \"{}\"", export.display()),
        &plugin_entry("audit-chain", "config = { include_statement = true }"),
    );
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    for _ in 0..3 {
        c.simple_query("select 1").unwrap();
    }
    let e = c.simple_query("select * from nope").unwrap_err();
    assert_eq!(db_error(&e).0, "42P01");
    let st = c.prepare("select $1::int + 1").unwrap();
    for i in 0..3i32 {
        assert_eq!(c.query_one(&st, &[&i]).unwrap().get::<_, i32>(0), i + 1);
    }
    // 7 executions (a Parse is none) → 7 records, on the client's shard.
    let shard = poll(Duration::from_secs(10), "7 records", || {
        (0..2u64).find(|s| {
            get_kv(admin, "audit-chain", &format!("chain:{s}:seq")).as_deref() == Some(b"7")
        })
    });
    let other = 1 - shard;
    assert_eq!(
        get_kv(admin, "audit-chain", &format!("chain:{other}:seq")),
        None
    );
    let record = |seq: u64| -> serde_json::Value {
        let raw = get_kv(admin, "audit-chain", &format!("chain:{shard}:record:{seq}"))
            .unwrap_or_else(|| panic!("record {seq}"));
        serde_json::from_slice(&raw).unwrap()
    };
    let recs: Vec<serde_json::Value> = (0..7).map(record).collect();
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    for (i, r) in recs.iter().enumerate() {
        assert_eq!(r["seq"], i as u64, "{r}");
        assert_eq!(r["client_ip"], "127.0.0.1", "{r}");
        assert_eq!(r["target_node"], "pg", "{r}");
        assert_eq!(r["user"], SUPERUSER, "{r}");
        let ts = r["timestamp"].as_u64().unwrap();
        assert!(ts <= now_us && now_us - ts < 120_000_000, "{r}");
        assert_eq!(r["fingerprint"].as_str().unwrap().len(), 64, "{r}");
    }
    assert_eq!(recs[0]["prev_hash"], "0".repeat(64));
    let failed = &recs[3];
    assert_eq!(failed["success"], false, "{failed}");
    assert_eq!(failed["sqlstate"], "42P01");
    assert!(failed["error"].as_str().unwrap().contains("nope"));
    // Same statement shape, same fingerprint; the three prepared executions are one shape.
    assert_eq!(recs[0]["fingerprint"], recs[2]["fingerprint"]);
    assert_eq!(recs[4]["fingerprint"], recs[6]["fingerprint"]);
    assert_ne!(recs[0]["fingerprint"], recs[4]["fingerprint"]);
    assert!(recs[4]["statement"].as_str().unwrap().contains("$1"));

    let url = format!("http://127.0.0.1:{admin}");
    let (ok, out) = verify(&cli, &["--admin", &url, "--max-shards", "4"]);
    assert!(ok, "{out}");
    assert!(out.contains("OK — 7 records in 1 chains"), "{out}");

    // Tamper with record 2 through the admin KV route, as someone with admin access could.
    let key = format!("chain:{shard}:record:2");
    let raw = String::from_utf8(get_kv(admin, "audit-chain", &key).unwrap()).unwrap();
    let forged = raw.replace("\"success\":true", "\"success\":false");
    assert_ne!(raw, forged);
    put_kv(admin, "audit-chain", &key, &forged);
    let (ok, out) = verify(&cli, &["--admin", &url, "--max-shards", "4"]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("shard {shard}: 7 records: BROKEN at record 3"))
            && out.contains("not the SHA-256 of record 2"),
        "{out}"
    );
    // The KV export (saved at most once a second) shows the same.
    let export_arg = export.display().to_string();
    let out = poll(
        Duration::from_secs(10),
        "the export to show the tamper",
        || {
            let (ok, out) = verify(&cli, &["--kv-file", &export_arg, "--max-shards", "4"]);
            (!ok && out.contains("BROKEN at record 3")).then_some(out)
        },
    );
    assert!(out.contains("not the SHA-256 of record 2"), "{out}");
    // The chain goes on after the tamper; restoring the record makes it whole again.
    c.simple_query("select 2").unwrap();
    poll(Duration::from_secs(10), "8 records", || {
        (get_kv(admin, "audit-chain", &format!("chain:{shard}:seq")).as_deref() == Some(b"8"))
            .then_some(())
    });
    put_kv(admin, "audit-chain", &key, &raw);
    let (ok, out) = verify(&cli, &["--admin", &url, "--max-shards", "4"]);
    assert!(ok && out.contains("8 records"), "{out}");
    // A wrong plugin name is an error, not an empty OK.
    let (ok, out) = verify(
        &cli,
        &["--admin", &url, "--plugin", "nobody", "--max-shards", "2"],
    );
    assert!(!ok, "{out}");
    drop(c);
    drop(proxy);
    let _ = std::fs::remove_dir_all(&dir);
}
