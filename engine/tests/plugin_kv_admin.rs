//! The admin API reaches the plugins' KV store: `GET/PUT/DELETE /plugins/{name}/kv/{key}`,
//! end to end with the tenant-budget example plugin (post_query counts a tenant's queries in KV,
//! pre_query blocks the tenant once its budget, also in KV, is used up).

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use common::*;

/// One request with a body; returns (status, body).
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

#[test]
fn admin_api_reads_writes_and_deletes_plugin_kv() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "pkv");
    let plugins = format!(
        "\n[plugins]\nenabled = true\ntimeout_ms = 5000\n\n[[plugins.plugin]]\nname = \"budget\"\nsource = \"{}\"\n\
         config = {{ max_queries_per_tenant = 1000 }}\n",
        plugin_wasm("tenant-budget").display()
    );
    let cfg = config(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, ""),
    ) + &plugins;
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();

    // The config seed is visible through the API.
    let (st, body) = request(
        admin,
        "GET",
        "/plugins/budget/kv/max_queries_per_tenant",
        b"",
    );
    assert_eq!((st, body.as_slice()), (200, &b"1000"[..]));

    let mut c = connect(&proxy, helios_testkit::SUPERUSER, PW, "app");
    c.batch_execute("SET helios.tenant = 'acme'").unwrap();
    for _ in 0..3 {
        c.simple_query("select 1").unwrap();
    }
    // post_query counted them (writes replicate to every shard and the host store).
    poll(Duration::from_secs(10), "used:acme >= 3", || {
        let (st, body) = request(admin, "GET", "/plugins/budget/kv/used:acme", b"");
        (st == 200 && String::from_utf8_lossy(&body).parse::<u64>().unwrap_or(0) >= 3).then_some(())
    });

    // An operator sets the budget to zero: the next query is blocked by the plugin.
    let (st, _) = request(
        admin,
        "PUT",
        "/plugins/budget/kv/max_queries_per_tenant",
        b"0",
    );
    assert_eq!(st, 200);
    let e = poll(Duration::from_secs(10), "the budget blocks", || {
        c.simple_query("select 1").err()
    });
    assert_eq!(sqlstate(&e), Some("42000"), "{e:?}");
    let msg = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(msg.contains("over its budget"), "{msg}");
    // post_query ran for the refused statement too (success false).
    poll(Duration::from_secs(10), "failed:acme >= 1", || {
        let (st, body) = request(admin, "GET", "/plugins/budget/kv/failed:acme", b"");
        (st == 200 && String::from_utf8_lossy(&body).parse::<u64>().unwrap_or(0) >= 1).then_some(())
    });

    // Deleting the budget lifts it.
    let (st, _) = request(
        admin,
        "DELETE",
        "/plugins/budget/kv/max_queries_per_tenant",
        b"",
    );
    assert_eq!(st, 200);
    poll(Duration::from_secs(10), "queries run again", || {
        c.simple_query("select 1").ok()
    });
    let (st, _) = request(
        admin,
        "GET",
        "/plugins/budget/kv/max_queries_per_tenant",
        b"",
    );
    assert_eq!(st, 404);
    // An unknown plugin is a 404 with a JSON reason; a wrong method a 405.
    let (st, body) = request(admin, "GET", "/plugins/nobody/kv/k", b"");
    assert_eq!(st, 404, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("error"));
    let (st, _) = request(admin, "POST", "/plugins/budget/kv/k", b"");
    assert_eq!(st, 405);
}
