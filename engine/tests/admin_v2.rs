//! Admin REST v2 against a running proxy and real PostgreSQL: `/nodes` and the node switch
//! (checked through the proxy), `/api/sql` (token, read-only, limits), `/api/shadow` between two
//! nodes, `/plugins` counters merged across shards.
//!
//! The two nodes are two names for the test cluster whose databases differ (`pg` serves `app`
//! from one database, `pg2` serves `app2` from another).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use helios_testkit::SUPERUSER;
use serde_json::{json, Value};

/// One request; (status, JSON body).
fn call(port: u16, method: &str, target: &str, token: Option<&str>, body: &str) -> (u16, Value) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let at = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..at]).into_owned();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let v = serde_json::from_slice(&raw[at + 4..]).unwrap_or(Value::Null);
    (status, v)
}

fn api(port: u16, method: &str, target: &str, body: Value) -> (u16, Value) {
    call(port, method, target, Some(ADMIN_TOKEN), &body.to_string())
}

fn query_code(proxy: &helios_testkit::proxy::Proxy, db: &str) -> Option<String> {
    match try_connect(proxy, SUPERUSER, "", db).and_then(|mut c| c.simple_query("select 1")) {
        Ok(_) => None,
        Err(e) => Some(sqlstate(&e).unwrap_or("none").to_string()),
    }
}

#[test]
fn disabled_node_takes_no_new_server_connections() {
    let pg = shared_pg();
    let proxy = two_node_admin_proxy(&pg, "", "");
    let admin = proxy.admin_port();

    let (st, v) = api(admin, "GET", "/nodes", Value::Null);
    assert_eq!(st, 200, "{v}");
    let names: Vec<&str> = v["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["pg", "pg2"]);
    assert_eq!(v["nodes"][1]["enabled"], true);
    assert_eq!(v["nodes"][1]["pools"][0]["database"], "app2");
    assert_eq!(v["nodes"][1]["port"], pg.port);

    // Both work; a client of app2 holds its server connection (session pooling).
    let mut held = connect(&proxy, SUPERUSER, "", "app2");
    held.simple_query("select 1").unwrap();
    assert_eq!(query_code(&proxy, "app"), None);

    // Without the token: 401, nothing changes.
    assert_eq!(call(admin, "POST", "/nodes/pg2/disable", None, "").0, 401);
    assert_eq!(query_code(&proxy, "app2"), None);

    let (st, v) = api(admin, "POST", "/nodes/pg2/disable", Value::Null);
    assert_eq!((st, &v["enabled"]), (200, &json!(false)), "{v}");
    // A new client of app2 gets no server connection; app (node pg) is untouched; the client
    // that already had one keeps it.
    assert_eq!(query_code(&proxy, "app2").as_deref(), Some("57P03"));
    assert_eq!(query_code(&proxy, "app"), None);
    held.simple_query("select 1").unwrap();
    let (_, v) = api(admin, "GET", "/nodes", Value::Null);
    assert_eq!(
        (&v["nodes"][0]["enabled"], &v["nodes"][1]["enabled"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(
        api(admin, "POST", "/nodes/nope/disable", Value::Null).0,
        404
    );

    let (st, _) = api(admin, "POST", "/nodes/pg2/enable", Value::Null);
    assert_eq!(st, 200);
    assert_eq!(query_code(&proxy, "app2"), None);
}

#[test]
fn sql_runs_reads_with_limits_and_needs_the_token() {
    let pg = shared_pg();
    // sql_max_rows and sql_timeout_ms change what the endpoint does (checked below).
    let proxy = two_node_admin_proxy(&pg, "sql_max_rows = 50\nsql_timeout_ms = 1000", "");
    let admin = proxy.admin_port();
    let sql = |body: Value| api(admin, "POST", "/api/sql", body);

    let body = json!({"sql": "select id, name from t where id <= 3 order by id", "node": "pg"});
    assert_eq!(
        call(admin, "POST", "/api/sql", None, &body.to_string()).0,
        401
    );
    let (st, v) = sql(body);
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["columns"], json!(["id", "name"]));
    assert_eq!(v["rows"], json!([["1", "n1"], ["2", "n2"], ["3", "n3"]]));
    assert_eq!(
        (&v["truncated"], &v["read_only"]),
        (&json!(false), &json!(true))
    );

    // Default node: the first; NULLs are null.
    let (st, v) = sql(json!({"sql": "select null::int as x, 'a' as y"}));
    assert_eq!(
        (st, &v["rows"], &v["node"]),
        (200, &json!([[null, "a"]]), &json!("pg")),
        "{v}"
    );

    // Row limit: admin.sql_max_rows, and a lower per-request max_rows.
    let (st, v) = sql(json!({"sql": "select g from generate_series(1, 10000) g"}));
    assert_eq!(
        (st, v["row_count"].as_u64(), &v["truncated"]),
        (200, Some(50), &json!(true))
    );
    let (_, v) = sql(json!({"sql": "select g from generate_series(1, 10000) g", "max_rows": 5}));
    assert_eq!(v["row_count"], 5);

    // Writes are refused in read-only mode (the server says so), as is a second statement.
    let (st, v) = sql(json!({"sql": "insert into t values (99, 'x') returning id"}));
    assert_eq!(st, 400, "{v}");
    assert!(v["error"].as_str().unwrap().contains("not a read"), "{v}");
    let (st, v) = sql(json!({"sql": "select 1; drop table t"}));
    assert_eq!((st, &v["sqlstate"]), (400, &json!("42601")), "{v}");
    let (st, v) = sql(json!({"sql": "select nextval('nope')"}));
    assert_eq!(st, 400, "{v}");
    // A statement that takes a while (0.8 s, under the 1 s limit) does not stop the admin
    // thread from taking in the shards' snapshots (100 ms apart, 8 fit in the channel): every
    // query run through the proxy meanwhile is in the latency totals afterwards.
    let traffic = {
        let mut c = connect(&proxy, SUPERUSER, "", "app");
        std::thread::spawn(move || {
            let mut n = 0u64;
            let start = std::time::Instant::now();
            while start.elapsed() < Duration::from_millis(1200) {
                c.simple_query("select 1").unwrap();
                n += 1;
            }
            n
        })
    };
    let (st, v) = sql(json!({"sql": "select pg_sleep(0.8)"}));
    assert_eq!(st, 200, "{v}");
    let sent = traffic.join().unwrap();
    poll(
        Duration::from_secs(10),
        "every query in /histograms",
        || {
            let (_, h) = api(admin, "GET", "/histograms?db=app", Value::Null);
            (h["count"].as_u64() == Some(sent)).then_some(())
        },
    );
    // Time limit: admin.sql_timeout_ms.
    let (st, v) = sql(json!({"sql": "select pg_sleep(5)"}));
    assert_eq!((st, &v["sqlstate"]), (422, &json!("57014")), "{v}");
    // Bad requests.
    assert_eq!(sql(json!({"sql": "select 1", "node": "nope"})).0, 404);
    assert_eq!(sql(json!({"node": "pg"})).0, 400);
    assert_eq!(sql(json!({"sql": 1})).0, 400);
    assert_eq!(sql(json!({"sql": "select 1", "colour": "red"})).0, 400);
    assert_eq!(
        call(admin, "POST", "/api/sql", Some(ADMIN_TOKEN), "{nope").0,
        400
    );
    assert_eq!(call(admin, "GET", "/api/sql", Some(ADMIN_TOKEN), "").0, 405);

    // Write mode on request: the change is there afterwards.
    let (st, v) = sql(json!({"sql": "insert into t values (99, 'x')", "read_only": false}));
    assert_eq!((st, &v["affected"]), (200, &json!(1)), "{v}");
    let (_, v) = sql(json!({"sql": "select count(*) from t"}));
    assert_eq!(v["rows"], json!([["21"]]));
}

#[test]
fn shadow_compares_two_nodes() {
    let pg = shared_pg();
    let proxy = two_node_admin_proxy(&pg, "", "");
    let admin = proxy.admin_port();
    let shadow = |sql: &str, a: &str, b: &str| {
        api(
            admin,
            "POST",
            "/api/shadow",
            json!({"sql": sql, "source_node": a, "target_node": b}),
        )
    };
    // Same rows in a different physical order: a match.
    let (st, v) = shadow("select id, name from t", "pg", "pg2");
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["match"], true, "{v}");
    assert_eq!(
        (&v["source"]["rows"], &v["target"]["rows"]),
        (&json!(20), &json!(20))
    );
    assert_eq!(v["source"]["hash"], v["target"]["hash"]);
    assert!(v["first_difference"].is_null());

    // One row changed on the target: no match, and the first differing rows are named.
    let c = api(
        admin,
        "POST",
        "/api/sql",
        json!({"sql": "update t set name = 'changed' where id = 7", "node": "pg2", "read_only": false}),
    );
    assert_eq!(c.0, 200, "{}", c.1);
    let (st, v) = shadow("select id, name from t", "pg", "pg2");
    assert_eq!((st, &v["match"]), (200, &json!(false)), "{v}");
    assert_eq!(v["first_difference"]["source_row"], json!(["7", "n7"]));
    assert_eq!(v["first_difference"]["target_row"], json!(["7", "changed"]));

    // Not a read: 400; unknown node: 404; missing field: 400.
    let (st, v) = shadow("delete from t", "pg", "pg2");
    assert_eq!(st, 400, "{v}");
    assert_eq!(shadow("select 1", "pg", "nope").0, 404);
    assert_eq!(
        api(admin, "POST", "/api/shadow", json!({"sql": "select 1"})).0,
        400
    );
}

#[test]
fn plugins_report_counters_merged_across_shards() {
    let pg = shared_pg();
    // A signed artefact: block-drop with a sidecar manifest (version 1.2.3) and a signature of
    // its wasm bytes by the key `release`, which the trust root holds (docs/plugin-abi.md, with openssl).
    let dir = std::env::temp_dir().join(format!("helios-v2-signed-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    let wasm = dir.join("block-drop.wasm");
    std::fs::copy(plugin_wasm("block-drop"), &wasm).unwrap();
    std::fs::write(
        dir.join("block-drop.json"),
        r#"{"schema_version": "1.0", "name": "block-drop", "version": "1.2.3", "hooks": ["pre_query"]}"#,
    )
    .unwrap();
    let out = std::process::Command::new("bash")
        .arg("-c")
        .arg(
            "set -e
             openssl genpkey -algorithm Ed25519 -out signing.pem
             openssl pkey -in signing.pem -pubout -outform DER | tail -c 32 | base64 > keys/release.pub
             openssl pkeyutl -sign -inkey signing.pem -rawin -in block-drop.wasm | base64 -w0 > block-drop.sig",
        )
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plugins = plugins_section(
        &format!("trust_root = \"{}\"", dir.join("keys").display()),
        &format!(
            "[[plugins.plugin]]\nname = \"block-drop\"\nsource = \"{}\"\n",
            wasm.display()
        ),
    );
    let proxy = two_node_admin_proxy(&pg, "", &plugins);
    let admin = proxy.admin_port();
    // Clients spread over both shards.
    let mut clients: Vec<_> = (0..4)
        .map(|_| connect(&proxy, SUPERUSER, "", "app"))
        .collect();
    for c in &mut clients {
        for _ in 0..5 {
            c.simple_query("select 1").unwrap();
        }
    }
    let v = poll(Duration::from_secs(10), "/plugins counts 20 calls", || {
        let (st, v) = api(admin, "GET", "/plugins", Value::Null);
        (st == 200 && v["plugins"][0]["invocations"].as_u64() >= Some(20)).then_some(v)
    });
    let p = &v["plugins"][0];
    assert_eq!(p["name"], "block-drop", "{v}");
    assert!(
        p["hooks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h == "pre_query"),
        "{v}"
    );
    assert_eq!(p["errors"], 0, "{v}");
    assert_eq!(p["state"], "active", "{v}");
    let (p50, p99) = (p["time_p50_us"].as_u64(), p["time_p99_us"].as_u64());
    assert!(p50.is_some() && p99 >= p50, "{v}");
    assert!(p["sha256"].as_str().unwrap().len() == 64, "{v}");
    // The manifest's version and the trust root's label of the key that signed it.
    assert_eq!(p["version"], "1.2.3", "{v}");
    assert_eq!(p["signer"], "release", "{v}");
    let _ = std::fs::remove_dir_all(&dir);
}
