//! The admin API over real HTTP on loopback: a port from the OS, snapshots built here, a tiny
//! std::net client.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use helios_admin::{
    new_histogram, record_us, AdminCommand, ClientInfo, Metric, NodeStatus, PoolStats, ServerInfo,
    ShardSnapshot, StaticInfo,
};
use helios_config::AdminConfig;
use serde_json::{json, Value};

struct Admin {
    addr: SocketAddr,
    snapshots: Option<Sender<ShardSnapshot>>,
    commands: Receiver<AdminCommand>,
    thread: Option<JoinHandle<()>>,
    token: Option<String>,
}

impl Admin {
    fn start(token: Option<&str>, max_body_bytes: usize) -> Admin {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = AdminConfig {
            token: token.map(str::to_string),
            max_body_bytes,
            snapshot_interval_ms: 50,
            ..AdminConfig::default()
        };
        let (stx, srx) = crossbeam_channel::bounded(64);
        let (ctx, crx) = crossbeam_channel::bounded(4);
        let info = StaticInfo {
            version: "9.9.9-test".into(),
            config_json: helios_admin::live_config(json!({
                "databases": { "app": { "pool_size": 5 }, "idle": { "pool_size": 1, "node": "pg2", "dbname": "idle_db" } },
                "nodes": [ { "name": "pg1", "host": "127.0.0.1", "port": 5432 },
                           { "name": "pg2", "host": "127.0.0.1", "port": 5433 } ],
                "admin": { "listen": "127.0.0.1:0" },
            })),
            plugin_kv: None,
            shards: 2,
            node_switches: Default::default(),
            topology: None,
            signal: None,
        };
        let thread = helios_admin::spawn_on(listener, &cfg, srx, ctx, info).unwrap();
        Admin {
            addr,
            snapshots: Some(stx),
            commands: crx,
            thread: Some(thread),
            token: token.map(str::to_string),
        }
    }

    fn send(&self, s: ShardSnapshot) {
        self.snapshots.as_ref().unwrap().send(s).unwrap();
    }

    /// Sends a raw request and returns (status, headers lower-cased, body).
    fn raw(&self, request: &[u8]) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut s = TcpStream::connect(self.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request).unwrap();
        let mut out = Vec::new();
        s.read_to_end(&mut out).unwrap();
        let end = out
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("a response head");
        let head = std::str::from_utf8(&out[..end]).unwrap();
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line.split(' ').nth(1).unwrap().parse().unwrap();
        let headers: Vec<(String, String)> = lines
            .map(|l| {
                let (n, v) = l.split_once(':').unwrap();
                (n.to_ascii_lowercase(), v.trim().to_string())
            })
            .collect();
        let body = out[end + 4..].to_vec();
        let len: usize = headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .map(|(_, v)| v.parse().unwrap())
            .expect("Content-Length");
        if !request.starts_with(b"HEAD ") {
            assert_eq!(len, body.len(), "Content-Length matches the body");
        }
        (status, headers, body)
    }

    fn request(
        &self,
        method: &str,
        target: &str,
        token: Option<&str>,
        body: &[u8],
    ) -> (u16, Vec<(String, String)>, Vec<u8>) {
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: test\r\nContent-Length: {}\r\n",
            body.len()
        );
        if let Some(t) = token {
            req.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        req.push_str("\r\n");
        let mut raw = req.into_bytes();
        raw.extend_from_slice(body);
        self.raw(&raw)
    }

    fn get_text(&self, target: &str) -> (u16, String) {
        let (st, _, body) = self.request("GET", target, self.token.as_deref(), b"");
        (st, String::from_utf8(body).unwrap())
    }

    fn get(&self, target: &str) -> (u16, Value) {
        self.call("GET", target)
    }

    fn call(&self, method: &str, target: &str) -> (u16, Value) {
        let (st, headers, body) = self.request(method, target, self.token.as_deref(), b"");
        let ct = headers
            .iter()
            .find(|(n, _)| n == "content-type")
            .map(|(_, v)| v.clone());
        assert_eq!(ct.as_deref(), Some("application/json"), "{method} {target}");
        let v: Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{method} {target}: not JSON ({e}): {body:?}"));
        if st >= 400 {
            assert!(v["error"].is_string(), "{method} {target}: error body {v}");
        }
        (st, v)
    }

    /// Stops the thread by dropping the snapshot sender, and waits for it.
    fn stop(mut self) {
        self.snapshots.take();
        self.thread.take().unwrap().join().unwrap();
    }
}

fn hist(values: &[u64]) -> hdrhistogram::Histogram<u64> {
    let mut h = new_histogram();
    for v in values {
        record_us(&mut h, *v);
    }
    h
}

fn node(healthy: bool) -> NodeStatus {
    NodeStatus {
        name: "pg1".into(),
        host: "127.0.0.1".into(),
        port: 5432,
        healthy,
        last_error: (!healthy).then(|| "connection refused".into()),
        role: "primary",
        last_checked_at_ms: Some(1_000),
    }
}

fn shard_snapshot(shard: usize, query_us: &[u64]) -> ShardSnapshot {
    let mut s = ShardSnapshot::new(shard);
    s.histograms
        .push((Metric::Query, "app".into(), hist(query_us)));
    s.histograms
        .push((Metric::Checkout, "app".into(), hist(&[3, 5])));
    s.histograms
        .push((Metric::Server, "app".into(), hist(&[90])));
    s.counters.connections_accepted = 10 + shard as u64;
    s.counters.queries = query_us.len() as u64;
    s.counters.transactions = 1;
    s.counters.bytes_in = 100;
    s.counters.bytes_out = 1000;
    s.counters.clients_active = 1;
    s.counters.errors_by_class.insert("08".into(), 1);
    s.counters.errors_by_class.insert("42".into(), 2);
    s.pools.push(PoolStats {
        database: "app".into(),
        user: "alice \"the\" admin".into(),
        mode: "transaction",
        pool_size: 5,
        active: 1,
        idle: 2,
        waiting: 0,
        max_wait_us: 0,
        total_checkouts: 7,
        checkout_timeouts: 0,
        server_connects: 3,
        connect_failures: 0,
        ..PoolStats::default()
    });
    s.clients.push(ClientInfo {
        id: 1000 + shard as i32,
        user: "alice".into(),
        database: "app".into(),
        application_name: "psql".into(),
        addr: "127.0.0.1:50000".into(),
        state: "idle",
        connected_at: 1_700_000_000,
        shard,
    });
    s.servers.push(ServerInfo {
        id: shard as u64,
        node: "pg1".into(),
        database: "app".into(),
        user: "alice".into(),
        state: "idle",
        backend_pid: 4242,
        connected_at: 1_700_000_000,
    });
    s.nodes.push(node(true));
    s
}

fn two_shards(a: &Admin) {
    a.send(shard_snapshot(0, &[100, 200, 300]));
    a.send(shard_snapshot(1, &[1_000, 2_000]));
}

#[test]
fn every_endpoint_answers_with_its_shape() {
    let a = Admin::start(None, 1024);
    let (st, v) = a.get("/ready");
    assert_eq!(st, 503, "{v}");
    two_shards(&a);

    let (st, v) = a.get("/health");
    assert_eq!(st, 200);
    assert_eq!(v["status"], "ok");
    assert_eq!(v["shards"], 2);
    assert_eq!(v["shards_reporting"], 2);

    let (st, v) = a.get("/ready");
    assert_eq!((st, &v["status"]), (200, &json!("ready")));

    let (st, v) = a.get("/stats");
    assert_eq!(st, 200);
    assert_eq!(v["counters"]["queries"], 5);
    assert_eq!(v["counters"]["connections_accepted"], 21);
    assert_eq!(v["counters"]["errors_by_class"]["42"], 4);
    assert_eq!(v["by_shard"].as_array().unwrap().len(), 2);
    assert_eq!(v["latency_us"]["total"]["query"]["all"]["count"], 5);
    assert_eq!(
        v["latency_us"]["interval"]["query"]["by_db"]["app"]["count"],
        5
    );
    assert_eq!(v["latency_us"]["total"]["checkout"]["all"]["count"], 4);

    let (st, v) = a.get("/histograms?metric=query&db=app&window=total&format=json");
    assert_eq!(st, 200);
    assert_eq!(v["count"], 5);
    assert_eq!(v["metric"], "query");
    assert_eq!(v["db"], "app");
    assert_eq!(v["window"], "total");
    assert_eq!(v["unit"], "us");
    for k in [
        "p50_us",
        "p90_us",
        "p99_us",
        "p99_9_us",
        "p99_99_us",
        "max_us",
        "mean_us",
    ] {
        assert!(v[k].is_number(), "{k} in {v}");
    }
    // Within the histograms' 1 %.
    assert!(
        (v["p50_us"].as_u64().unwrap() as i64 - 300).abs() <= 3,
        "{v}"
    );
    assert!(
        (v["max_us"].as_u64().unwrap() as i64 - 2_000).abs() <= 20,
        "{v}"
    );
    let (st, v) = a.get("/histograms");
    assert_eq!(
        (st, &v["db"], &v["window"]),
        (200, &Value::Null, &json!("total"))
    );
    // A configured database without traffic: an empty histogram, not a 404.
    let (st, v) = a.get("/histograms?db=idle");
    assert_eq!(
        (st, &v["count"], &v["p99_us"]),
        (200, &json!(0), &Value::Null)
    );

    let (st, text) = a.get_text("/histograms?metric=server&format=hgrm&window=interval");
    assert_eq!(st, 200);
    assert!(text.starts_with("       Value     Percentile TotalCount 1/(1-Percentile)\n\n"));
    assert!(text.contains("#[Mean    =        0.090, StdDeviation   =        0.000]"));
    assert!(text.contains("Total count    =            2]"));
    assert!(text.contains("#[Buckets ="));

    let (st, v) = a.get("/pools");
    assert_eq!(st, 200);
    assert_eq!(v["pools"][0]["pool_size"], 10);
    assert_eq!(v["pools"][0]["mode"], "transaction");
    assert_eq!(v["by_shard"][1]["shard"], 1);

    let (st, v) = a.get("/clients");
    assert_eq!(st, 200);
    let c = v["clients"].as_array().unwrap();
    assert_eq!(c.len(), 2);
    assert_eq!(c[1]["id"], 1001);
    assert_eq!(c[1]["application_name"], "psql");
    assert_eq!(c[1]["shard"], 1);

    let (st, v) = a.get("/servers");
    assert_eq!(st, 200);
    assert_eq!(v["servers"][0]["backend_pid"], 4242);
    assert_eq!(v["servers"][1]["shard"], 1);

    let (st, v) = a.get("/nodes");
    assert_eq!(st, 200);
    assert_eq!(v["nodes"][0]["name"], "pg1");
    assert_eq!(v["nodes"][0]["healthy"], true);
    assert_eq!(v["nodes"][0]["enabled"], true);
    assert_eq!(v["nodes"][0]["pools"][0]["database"], "app");
    assert_eq!(v["nodes"][0]["pools"][0]["pool_size"], 10);
    // A configured node no shard has reported on yet is listed too.
    assert_eq!(v["nodes"][1]["name"], "pg2");
    assert_eq!(v["nodes"][1]["pools"][0]["dbname"], "idle_db");

    // The operator's switch: shown by /nodes, and shared with the engine.
    let (st, v) = a.call("POST", "/nodes/pg2/disable");
    assert_eq!(
        (st, &v["enabled"], &v["changed"]),
        (200, &json!(false), &json!(true))
    );
    let (_, v) = a.call("POST", "/nodes/pg2/disable");
    assert_eq!(v["changed"], false);
    let (_, v) = a.get("/nodes");
    assert_eq!(
        (&v["nodes"][0]["enabled"], &v["nodes"][1]["enabled"]),
        (&json!(true), &json!(false))
    );
    let (st, _) = a.call("POST", "/nodes/pg2/enable");
    assert_eq!(st, 200);
    let (_, v) = a.get("/nodes");
    assert_eq!(v["nodes"][1]["enabled"], true);

    // The dashboard and the API description.
    let (st, headers, body) = a.request("GET", "/", None, b"");
    assert_eq!(st, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v.starts_with("text/html")));
    assert!(String::from_utf8_lossy(&body).contains("<html"));
    let (st, v) = a.get("/openapi.json");
    assert_eq!((st, &v["openapi"]), (200, &json!("3.0.3")));

    let (st, v) = a.get("/topology");
    assert_eq!(st, 200);
    assert_eq!(
        v,
        json!({"currentPrimary": "pg1", "healthyNodes": 1, "unhealthyNodes": 0,
               "totalNodes": 1, "lastFailoverAt": null})
    );

    let (st, v) = a.get("/config");
    assert_eq!((st, &v["databases"]["app"]["pool_size"]), (200, &json!(5)));

    let (st, v) = a.get("/version");
    assert_eq!(
        (st, &v["version"], &v["shards"]),
        (200, &json!("9.9.9-test"), &json!(2))
    );

    let (st, v) = a.get("/plugins/audit/kv/some-key");
    assert_eq!((st, &v["error"]), (503, &json!("plugins not enabled")));

    // HEAD: the GET headers without the body.
    let (st, headers, body) = a.request("HEAD", "/health", None, b"");
    assert_eq!(st, 200);
    assert!(body.is_empty());
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-length" && v.parse::<usize>().unwrap() > 0));

    // Every shard's last connect failed: not ready.
    let mut s = ShardSnapshot::new(0);
    s.nodes.push(node(false));
    a.send(s);
    let mut s = ShardSnapshot::new(1);
    s.nodes.push(node(false));
    a.send(s);
    let (st, v) = a.get("/ready");
    assert_eq!((st, &v["error"]), (503, &json!("no healthy upstream node")));
    let (_, v) = a.get("/topology");
    assert_eq!(
        (&v["healthyNodes"], &v["unhealthyNodes"]),
        (&json!(0), &json!(1))
    );
    a.stop();
}

#[test]
fn interval_total_and_reset_over_http() {
    let a = Admin::start(None, 1024);
    two_shards(&a);
    a.send(shard_snapshot(0, &[50])); // shard 0's new interval replaces its old one
    let (_, v) = a.get("/histograms?window=total");
    assert_eq!(v["count"], 6);
    let (_, v) = a.get("/histograms?window=interval");
    assert_eq!(v["count"], 3);
    assert_eq!(v["min_us"], 50);

    let (st, v) = a.call("POST", "/histograms/reset");
    assert_eq!(
        (st, &v["status"], &v["engine_notified"]),
        (200, &json!("reset"), &json!(true))
    );
    assert_eq!(
        a.commands.recv_timeout(Duration::from_secs(5)).unwrap(),
        AdminCommand::ResetHistograms
    );
    for w in ["total", "interval"] {
        let (_, v) = a.get(&format!("/histograms?window={w}"));
        assert_eq!(v["count"], 0, "{w}");
    }
    // Counters are not latency: they stay.
    let (_, v) = a.get("/stats");
    assert_eq!(v["counters"]["queries"], 3);
    assert!(v["histograms_reset_s_ago"].is_number());
    a.send(shard_snapshot(1, &[7]));
    let (_, v) = a.get("/histograms?window=total");
    assert_eq!(v["count"], 1);
    a.stop();
}

#[test]
fn reload_sends_the_command() {
    let a = Admin::start(None, 1024);
    let (st, v) = a.call("POST", "/reload");
    assert_eq!((st, &v["status"]), (202, &json!("reload requested")));
    assert_eq!(
        a.commands.recv_timeout(Duration::from_secs(5)).unwrap(),
        AdminCommand::Reload
    );
    // The channel holds 4: a fifth unanswered reload is refused honestly.
    for _ in 0..4 {
        assert_eq!(a.call("POST", "/reload").0, 202);
    }
    let (st, _) = a.call("POST", "/reload");
    assert_eq!(st, 503);
    a.stop();
}

#[test]
fn reload_without_an_engine_is_503() {
    let mut a = Admin::start(None, 1024);
    let (_tx, rx) = crossbeam_channel::bounded(1);
    drop(std::mem::replace(&mut a.commands, rx));
    let (st, v) = a.call("POST", "/reload");
    assert_eq!(
        (st, &v["error"]),
        (503, &json!("the engine is not running"))
    );
    a.stop();
}

#[test]
fn token_is_enforced_everywhere() {
    let a = Admin::start(Some("s3cret"), 1024);
    two_shards(&a);
    for path in ["/health", "/metrics", "/stats", "/nope"] {
        let (st, headers, body) = a.request("GET", path, None, b"");
        assert_eq!(st, 401, "{path} without a token");
        assert!(headers
            .iter()
            .any(|(n, v)| n == "www-authenticate" && v == "Bearer"));
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert!(v["error"].is_string());
        assert_eq!(a.request("GET", path, Some("wrong"), b"").0, 401);
        assert_eq!(a.request("GET", path, Some("s3cre"), b"").0, 401);
        assert_eq!(a.request("GET", path, Some("s3cret2"), b"").0, 401);
    }
    // The scheme is case-insensitive; the token is not.
    let (st, _, _) = a.raw(b"GET /health HTTP/1.1\r\nAuthorization: bearer s3cret\r\n\r\n");
    assert_eq!(st, 200);
    let (st, _, _) = a.raw(b"GET /health HTTP/1.1\r\nAuthorization: Basic s3cret\r\n\r\n");
    assert_eq!(st, 401);
    assert_eq!(a.request("GET", "/health", Some("S3CRET"), b"").0, 401);
    assert_eq!(a.request("GET", "/health", Some("s3cret"), b"").0, 200);
    assert_eq!(a.request("GET", "/stats", Some("s3cret"), b"").0, 200);
    assert_eq!(a.request("GET", "/nope", Some("s3cret"), b"").0, 404);
    // The dashboard page itself needs none (it asks for the token); everything it calls does.
    assert_eq!(a.request("GET", "/", None, b"").0, 200);
    assert_eq!(a.request("GET", "/ui", None, b"").0, 200);
    assert_eq!(a.request("POST", "/ui", None, b"").0, 401);
    assert_eq!(a.request("GET", "/openapi.json", None, b"").0, 401);
    assert_eq!(a.request("POST", "/nodes/pg1/disable", None, b"").0, 401);
    // /api/sql with the token reaches its checks (the body is missing: 400), and without
    // admin.sql_user it is not enabled (503, before any connection is tried).
    assert_eq!(a.request("POST", "/api/sql", Some("s3cret"), b"").0, 400);
    let (st, _, body) = a.request(
        "POST",
        "/api/sql",
        Some("s3cret"),
        br#"{"sql": "select 1", "node": "pg1"}"#,
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(st, 503, "{v}");
    assert!(
        v["error"].as_str().unwrap().contains("admin.sql_user"),
        "{v}"
    );
    let (st, _, _) = a.request(
        "POST",
        "/api/shadow",
        Some("s3cret"),
        br#"{"sql": "select 1", "source_node": "pg1", "target_node": "pg2"}"#,
    );
    assert_eq!(st, 503);
    a.stop();
}

#[test]
fn errors_are_json_with_honest_statuses() {
    let a = Admin::start(None, 16);
    two_shards(&a);
    let cases: &[(&str, &str, u16)] = &[
        ("GET", "/nope", 404),
        ("GET", "/health/", 404),
        ("GET", "/plugins", 503),
        ("GET", "/anomalies?limit=3", 503),
        ("GET", "/anomalies?limt=3", 400),
        ("GET", "/drift", 503),
        ("POST", "/api/chaos", 503),
        ("GET", "/api/edge/x/y", 503),
        ("POST", "/api/replay", 503),
        ("POST", "/nodes/nope/disable", 404),
        ("GET", "/nodes/pg1/disable", 405),
        ("POST", "/api/sql", 403),
        ("POST", "/api/shadow", 400),
        ("POST", "/health", 405),
        ("DELETE", "/stats", 405),
        ("GET", "/reload", 405),
        ("GET", "/histograms/reset", 405),
        ("GET", "/histograms?metric=bogus", 400),
        ("GET", "/histograms?window=week", 400),
        ("GET", "/histograms?format=csv", 400),
        ("GET", "/histograms?metrc=query", 400),
        ("GET", "/histograms?db=%zz", 400),
        ("GET", "/histograms?db=a&db=b", 400),
        ("GET", "/histograms?db=unknown", 404),
        ("GET", "/stats?verbose=1", 400),
        ("PUT", "/plugins/p/kv/k", 503),
    ];
    for (method, target, want) in cases {
        let (st, v) = a.call(method, target);
        assert_eq!(st, *want, "{method} {target}: {v}");
    }
    let (_, headers, _) = a.request("POST", "/health", None, b"");
    assert!(headers
        .iter()
        .any(|(n, v)| n == "allow" && v == "GET, HEAD"));

    // Bodies: at the cap is fine, over it is 413 (before the body is read).
    let (st, _, _) = a.request("POST", "/reload", None, &[b'x'; 16]);
    assert_eq!(st, 202);
    let (st, _, body) = a.request("POST", "/reload", None, &[b'x'; 17]);
    assert_eq!(st, 413);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert!(v["error"].as_str().unwrap().contains("limit of 16"));
    // A huge declared length costs nothing (only the head is read).
    let (st, _, _) = a.raw(b"POST /reload HTTP/1.1\r\nContent-Length: 1000000000000\r\n\r\nabc");
    assert_eq!(st, 413);
    let (st, _, _) = a.raw(b"POST /reload HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n");
    assert_eq!(st, 411);
    let (st, _, _) = a.raw(b"NONSENSE\r\n\r\n");
    assert_eq!(st, 400);
    // A client that connects and leaves, or sends half a head, does not wedge the thread.
    drop(TcpStream::connect(a.addr).unwrap());
    let mut half = TcpStream::connect(a.addr).unwrap();
    half.write_all(b"GET /hea").unwrap();
    drop(half);
    // Expect: 100-continue gets its interim response, then the real one.
    let mut s = TcpStream::connect(a.addr).unwrap();
    s.write_all(b"POST /reload HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n{}")
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 202 Accepted\r\n"),
        "{out}"
    );
    // And the server still answers afterwards.
    assert_eq!(a.get("/health").0, 200);
    a.stop();
}

#[test]
fn metrics_pass_promtool() {
    let a = Admin::start(None, 1024);
    two_shards(&a);
    let mut s = shard_snapshot(1, &[]);
    s.histograms.push((
        Metric::Query,
        "we\"ird\\db".into(),
        hist(&[59_000_000, 70_000_000]),
    ));
    a.send(s);
    let (st, headers, body) = a.request("GET", "/metrics", None, b"");
    assert_eq!(st, 200);
    assert!(headers
        .iter()
        .any(|(n, v)| n == "content-type" && v == "text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(body).unwrap();
    for needle in [
        "# TYPE heliosproxy_queries_total counter",
        "heliosproxy_queries_total{shard=\"0\"} 3",
        "heliosproxy_errors_total{shard=\"1\",class=\"42\"} 2",
        "# TYPE heliosproxy_query_duration_seconds histogram",
        "heliosproxy_query_duration_seconds_bucket{db=\"app\",le=\"0.00025\"} 2",
        "heliosproxy_query_duration_seconds_bucket{db=\"app\",le=\"+Inf\"} 5",
        "heliosproxy_query_duration_seconds_count{db=\"app\"} 5",
        "# TYPE heliosproxy_query_duration_recent_seconds summary",
        // No checkout latency for that database in the interval: NaN, as client libraries do.
        "heliosproxy_pool_checkout_wait_recent_seconds{db=\"we\\\"ird\\\\db\",quantile=\"0.5\"} NaN",
        "heliosproxy_query_duration_seconds_bucket{db=\"we\\\"ird\\\\db\",le=\"60\"} 2",
        "heliosproxy_pool_size{shard=\"0\",db=\"app\",user=\"alice \\\"the\\\" admin\",mode=\"transaction\"} 5",
        "heliosproxy_node_up{node=\"pg1\",role=\"primary\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    // Shard 0's latest interval still holds its queries: the summary has numbers for them.
    assert!(text.contains(
        "heliosproxy_query_duration_recent_seconds{db=\"app\",quantile=\"0.99\"} 0.0003"
    ));

    let promtool = which("promtool").unwrap_or_else(|| {
        panic!(
            "promtool is not installed: the /metrics test checks the output with it. \
             Install Debian's `prometheus` package (apt-get install -y prometheus), which \
             provides /usr/bin/promtool."
        )
    });
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && report.trim().is_empty(),
        "promtool check metrics reported problems:\n{report}\n--- exposition ---\n{text}"
    );
    a.stop();
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.is_file())
    })
}

#[test]
fn spawn_refuses_a_taken_port_and_open_listen_without_token() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let (_stx, srx) = crossbeam_channel::bounded::<ShardSnapshot>(1);
    let (ctx, _crx) = crossbeam_channel::bounded(1);
    let info = StaticInfo {
        version: "t".into(),
        config_json: helios_admin::live_config(json!({})),
        plugin_kv: None,
        shards: 1,
        node_switches: Default::default(),
        topology: None,
        signal: None,
    };
    let cfg = AdminConfig {
        listen: taken.local_addr().unwrap().to_string(),
        ..AdminConfig::default()
    };
    let err = helios_admin::spawn(&cfg, srx.clone(), ctx.clone(), info.clone()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
    assert!(
        err.to_string().contains("admin API cannot listen on"),
        "{err}"
    );

    let cfg = AdminConfig {
        listen: "0.0.0.0:0".into(),
        ..AdminConfig::default()
    };
    let err = helios_admin::spawn(&cfg, srx.clone(), ctx.clone(), info.clone()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
    assert!(err.to_string().contains("admin.token"), "{err}");

    let cfg = AdminConfig {
        listen: "not an address".into(),
        ..AdminConfig::default()
    };
    assert!(helios_admin::spawn(&cfg, srx, ctx, info).is_err());
}

#[test]
fn spawn_binds_and_stops_when_the_engine_goes() {
    // Find a free port, release it, and let spawn bind it by address.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let (stx, srx) = crossbeam_channel::bounded::<ShardSnapshot>(1);
    let (ctx, _crx) = crossbeam_channel::bounded(1);
    let cfg = AdminConfig {
        listen: format!("127.0.0.1:{port}"),
        ..AdminConfig::default()
    };
    let info = StaticInfo {
        version: "t".into(),
        config_json: helios_admin::live_config(json!({})),
        plugin_kv: None,
        shards: 1,
        node_switches: Default::default(),
        topology: None,
        signal: None,
    };
    let handle = helios_admin::spawn(&cfg, srx, ctx, info).unwrap();
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    drop(stx);
    handle.join().unwrap();
    assert!(TcpStream::connect(("127.0.0.1", port)).is_err());
}
