//! The signal plane against real traffic (docs/signal.md): a scripted attack through the proxy
//! gives the expected anomaly events (and `block` refuses with 42501 naming the class),
//! pgbench's workloads give none, the admin API serves the events (`/anomalies`, the event
//! stream, `/metrics`), and the audit file has per-session summaries with none of the
//! statements' text or values.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::SUPERUSER;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn anomalies(admin: u16) -> Vec<Value> {
    admin_json(admin, "/anomalies?limit=1000")["events"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

fn count_by_class(events: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in events {
        *m.entry(e["class"].as_str().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    m
}

fn signal_config(pg: &helios_testkit::PgCluster, auth: &str, db: &str, signal: &str) -> String {
    // One shard: detection state is per shard, and the thresholds below are counted on one.
    config_fast_snapshots(pg, auth, "", &db_section("app", db, "transaction", 4, ""))
        .replace("cores = 2", "cores = 1")
        + signal
}

/// The scripted attack: each injection class, a credential-stuffing burst from one address
/// across users, a 20× burst from one tenant. Prints the counts per class.
#[test]
fn a_scripted_attack_gives_the_expected_events() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_attack");
    pg.psql(&db, "create table users (id int, name text, pass text); insert into users values (1, 'admin', 'x')")
        .unwrap();
    let userlist = format!("\"{SUPERUSER}\" \"{PW}\"\n\"victim\" \"right-pw\"\n");
    let proxy = {
        let cfg = signal_config(
            &pg,
            "method = \"scram-sha-256\"\nuserlist = \"userlist.txt\"",
            &db,
            "\n[anomaly]\nenabled = true\nwarmup_s = 2\nmin_count = 30\nauth_failures_per_user = 5\n\
             auth_failures_per_address = 12\n\n[anomaly.action]\ntautology = \"block\"\n",
        );
        start_proxy(&cfg, Some(&userlist))
    };
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    // The session's first statements are ordinary ones (the catalog probe below is judged
    // against them).
    for i in 0..12 {
        c.simple_query(&format!("select name from users where id = {i}"))
            .unwrap();
    }
    let payloads: &[(&str, &str)] = &[
        ("tautology", "select * from users where name = '' or 1=1"),
        (
            "tautology",
            "select * from users where name = '' or 'a'='a'",
        ),
        (
            "union_probe",
            "select name from users where id = 1 union select null",
        ),
        (
            "union_probe",
            "select name from users where id = 1 union all select version()",
        ),
        (
            "comment_truncation",
            "select * from users where name = 'admin'--' and pass = 'x'",
        ),
        (
            "stacked_query",
            "select * from users where name = 'x'; select 1 --",
        ),
        (
            "time_based",
            "select * from users where id = 1 and pg_sleep(0) is not null",
        ),
        ("catalog_probe", "select usename from pg_shadow"),
    ];
    for (class, sql) in payloads {
        // Only the blocked class is refused, with 42501 naming it (the server may refuse
        // others on its own: that is not the proxy's doing).
        let r = c.simple_query(sql);
        let blocked = match &r {
            Err(e) if sqlstate(e) == Some("42501") => {
                let db = e.as_db_error().unwrap();
                assert!(db.message().contains("tautology"), "{}", db.message());
                true
            }
            _ => false,
        };
        assert_eq!(blocked, *class == "tautology", "{sql}: {r:?}");
    }
    // The session goes on after a refusal.
    c.simple_query("select 1").unwrap();

    // Credential stuffing: 5 wrong passwords for one user, then 12 across users.
    for _ in 0..5 {
        assert!(try_connect(&proxy, "victim", "wrong", "app").is_err());
    }
    for i in 0..12 {
        assert!(try_connect(&proxy, &format!("user{i}"), "guess", "app").is_err());
    }
    // The real password still works (detection logs; it does not block by default).
    connect(&proxy, "victim", "right-pw", "app");

    // Rate spike: a tenant at 3 statements a second for 4 s, then 20× that in one burst.
    let mut t = connect(&proxy, SUPERUSER, PW, "app");
    t.simple_query("set helios.tenant_id = 'tenant-a'").unwrap();
    for _ in 0..4 {
        let start = Instant::now();
        for _ in 0..3 {
            t.simple_query("select 1").unwrap();
        }
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(start.elapsed()));
    }
    // Within one second (a turn of the clock between could split it: then retry once).
    let burst = |t: &mut postgres::Client| {
        for _ in 0..60 {
            t.simple_query("select 1").unwrap();
        }
    };
    burst(&mut t);
    let spiked = try_poll(Duration::from_secs(2), || {
        anomalies(admin)
            .iter()
            .any(|e| e["class"] == "rate_spike")
            .then_some(())
    });
    if spiked.is_none() {
        burst(&mut t);
    }

    let events = poll(WAIT, "every class in /anomalies", || {
        let ev = anomalies(admin);
        let by = count_by_class(&ev);
        [
            "tautology",
            "union_probe",
            "comment_truncation",
            "stacked_query",
            "time_based",
            "catalog_probe",
            "credential_stuffing",
            "rate_spike",
        ]
        .iter()
        .all(|k| by.contains_key(*k))
        .then_some(ev)
    });
    let by = count_by_class(&events);
    println!("detections per class: {by:?}");
    assert_eq!(by["tautology"], 2, "{by:?}");
    assert_eq!(
        by["credential_stuffing"], 2,
        "one per-user and one per-address: {by:?}"
    );
    assert_eq!(by["rate_spike"], 1, "{by:?}");
    for e in &events {
        if e["class"] == "tautology" {
            assert_eq!(e["action"], "block");
        }
        if e["class"] == "rate_spike" {
            assert_eq!(e["tenant"], "tenant-a");
        }
        if e["kind"] == "sql_injection" {
            assert_eq!(e["fingerprint"].as_str().unwrap().len(), 16, "{e}");
        }
    }
    // No statement text in any event.
    let all = serde_json::to_string(&events).unwrap();
    for needle in [
        "1=1",
        "pg_shadow",
        "union select",
        "union all",
        "pg_sleep",
        "admin",
        "right-pw",
        "guess",
    ] {
        assert!(!all.contains(needle), "{needle:?} in the events: {all}");
    }
    // Newest first, limited; the counters.
    let two = admin_json(admin, "/anomalies?limit=2");
    assert_eq!(two["count"], 2);
    assert_eq!(two["limit"], 2);
    assert!(two["buffer_total"].as_u64().unwrap() >= events.len() as u64);
    assert!(two["events"][0]["at_ms"].as_u64() >= two["events"][1]["at_ms"].as_u64());
    let (st, _, metrics) = http(admin, "GET", "/metrics", None).unwrap();
    assert_eq!(st, 200);
    assert!(
        metrics
            .contains("heliosproxy_anomalies_total{kind=\"sql_injection\",class=\"tautology\"} 2"),
        "{metrics}"
    );
    assert_eq!(
        http(admin, "GET", "/anomalies?limit=0", None).unwrap().0,
        400
    );
    // Drift is off here: 503 with the feature named.
    let (st, _, body) = http(admin, "GET", "/drift", None).unwrap();
    assert_eq!(st, 503, "{body}");
    assert!(body.contains("drift detection"), "{body}");

    // The event stream: a new event arrives as `event: anomaly`.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    write!(s, "GET /anomalies/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    // Wait for the head and the opening comment before causing the event.
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if line.starts_with(": heliosproxy") {
            break;
        }
    }
    c.simple_query("select name from users where id = 2 union select null")
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = String::new();
    while Instant::now() < deadline {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        if line.starts_with("data: ") && line.contains("union_probe") {
            got = line.clone();
            break;
        }
    }
    assert!(
        got.contains("\"kind\":\"sql_injection\""),
        "no streamed event: {got:?}"
    );
}

fn pgbench(args: &[&str], url: &str) -> String {
    let out = Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?}: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Zero false positives on ordinary traffic: pgbench -S and the TPC-B-like script, each in all
/// three protocol modes, on two shards, with detection on (a short warm-up, so most of the run
/// is watched).
#[test]
fn pgbench_gives_no_injection_or_rate_spike_events() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_bench");
    pgbench(&["-i", "-s", "1", "-q"], &pg.url(&db));
    // Two shards (the default of the test config): a tenant's rate is judged against its
    // whole traffic, merged across the shards, so pgbench's clients moving between shards from
    // one run to the next are no spike (docs/signal.md).
    let cfg = config_fast_snapshots(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 4, ""),
    ) + "\n[anomaly]\nenabled = true\nwarmup_s = 2\n";
    assert!(cfg.contains("cores = 2"), "{cfg}");
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let url = proxy.url(SUPERUSER, "", "app");
    let mut total = 0u64;
    for mode in [
        &["-S", "-M", "simple"][..],
        &["-S", "-M", "extended"],
        &["-S", "-M", "prepared"],
        &["-M", "simple"],
        &["-M", "extended"],
        &["-M", "prepared"],
    ] {
        let out = pgbench(
            &[&["-n", "-c", "4", "-j", "2", "-T", "3"], mode].concat(),
            &url,
        );
        let n: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0);
        assert!(n > 0, "{out}");
        total += n;
    }
    // Every shard's last snapshot is in.
    std::thread::sleep(Duration::from_millis(500));
    let queries = admin_json(admin, "/stats")["counters"]["queries"]
        .as_u64()
        .unwrap_or(0);
    let events = anomalies(admin);
    let bad: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "sql_injection" || e["kind"] == "rate_spike")
        .collect();
    println!(
        "pgbench: {total} transactions, {queries} statements answered, {} injection/rate-spike events, {} novel shapes",
        bad.len(),
        events.iter().filter(|e| e["kind"] == "novel_query").count()
    );
    assert!(bad.is_empty(), "false positives: {bad:?}");
    // The clients were spread over both shards (each reports the shapes it first sees).
    let shards: std::collections::BTreeSet<u64> = events
        .iter()
        .filter(|e| e["kind"] == "novel_query")
        .filter_map(|e| e["shard"].as_u64())
        .collect();
    assert_eq!(
        shards.len(),
        2,
        "all of pgbench's traffic on one shard: {events:?}"
    );
}

/// Audit summaries in a file: one per session with its counts, none of the statements' text
/// or values; rotated by size.
#[test]
fn the_audit_file_has_summaries_and_no_statement_text() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_audit");
    pg.psql(&db, "create table secrets (k text, v int)")
        .unwrap();
    let dir = tempdir();
    let path = dir.join("audit.jsonl");
    // A second alias with an access context: its statements run as the context's role.
    pg.psql(
        &db,
        "create role sig_audit_reader; grant select on secrets to sig_audit_reader",
    )
    .unwrap();
    let cfg = config_fast_snapshots(
        &pg,
        TRUST,
        "",
        &(db_section("app", &db, "transaction", 4, "")
            + &db_section("ctx", &db, "transaction", 2, "role = \"sig_audit_reader\"")),
    )
    .replace("cores = 2", "cores = 1")
        + &format!(
            "\n[audit]\nsink = \"file:{}\"\nmax_file_bytes = 4096\n",
            path.display()
        );
    let proxy = start_proxy(&cfg, None);
    let literal = "zebra-7f3a-literal";
    let number = 918273645;
    for i in 0..12 {
        let mut c = connect(&proxy, SUPERUSER, PW, "app");
        c.simple_query(&format!(
            "insert into secrets values ('{literal}', {number})"
        ))
        .unwrap();
        c.execute(
            "insert into secrets values ($1, $2)",
            &[&format!("{literal}-param"), &(number + i)],
        )
        .unwrap();
        let _ = c.simple_query("select nosuchcolumn_qq from secrets");
        let rows = c
            .query("select k, v from secrets where v = $1", &[&number])
            .unwrap();
        assert!(!rows.is_empty());
    }
    {
        let mut c = connect(&proxy, SUPERUSER, PW, "ctx");
        let who: String = c
            .query_one("select current_user::text", &[])
            .unwrap()
            .get(0);
        assert_eq!(who, "sig_audit_reader");
    }
    let rotated = dir.join("audit.jsonl.1");
    let text = poll(
        WAIT,
        "12 summaries and the context's in the audit files",
        || {
            let t = std::fs::read_to_string(&path).unwrap_or_default()
                + &std::fs::read_to_string(&rotated).unwrap_or_default();
            (t.lines().count() >= 12 && t.contains("\"context\":\"ctx\"")).then_some(t)
        },
    );
    assert!(rotated.exists(), "never rotated at 4096 bytes");
    assert!(std::fs::metadata(&path).unwrap().len() <= 4096);
    for needle in [
        literal,
        &number.to_string(),
        "secrets",
        "nosuchcolumn",
        "insert",
        "INSERT",
        "select",
    ] {
        assert!(!text.contains(needle), "{needle:?} in the audit:\n{text}");
    }
    let mut finals = 0;
    let mut ctx = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert_eq!(v["event"], "session_summary");
        if v["context"] == "ctx" {
            // The context's role, not the login.
            assert_eq!(v["upstream_role"], "sig_audit_reader", "{v}");
            assert_eq!(v["upstream_user"], SUPERUSER, "{v}");
            ctx += 1;
            continue;
        }
        assert_eq!(v["context"], "app");
        assert_eq!(v["user"], SUPERUSER);
        assert_eq!(v["upstream_user"], SUPERUSER);
        // The database has no access context: statements run as the upstream login.
        assert_eq!(v["upstream_role"], SUPERUSER);
        assert_eq!(v["tls"], false);
        assert_eq!(
            v["duration_ms"].as_u64(),
            Some(v["end_ms"].as_u64().unwrap() - v["start_ms"].as_u64().unwrap()),
            "{v}"
        );
        if v["final"] == true && v["statements"].as_u64() >= Some(4) {
            finals += 1;
            // Two inserts, a failing select (42703: class 42) and a select of ≥ 1 row.
            assert_eq!(v["errors_by_class"]["42"], 1, "{v}");
            assert!(v["rows"].as_u64().unwrap() >= 3, "{v}");
            assert!(v["bytes_in"].as_u64().unwrap() > 0 && v["bytes_out"].as_u64().unwrap() > 0);
            assert!(v["frontend_messages"].as_u64().unwrap() >= 4);
            assert!(v["backend_messages"].as_u64().unwrap() >= 4);
            let (avg, p95) = (
                v["latency_avg_us"].as_u64().unwrap(),
                v["latency_p95_us"].as_u64().unwrap(),
            );
            assert!(avg > 0 && p95 > 0, "{v}");
            // Four statements: the p95 is the slowest (±10 %), never below the average.
            assert!(p95 * 11 / 10 >= avg, "{v}");
            assert!(v["end_ms"].as_u64() >= v["start_ms"].as_u64());
        }
    }
    assert!(finals >= 9, "{finals} full summaries:\n{text}");
    assert_eq!(ctx, 1, "{text}");
}

/// The HTTP sink: batches of summaries POSTed to an endpoint.
#[test]
fn the_http_sink_posts_batches() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_http");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = signal_config(
        &pg,
        TRUST,
        &db,
        &format!("\n[audit]\nsink = \"http://127.0.0.1:{port}/audit\"\n"),
    );
    let proxy = start_proxy(&cfg, None);
    for _ in 0..3 {
        let mut c = connect(&proxy, SUPERUSER, PW, "app");
        c.simple_query("select 'zz-http-literal'").unwrap();
    }
    // A batch leaves within a second of its first summary.
    let batch = accept_post(&listener);
    assert!(!batch.is_empty());
    assert_eq!(batch[0]["event"], "session_summary");
    // At shutdown the last batch is sent before the process exits.
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    c.simple_query("select 1").unwrap();
    drop(c);
    let mut proxy = proxy;
    proxy.signal(libc::SIGTERM);
    let last = accept_post(&listener);
    assert!(!last.is_empty(), "no batch at shutdown");
    assert!(proxy.wait_exit(WAIT).is_some());
}

/// Accepts one POST, answers 204, and returns its JSON array.
fn accept_post(listener: &std::net::TcpListener) -> Vec<Value> {
    listener.set_nonblocking(true).unwrap();
    let mut s = poll(WAIT, "a POST from the audit sink", || {
        listener.accept().ok()
    })
    .0;
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        req.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&req);
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse().ok())
                .unwrap();
            if body.len() >= len {
                break;
            }
        }
    }
    s.write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
        .unwrap();
    let text = String::from_utf8_lossy(&req).into_owned();
    assert!(text.starts_with("POST /audit HTTP/1.1\r\n"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert!(
        !body.contains("zz-http"),
        "a statement's value in the audit: {body}"
    );
    serde_json::from_str::<Value>(body)
        .unwrap()
        .as_array()
        .cloned()
        .unwrap()
}

fn tempdir() -> std::path::PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "helios-signal-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The other switches, each changing what happens: `block` for credential stuffing (the
/// login) and rate spikes (the tenant's statements), a database with `anomaly = false` (no
/// events), `audit.interval_s` (interim summaries of a long session), and `[drift]` with
/// `drift = true` (`/drift` serves an `error_rate_high` alert; the database without it, failing
/// as often, gets none: drift is off by default).
#[test]
fn blocks_opt_outs_interim_summaries_and_drift() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_switch");
    let dir = tempdir();
    let path = dir.join("audit.jsonl");
    let userlist = format!("\"{SUPERUSER}\" \"{PW}\"\n");
    let cfg = config_fast_snapshots(
        &pg,
        "method = \"scram-sha-256\"\nuserlist = \"userlist.txt\"",
        "",
        &(db_section("app", &db, "transaction", 4, "drift = true")
            + &db_section("quiet", &db, "transaction", 4, "anomaly = false")),
    )
    .replace("cores = 2", "cores = 1")
        + &format!(
            "\n[anomaly]\nenabled = true\nwarmup_s = 1\nmin_count = 20\nauth_failures_per_address = 4\n\n\
             [anomaly.action]\nrate_spike = \"block\"\ncredential_stuffing = \"block\"\n\n\
             [audit]\nsink = \"file:{}\"\ninterval_s = 1\n\n\
             [drift]\nenabled = true\nwindow_s = 2\ntick_s = 1\nbaseline_windows = 3\n",
            path.display()
        );
    let proxy = start_proxy(&cfg, Some(&userlist));
    let admin = proxy.admin_port();
    // The event stream, read on a thread of its own from the start: drift alerts arrive on it.
    let streamed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", admin)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        write!(s, "GET /anomalies/stream HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let out = streamed.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).is_ok_and(|n| n > 0) {
                out.lock().unwrap().push_str(&line);
                line.clear();
            }
        });
    }

    // anomaly = false: the same payload gives no event.
    let mut q = connect(&proxy, SUPERUSER, PW, "quiet");
    q.simple_query("select 1 where '' = '' or 1=1").unwrap();
    // A long session: 3 s of statements, some failing (for drift's error rate).
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    let start = Instant::now();
    while start.elapsed() < Duration::from_millis(3200) {
        c.simple_query("select 1").unwrap();
        let _ = c.simple_query("select nosuch_col_zz");
        // The same failures on `quiet`, which does not set `drift`: drift is off by default.
        q.simple_query("select 1").unwrap();
        let _ = q.simple_query("select nosuch_col_zz");
        std::thread::sleep(Duration::from_millis(100));
    }
    c.simple_query("select 1 where '' = '' or 1=1").unwrap();
    let events = poll(WAIT, "the tautology event", || {
        let ev = anomalies(admin);
        ev.iter().any(|e| e["class"] == "tautology").then_some(ev)
    });
    assert!(
        events.iter().all(|e| e["database"] != "quiet"),
        "an event for the opted-out database: {events:?}"
    );

    // interval_s = 1: the long session wrote interim summaries (final: false) before its end.
    let interim = poll(WAIT, "interim summaries", || {
        let t = std::fs::read_to_string(&path).unwrap_or_default();
        let n = t
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["final"] == false && v["context"] == "app")
            .count();
        (n >= 2).then_some(n)
    });
    println!("interim summaries of a 3 s session at interval_s = 1: {interim}");

    // Drift: half the statements failed → error_rate_high for (app, postgres).
    let alert = poll(WAIT, "an error_rate_high alert at /drift", || {
        let d = admin_json(admin, "/drift");
        d["alerts"]
            .as_array()?
            .iter()
            .find(|a| a["rule"] == "error_rate_high" && a["context"] == "app")
            .cloned()
    });
    assert_eq!(alert["user"], SUPERUSER);
    // `quiet` failed as often, but a database without `drift = true` is not watched.
    let d = admin_json(admin, "/drift");
    assert!(
        d["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["context"] != "quiet"),
        "a drift alert for a database that did not opt in: {d}"
    );
    assert!(
        alert["value"]["error_rate"].as_f64().unwrap() >= 0.2,
        "{alert}"
    );
    // …on the event stream as `event: drift`, and counted.
    poll(WAIT, "event: drift on /anomalies/stream", || {
        let t = streamed.lock().unwrap();
        t.split("\n\n")
            .any(|ev| ev.contains("event: drift") && ev.contains("error_rate_high"))
            .then_some(())
    });
    let (_, _, metrics) = http(admin, "GET", "/metrics", None).unwrap();
    let alerts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("heliosproxy_drift_alerts_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    assert!(alerts >= 1, "{metrics}");

    // rate_spike = "block": after a steady second or two, a burst is refused with 42501.
    let mut t = connect(&proxy, SUPERUSER, PW, "app");
    t.simple_query("set helios.tenant_id = 'burst'").unwrap();
    for _ in 0..2 {
        let s = Instant::now();
        t.simple_query("select 1").unwrap();
        std::thread::sleep(Duration::from_millis(1000).saturating_sub(s.elapsed()));
    }
    let mut refused = None;
    for _ in 0..200 {
        if let Err(e) = t.simple_query("select 1") {
            refused = Some(e);
            break;
        }
    }
    let e = refused.expect("a 200-statement burst was not refused");
    assert_eq!(sqlstate(&e), Some("42501"), "{e}");
    let m = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(m.contains("rate_spike"), "{m}");

    // credential_stuffing = "block": past 4 failures from the address, even the right
    // password is refused (42501), before any password exchange.
    for _ in 0..4 {
        let Err(e) = try_connect(&proxy, "nobody", "x", "app") else {
            panic!("a wrong password logged in")
        };
        assert_eq!(sqlstate(&e), Some("28P01"), "{e}");
    }
    let Err(e) = try_connect(&proxy, SUPERUSER, PW, "app") else {
        panic!("logged in from an address flagged for credential stuffing")
    };
    assert_eq!(sqlstate(&e), Some("42501"), "{e}");
    let m = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(m.contains("credential_stuffing"), "{m}");
}

/// Detection runs before the plugins' `pre_query`: with `block-drop` loaded, a stacked
/// `DROP TABLE` is refused by the plugin and still has its event. Bound parameters are not
/// scanned. Without `SET helios.tenant_id` the tenant is the user. Events carry the user, the
/// client address and a score.
#[test]
fn detection_runs_before_plugins_skips_parameters_and_falls_back_to_the_user() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_order");
    pg.psql(&db, "create table users (id int, name text)")
        .unwrap();
    let cfg = signal_config(
        &pg,
        TRUST,
        &db,
        "\n[anomaly]\nenabled = true\nwarmup_s = 1\nmin_count = 30\n",
    ) + &plugins_section("", &plugin_entry("block-drop", ""));
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    // Bound parameters holding every class's payload: nothing to report.
    for p in [
        "' or 1=1 --",
        "x' union select null --",
        "'; select pg_sleep(10) --",
        "admin'--",
    ] {
        let rows = c.query("select $1::text", &[&p]).unwrap();
        assert_eq!(rows[0].get::<_, String>(0), p);
    }
    // The plugin refuses; the detector saw it first.
    let e = c
        .simple_query("select * from users where name = 'x'; drop table users")
        .unwrap_err();
    let m = e
        .as_db_error()
        .map(|d| d.message().to_string())
        .unwrap_or_default();
    assert!(m.contains("DROP TABLE is not allowed"), "{e}");
    // The tenant is the user: a steady 3 a second, then a burst of 200.
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        c.simple_query("select 1").unwrap();
        std::thread::sleep(Duration::from_millis(330));
    }
    for _ in 0..200 {
        c.simple_query("select 1").unwrap();
    }
    let events = poll(WAIT, "the stacked query and the rate spike", || {
        let ev = anomalies(admin);
        let by = count_by_class(&ev);
        (by.contains_key("stacked_query") && by.contains_key("rate_spike")).then_some(ev)
    });
    let injections: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "sql_injection")
        .collect();
    assert_eq!(
        injections.len(),
        1,
        "bound parameters were scanned: {injections:?}"
    );
    assert_eq!(injections[0]["class"], "stacked_query");
    for e in &events {
        assert_eq!(e["user"], SUPERUSER, "{e}");
        assert_eq!(e["address"], "127.0.0.1", "{e}");
        assert_eq!(e["database"], "app", "{e}");
        let score = e["score"].as_f64().unwrap();
        if e["kind"] == "rate_spike" {
            assert_eq!(e["tenant"], SUPERUSER, "{e}");
            assert!(score > 3.0, "a spike's score is its z: {e}");
        } else {
            assert_eq!(score, 1.0, "{e}");
        }
    }
}

/// The stdout sink writes JSON lines to the proxy's standard output.
#[test]
fn the_stdout_sink_writes_summaries() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_stdout");
    let cfg = signal_config(&pg, TRUST, &db, "\n[audit]\nsink = \"stdout\"\n");
    let proxy = start_proxy(&cfg, None);
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    c.simple_query("select 'zz-stdout-literal'").unwrap();
    drop(c);
    let line = poll(WAIT, "a summary on stdout", || {
        proxy
            .log()
            .lines()
            .find(|l| l.contains("\"session_summary\""))
            .map(str::to_string)
    });
    let v: Value = serde_json::from_str(line.trim()).unwrap_or_else(|e| panic!("{e}: {line}"));
    assert_eq!(v["context"], "app");
    assert_eq!(v["statements"], 1);
    assert!(
        !proxy.log().contains("zz-stdout"),
        "statement text in the output"
    );
}

/// An HTTP endpoint that is down: the batches fail, their summaries are dropped and counted
/// (`heliosproxy_audit_dropped_total`, `heliosproxy_audit_http_failures_total`), and the
/// sessions are not held up.
#[test]
fn the_http_sink_counts_what_it_drops() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_http_down");
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let cfg = signal_config(
        &pg,
        TRUST,
        &db,
        &format!("\n[audit]\nsink = \"http://127.0.0.1:{port}/audit\"\n"),
    );
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let start = Instant::now();
    for _ in 0..5 {
        let mut c = connect(&proxy, SUPERUSER, PW, "app");
        c.simple_query("select 1").unwrap();
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "sessions waited for the sink"
    );
    let metric = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0)
    };
    poll(WAIT, "dropped summaries in /metrics", || {
        let (_, _, m) = http(admin, "GET", "/metrics", None).ok()?;
        (metric(&m, "heliosproxy_audit_dropped_total") >= 5
            && metric(&m, "heliosproxy_audit_http_failures_total") >= 1
            && metric(&m, "heliosproxy_audit_written_total") == 0)
            .then_some(())
    });
}

/// The suite's switch (`HELIOS_TEST_ANOMALY=1`, engine/testkit): a proxy whose config has no
/// `[anomaly]` runs with detection on, and dropping it fails the test when its log shows an
/// injection event (scripts/test.sh runs one pass of the suite with it).
#[test]
fn the_suite_switch_fails_a_test_whose_traffic_trips_a_detector() {
    use helios_testkit::proxy::ANOMALY_VAR;
    let pg = shared_pg();
    let db = fresh_db(&pg, "sig_switch_env");
    let cfg = config_fast_snapshots(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 2, ""),
    );
    // Set only around the start (the other tests here configure [anomaly] themselves or
    // do not mind detection being on).
    let before = std::env::var(ANOMALY_VAR).ok();
    std::env::set_var(ANOMALY_VAR, "1");
    let proxy = start_proxy(&cfg, None);
    match before {
        Some(v) => std::env::set_var(ANOMALY_VAR, v),
        None => std::env::remove_var(ANOMALY_VAR),
    }
    let mut c = connect(&proxy, SUPERUSER, PW, "app");
    c.simple_query("select 1 where '' = '' or 1=1").unwrap();
    poll(WAIT, "the event in the proxy's log", || {
        proxy
            .log()
            .contains("anomaly event: kind=sql_injection class=tautology")
            .then_some(())
    });
    let dropped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| drop(proxy)));
    let msg = dropped.expect_err("the proxy's drop did not fail the test");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(
        msg.contains("reported ordinary traffic as an anomaly"),
        "{msg}"
    );
    assert!(!msg.contains("1=1"), "statement text in the log: {msg}");
}
