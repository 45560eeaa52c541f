//! What the proxy reports about itself, checked against real traffic: the admin HTTP API's
//! latency histograms after a pgbench run of known length, `/metrics` through `promtool`, the
//! admin token, the psql console (`SHOW …`, `PAUSE`/`RESUME`), `POST /reload` and `/ready`.
//!
//! The proxies here send statistics snapshots every 100 ms (`admin.snapshot_interval_ms`, the
//! minimum) and every wait is a poll with a deadline, so a loaded 2-core machine only slows the
//! tests down.

mod common;

use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::{free_port, SUPERUSER};
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn pgbench(args: &[&str], url: &str) -> String {
    let out = Command::new("pgbench")
        .args(args)
        .arg(url)
        .output()
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} exited with {}:\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn processed(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|n| n.split('/').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in:\n{out}"))
}

/// Waits until every shard's latest snapshot reached the admin thread comfortably after `t`:
/// then everything the shards recorded before `t` is in the admin's totals. The admin takes
/// in waiting snapshots at least every 100 ms and before each answer, so a snapshot that was
/// already on its way at `t` has been taken in (and superseded) 300 ms later.
fn wait_snapshots_after(admin: u16, t: Instant) {
    poll(
        WAIT,
        "a snapshot from every shard taken after the run",
        || {
            let h = admin_json(admin, "/health");
            let age = h["oldest_snapshot_age_ms"].as_u64()?;
            (h["shards_reporting"] == h["shards"]
                && Duration::from_millis(age) + Duration::from_millis(300) < t.elapsed())
            .then_some(())
        },
    );
}

fn reset_histograms(admin: u16) {
    let (status, _, body) = http(admin, "POST", "/histograms/reset", None).unwrap();
    assert_eq!(status, 200, "POST /histograms/reset: {body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "reset", "{body}");
    assert_eq!(v["engine_notified"], true, "{body}");
}

fn query_histogram(admin: u16, db: &str) -> Value {
    admin_json(
        admin,
        &format!("/histograms?metric=query&db={db}&format=json"),
    )
}

fn count(h: &Value) -> u64 {
    h["count"]
        .as_u64()
        .unwrap_or_else(|| panic!("no count in {h}"))
}

/// 1. A pgbench run of known length shows up in `/histograms` exactly: one query per
///    transaction plus pgbench's own set-up queries, with sane percentiles; `format=hgrm` is
///    HdrHistogram's percentile text.
#[test]
fn histograms_count_a_pgbench_run_exactly() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_hist");
    // Initialised directly on the server: the proxy sees only the runs below.
    pgbench(&["-i", "-s", "1", "-q"], &pg.url(&db));
    let proxy = start_proxy(
        &config_fast_snapshots(
            &pg,
            TRUST,
            "",
            &db_section("bench", &db, "transaction", 4, ""),
        ),
        None,
    );
    let admin = proxy.admin_port();
    let url = proxy.url(SUPERUSER, "", "bench");
    let per_client: u64 = 250;
    let run = ["-n", "-S", "-M", "simple", "-c", "4", "-j", "2", "-t"];

    // pgbench's overhead, measured: besides its transactions (one `SELECT abalance …` each
    // with -S), pgbench 15 asks the server for the scale (`select count(*) from
    // pgbench_branches`) and for pgbench_accounts' partitioning on its set-up connection; -n
    // skips its vacuums and the clients' own connections send nothing else. Rather than rely
    // on that list, run the same command with one transaction per client and count:
    // overhead = queries seen - 4.
    reset_histograms(admin);
    let out = pgbench(&[&run[..], &["1"]].concat(), &url);
    assert_eq!(processed(&out), 4, "{out}");
    wait_snapshots_after(admin, Instant::now());
    let calibration = count(&query_histogram(admin, "bench"));
    assert!(
        calibration >= 4,
        "the calibration run's 4 transactions are not all in /histograms: {calibration}"
    );
    let overhead = calibration - 4;
    eprintln!("pgbench set-up overhead: {overhead} queries (calibration run: {calibration})");
    assert!(overhead <= 10, "implausible pgbench overhead {overhead}");

    // The reset happens once the calibration run is in the totals (see above), so no
    // snapshot still on its way can bring any of it back.
    reset_histograms(admin);
    assert_eq!(
        count(&query_histogram(admin, "bench")),
        0,
        "reset did not empty"
    );

    let n = per_client.to_string();
    let out = pgbench(&[&run[..], &[n.as_str()]].concat(), &url);
    let txns = processed(&out);
    assert_eq!(txns, 4 * per_client, "{out}");
    let expected = txns + overhead;
    let ran = Instant::now();
    // Poll until the snapshots reflect the run, then make sure nothing more arrives.
    let seen = poll(WAIT, "the run's queries in /histograms", || {
        let c = count(&query_histogram(admin, "bench"));
        assert!(c <= expected, "more queries than sent: {c} > {expected}");
        (c == expected).then_some(c)
    });
    wait_snapshots_after(admin, ran);
    let h = query_histogram(admin, "bench");
    assert_eq!(
        count(&h),
        seen,
        "the count moved after it was complete: {h}"
    );
    eprintln!("pgbench: {txns} transactions + {overhead} set-up queries; /histograms: {h}");

    assert_eq!(h["metric"], "query");
    assert_eq!(h["window"], "total");
    assert_eq!(h["db"], "bench");
    let us = |k: &str| {
        h[k].as_u64()
            .unwrap_or_else(|| panic!("{k} is not a number: {h}"))
    };
    let (min, p50, p90, p99, max) = (
        us("min_us"),
        us("p50_us"),
        us("p90_us"),
        us("p99_us"),
        us("max_us"),
    );
    assert!(
        0 < min && min <= p50 && p50 <= p90 && p90 <= p99 && p99 <= max,
        "percentiles out of order: {h}"
    );
    let mean = h["mean_us"].as_f64().unwrap();
    assert!(min as f64 <= mean && mean <= max as f64, "{h}");
    // Each query went to PostgreSQL and back over loopback: more than a microsecond, and on
    // even a very loaded machine the median stays under a second.
    assert!(p50 < 1_000_000, "p50 of {p50} µs: {h}");
    // The server round trip is recorded too, and is part of the query time.
    let server = admin_json(admin, "/histograms?metric=server&db=bench");
    assert!(count(&server) > 0, "{server}");
    assert!(server["p50_us"].as_u64().unwrap() <= p99, "{server}");

    // The same distribution as HdrHistogram percentile text (milliseconds).
    let (status, headers, hgrm) = http(
        admin,
        "GET",
        "/histograms?metric=query&db=bench&format=hgrm",
        None,
    )
    .unwrap();
    assert_eq!(status, 200, "{hgrm}");
    assert!(headers.contains("content-type: text/plain"), "{headers}");
    check_hgrm(&hgrm, seen, max);
}

/// Checks `.hgrm` text: the header, rows of (value ms, percentile, total count, 1/(1-p)) with
/// everything non-decreasing, a last row at percentile 1 without the last column, and the
/// footer agreeing with the JSON (`count`, `max_us`).
fn check_hgrm(text: &str, count: u64, max_us: u64) {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"],
        "{text}"
    );
    let mut rows: Vec<Vec<f64>> = Vec::new();
    let mut footer = Vec::new();
    for l in lines {
        if l.starts_with('#') {
            footer.push(l);
            continue;
        }
        assert!(footer.is_empty(), "a row after the footer: {l:?}\n{text}");
        let row: Vec<f64> = l
            .split_whitespace()
            .map(|x| x.parse().unwrap_or_else(|_| panic!("{x:?} in {l:?}")))
            .collect();
        rows.push(row);
    }
    assert!(rows.len() > 5, "too few rows:\n{text}");
    let (last, body) = rows.split_last().unwrap();
    for r in body {
        assert_eq!(r.len(), 4, "{r:?}\n{text}");
        assert!(
            (r[3] - 1.0 / (1.0 - r[1])).abs() <= 0.01 * r[3] + 0.01,
            "{r:?}"
        );
    }
    assert_eq!(last.len(), 3, "the last row has no 1/(1-p) column:\n{text}");
    assert_eq!(last[1], 1.0, "{text}");
    assert_eq!(last[2] as u64, count, "{text}");
    for w in rows.windows(2) {
        assert!(
            w[0][0] <= w[1][0] && w[0][1] <= w[1][1] && w[0][2] <= w[1][2],
            "not monotonic: {:?} then {:?}",
            w[0],
            w[1]
        );
    }
    assert!(rows[0][0] > 0.0, "{text}");
    assert_eq!(footer.len(), 3, "footer: {footer:?}");
    let field = |line: &str, name: &str| -> f64 {
        let at = line
            .find(name)
            .unwrap_or_else(|| panic!("{name} in {line:?}"))
            + name.len();
        line[at..]
            .trim_start()
            .trim_start_matches('=')
            .trim_start()
            .split([',', ']'])
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name} in {line:?}"))
    };
    assert!(footer[0].starts_with("#[Mean"), "{footer:?}");
    assert!(field(footer[0], "StdDeviation") >= 0.0);
    assert!(footer[1].starts_with("#[Max"), "{footer:?}");
    assert_eq!(field(footer[1], "Total count") as u64, count, "{footer:?}");
    let max_ms = field(footer[1], "#[Max");
    assert!(
        (max_ms * 1000.0 - max_us as f64).abs() <= max_us as f64 * 0.002 + 1.0,
        "hgrm max {max_ms} ms vs JSON max {max_us} µs"
    );
    assert!((last[0] * 1000.0 - max_us as f64).abs() <= max_us as f64 * 0.002 + 1.0);
    assert!(footer[2].starts_with("#[Buckets"), "{footer:?}");
    assert!(field(footer[2], "SubBuckets") > 0.0);
}

/// 2. `/metrics` after real traffic passes `promtool check metrics` and has the database's
///    query histogram.
#[test]
fn metrics_pass_promtool_after_traffic() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_metrics");
    let proxy = start_proxy(
        &config_fast_snapshots(
            &pg,
            TRUST,
            "",
            &db_section("app", &db, "transaction", 2, ""),
        ),
        None,
    );
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    for i in 0..50 {
        let v: i32 = c.query_one("select $1::int", &[&i]).unwrap().get(0);
        assert_eq!(v, i);
    }
    // An error, so errors_total has a class label too.
    assert!(c.batch_execute("select * from no_such_table").is_err());
    let admin = proxy.admin_port();
    let text = poll(WAIT, "the queries in /metrics", || {
        let (status, headers, body) = http(admin, "GET", "/metrics", None).ok()?;
        assert_eq!(status, 200, "{body}");
        assert!(
            headers.contains("content-type: text/plain; version=0.0.4"),
            "{headers}"
        );
        let n: u64 = body
            .lines()
            .find_map(|l| l.strip_prefix("heliosproxy_query_duration_seconds_count{db=\"app\"} "))?
            .parse()
            .ok()?;
        // The error's counter too: the first query_one's prepare is a request of its own, so
        // 51 requests may be counted in a snapshot taken before the error.
        (n >= 51 && body.contains("heliosproxy_errors_total{shard=")).then_some(body)
    });
    for needle in [
        "# TYPE heliosproxy_query_duration_seconds histogram",
        "heliosproxy_query_duration_seconds_bucket{db=\"app\",le=\"+Inf\"} ",
        "heliosproxy_query_duration_seconds_sum{db=\"app\"} ",
        "# TYPE heliosproxy_query_duration_recent_seconds summary",
        "# TYPE heliosproxy_queries_total counter",
        "heliosproxy_errors_total{shard=",
        "heliosproxy_pool_size{shard=",
        "heliosproxy_node_up{node=\"pg\",role=\"primary\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle:?} in\n{text}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect(
            "run promtool (Debian's `prometheus` package provides /usr/bin/promtool; \
             scripts/test.sh installs it)",
        );
    use std::io::Write;
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
}

/// 3. On a non-loopback address the admin API demands its token; without one such a config
///    does not start.
#[test]
fn admin_token_on_a_non_loopback_listen() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_token");
    let token = "s3cret-t0ken";
    let admin = format!(
        "listen = \"0.0.0.0:${{HELIOS_TEST_ADMIN_PORT}}\"\ntoken = \"{token}\"\nsnapshot_interval_ms = 100"
    );
    let proxy = start_proxy(
        &config_custom(
            &pg,
            &admin,
            "",
            TRUST,
            "",
            &db_section("app", &db, "transaction", 2, ""),
        ),
        None,
    );
    let port = proxy.admin_port();
    for path in ["/health", "/stats", "/nosuchpath", "/config"] {
        let (status, headers, body) = http(port, "GET", path, None).unwrap();
        assert_eq!(status, 401, "GET {path} without a token: {body}");
        assert!(headers.contains("www-authenticate: bearer"), "{headers}");
        let (status, _, body) = http(port, "GET", path, Some("wrong")).unwrap();
        assert_eq!(status, 401, "GET {path} with a wrong token: {body}");
        let (status, _, body) = http(port, "GET", path, Some(&format!("{token}x"))).unwrap();
        assert_eq!(status, 401, "GET {path} with a longer token: {body}");
    }
    let (status, _, body) = http(port, "POST", "/reload", None).unwrap();
    assert_eq!(status, 401, "POST /reload without a token: {body}");
    let (status, _, body) = http(port, "GET", "/health", Some(token)).unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = http(port, "GET", "/config", Some(token)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains(token), "/config shows the token: {body}");
    let (status, _, body) = http(port, "GET", "/nosuchpath", Some(token)).unwrap();
    assert_eq!(status, 404, "{body}");
    drop(proxy);

    // The same without a token: refused at start-up, with a message that says why.
    let admin = "listen = \"0.0.0.0:${HELIOS_TEST_ADMIN_PORT}\"";
    let cfg = config_custom(
        &pg,
        admin,
        "",
        TRUST,
        "",
        &db_section("app", &db, "transaction", 2, ""),
    );
    let dir = std::env::temp_dir().join(format!("helios-obs-notoken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("proxy.toml");
    std::fs::write(&path, cfg).unwrap();
    let mut child = Command::new(BIN)
        .arg("--config")
        .arg(&path)
        .env("HELIOS_TEST_PORT", free_port().to_string())
        .env("HELIOS_TEST_ADMIN_PORT", free_port().to_string())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the proxy started with a non-loopback admin listen and no token");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!status.success(), "exit {status}: {log}");
    assert!(
        log.contains("admin.token") && log.contains("not a loopback address"),
        "no clear message: {log}"
    );
    assert!(
        !log.contains("listening on"),
        "it listened before refusing: {log}"
    );
}

const ADMIN_USER: &str = "opsadmin";
const ADMIN_PW: &str = "ops-pw";
const APP_USER: &str = "appuser";
const APP_PW: &str = "app-pw";

/// A proxy with SCRAM logins for an admin user (console) and an application user; the
/// database `app` logs in upstream as the superuser.
fn console_proxy(
    pg: &helios_testkit::PgCluster,
    db: &str,
    pool: usize,
) -> helios_testkit::proxy::Proxy {
    let auth = format!(
        "method = \"scram-sha-256\"\nuserlist = \"userlist.txt\"\nadmin_users = [\"{ADMIN_USER}\"]"
    );
    let userlist = format!("\"{ADMIN_USER}\" \"{ADMIN_PW}\"\n\"{APP_USER}\" \"{APP_PW}\"\n");
    start_proxy(
        &config_fast_snapshots(
            pg,
            &auth,
            "",
            &db_section("app", db, "transaction", pool, ""),
        ),
        Some(&userlist),
    )
}

/// psql `-At` output as rows of columns.
fn rows(out: &str) -> Vec<Vec<String>> {
    out.lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_string).collect())
        .collect()
}

/// The console's rows of a `SHOW` through the raw client (column name -> value per row).
fn show(c: &mut Raw, what: &str) -> Vec<Vec<(String, Option<String>)>> {
    let msgs = c.query(&format!("SHOW {what}"));
    assert_eq!(first_error(&msgs), None, "SHOW {what}: {msgs:?}");
    let desc = msgs
        .iter()
        .find(|m| m.tag == b'T')
        .unwrap_or_else(|| panic!("SHOW {what}: no RowDescription: {msgs:?}"));
    let n = i16::from_be_bytes([desc.body[0], desc.body[1]]) as usize;
    let mut names = Vec::new();
    let mut b = &desc.body[2..];
    for _ in 0..n {
        let end = b.iter().position(|&x| x == 0).unwrap();
        names.push(String::from_utf8_lossy(&b[..end]).into_owned());
        b = &b[end + 1 + 18..];
    }
    let cc = msgs
        .iter()
        .find(|m| m.tag == b'C')
        .expect("CommandComplete");
    let rows: Vec<_> = msgs
        .iter()
        .filter(|m| m.tag == b'D')
        .map(|m| names.iter().cloned().zip(m.row()).collect::<Vec<_>>())
        .collect();
    assert_eq!(
        String::from_utf8_lossy(&cc.body[..cc.body.len() - 1]),
        format!("SHOW {}", rows.len())
    );
    rows
}

fn col<'a>(row: &'a [(String, Option<String>)], name: &str) -> Option<&'a str> {
    row.iter()
        .find(|(n, _)| n == name)
        .unwrap_or_else(|| panic!("no column {name} in {row:?}"))
        .1
        .as_deref()
}

/// 4. The psql console: SHOW POOLS counts clients in open transactions and their server
///    connections; only admin users get in; a bad command is an error the session survives;
///    every SHOW has rows; PAUSE holds new transactions back until RESUME.
#[test]
fn console_show_pause_resume() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_console");
    let proxy = console_proxy(&pg, &db, 8);
    let console_url = proxy.url(ADMIN_USER, ADMIN_PW, "heliosproxy");

    // N clients, each inside a transaction: each holds a server connection.
    const N: usize = 3;
    let mut holders: Vec<_> = (0..N)
        .map(|_| {
            let mut c = connect(&proxy, APP_USER, APP_PW, "app");
            c.batch_execute("begin; select 1").unwrap();
            c
        })
        .collect();
    let pools = poll(WAIT, "SHOW POOLS with the open transactions", || {
        let out = psql_ok(&console_url, "SHOW POOLS");
        let r = rows(&out);
        let row = r.iter().find(|r| r[0] == "app")?.clone();
        // database|user|cl_active|cl_waiting|sv_active|sv_idle|maxwait|maxwait_us|pool_mode|pool_size
        (row[2] == N.to_string() && row[4] == N.to_string()).then_some((out, row))
    });
    eprintln!("SHOW POOLS with {N} open transactions:\n{}", pools.0);
    let row = pools.1;
    assert_eq!(row.len(), 10, "{row:?}");
    assert_eq!(row[3], "0", "cl_waiting: {row:?}");
    assert_eq!(row[8], "transaction", "{row:?}");
    assert_eq!(row[9], "8", "pool_size: {row:?}");
    // The header is PgBouncer's.
    let with_header = Command::new("psql")
        .arg(&console_url)
        .args(["-X", "-A", "-c", "SHOW POOLS"])
        .output()
        .unwrap();
    let header = String::from_utf8_lossy(&with_header.stdout);
    assert!(
        header.starts_with(
            "database|user|cl_active|cl_waiting|sv_active|sv_idle|maxwait|maxwait_us|pool_mode|pool_size"
        ),
        "{header}"
    );

    // Not an admin user: refused.
    let out = psql(&proxy.url(APP_USER, APP_PW, "heliosproxy"), "SHOW POOLS");
    assert!(!out.status.success(), "a non-admin user got in");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("not allowed to connect to the admin console"),
        "{err}"
    );
    // Nor with a wrong password as the admin user.
    let out = psql(&proxy.url(ADMIN_USER, "wrong", "heliosproxy"), "SHOW POOLS");
    assert!(!out.status.success(), "a wrong admin password got in");

    // A raw session: an unknown command is an error and the session carries on.
    let mut con = Raw::login(proxy.port(), ADMIN_USER, ADMIN_PW, "heliosproxy")
        .unwrap_or_else(|e| panic!("console login: {e:?}"));
    let msgs = con.query("SHOW NONSENSE");
    assert_eq!(first_error(&msgs).as_deref(), Some("42601"), "{msgs:?}");
    assert_eq!(ready_status(&msgs), b'I');
    let msgs = con.query("FROBNICATE everything");
    assert_eq!(first_error(&msgs).as_deref(), Some("42601"), "{msgs:?}");
    let msgs = con.query("PAUSE no_such_db");
    assert_eq!(first_error(&msgs).as_deref(), Some("42601"), "{msgs:?}");
    // psql carries on after an error too when not told to stop.
    let out = Command::new("psql")
        .arg(&console_url)
        .args([
            "-X",
            "-At",
            "-c",
            "SHOW BOGUS",
            "-c",
            "SHOW VERSIONS",
            "-c",
            "SHOW POOLS",
        ])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.lines().any(|l| l.starts_with("app|")),
        "psql's third command got no pools: {stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for what in [
        "POOLS",
        "STATS",
        "CLIENTS",
        "SERVERS",
        "DATABASES",
        "CONFIG",
        "LATENCY",
    ] {
        let r = show(&mut con, what);
        assert!(!r.is_empty(), "SHOW {what} has no rows");
    }
    let clients = show(&mut con, "CLIENTS");
    let app_clients = clients
        .iter()
        .filter(|r| col(r, "database") == Some("app"))
        .count();
    assert_eq!(app_clients, N, "{clients:?}");
    let servers = show(&mut con, "SERVERS");
    assert!(
        servers
            .iter()
            .filter(|r| col(r, "database") == Some("app") && col(r, "state") == Some("active"))
            .count()
            == N,
        "{servers:?}"
    );
    let dbs = show(&mut con, "DATABASES");
    let app = dbs.iter().find(|r| col(r, "name") == Some("app")).unwrap();
    assert_eq!(col(app, "database"), Some(db.as_str()));
    assert_eq!(col(app, "pool_size"), Some("8"));
    assert_eq!(col(app, "port"), Some(pg.port.to_string().as_str()));
    let config = show(&mut con, "CONFIG");
    assert!(config
        .iter()
        .any(|r| col(r, "key") == Some("admin.snapshot_interval_ms")
            && col(r, "value") == Some("100")));
    assert!(
        !config.iter().any(|r| col(r, "value") == Some(ADMIN_PW)
            || col(r, "value") == Some(helios_testkit::SUPERUSER_PASSWORD)),
        "SHOW CONFIG shows a password"
    );
    let latency = show(&mut con, "LATENCY");
    assert!(latency
        .iter()
        .any(|r| col(r, "database") == Some("app") && col(r, "metric") == Some("query")));
    let stats = show(&mut con, "STATS");
    assert!(stats.iter().any(|r| col(r, "database") == Some("*")));

    for c in &mut holders {
        c.batch_execute("commit").unwrap();
    }

    // PAUSE: a client that is already connected (so its shard has the pool) cannot start a
    // new transaction until RESUME.
    let mut waiter = connect(&proxy, APP_USER, APP_PW, "app");
    let msgs = con.query("PAUSE app");
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    assert!(msgs
        .iter()
        .any(|m| m.tag == b'C' && m.body.starts_with(b"PAUSE")));
    let (tx, rx) = mpsc::channel();
    let t = std::thread::spawn(move || {
        let v: i32 = waiter.query_one("select 42", &[]).unwrap().get(0);
        tx.send((v, Instant::now())).unwrap();
        waiter
    });
    // It shows as waiting (and its query has not been answered).
    poll(WAIT, "the paused client waiting in SHOW POOLS", || {
        let r = show(&mut con, "POOLS");
        let row = r.iter().find(|r| col(r, "database") == Some("app"))?;
        (col(row, "cl_waiting") == Some("1")).then_some(())
    });
    assert!(
        rx.try_recv().is_err(),
        "a query ran while its database was paused"
    );
    // Long enough that a pause the proxy ignored would have let the query through.
    assert!(
        rx.recv_timeout(Duration::from_millis(500)).is_err(),
        "a query ran while its database was paused"
    );
    let resumed_at = Instant::now();
    let msgs = con.query("RESUME app");
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    let (v, done) = rx.recv_timeout(WAIT).expect("the query after RESUME");
    assert_eq!(v, 42);
    eprintln!(
        "query answered {:?} after RESUME",
        done.saturating_duration_since(resumed_at)
    );
    t.join().unwrap();
    con.terminate();
}

/// 5a. `POST /reload` reloads the configuration like SIGHUP: a new pool size shows in /pools.
#[test]
fn post_reload_applies_a_new_pool_size() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_reload");
    let cfg = |size: usize| {
        config_fast_snapshots(
            &pg,
            TRUST,
            "",
            &db_section("app", &db, "transaction", size, ""),
        )
    };
    let proxy = start_proxy(&cfg(4), None);
    let admin = proxy.admin_port();
    // A client on each shard, so both shards have the pool.
    let mut clients = Vec::new();
    let mut shards = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let mut r = Raw::trust(proxy.port(), "app");
        assert_eq!(first_value(&r.query("select 1")).as_deref(), Some("1"));
        shards.insert(r.shard());
        clients.push(r);
        if shards.len() == 2 {
            break;
        }
    }
    let pool_size = |v: &Value| -> Option<u64> {
        v["pools"]
            .as_array()?
            .iter()
            .find(|p| p["database"] == "app")?["pool_size"]
            .as_u64()
    };
    let want = if shards.len() == 2 { 4 } else { 2 };
    poll(WAIT, "the pool in /pools", || {
        (pool_size(&admin_json(admin, "/pools")) == Some(want)).then_some(())
    });

    proxy.write_config(&cfg(10)).unwrap();
    let reloads = proxy.log().matches("configuration reloaded").count();
    let (status, _, body) = http(admin, "POST", "/reload", None).unwrap();
    assert_eq!(status, 202, "POST /reload: {body}");
    assert!(body.contains("reload requested"), "{body}");
    poll(WAIT, "the reload in the log", || {
        (proxy.log().matches("configuration reloaded").count() > reloads).then_some(())
    });
    let want = if shards.len() == 2 { 10 } else { 5 };
    poll(WAIT, "the new pool size in /pools", || {
        (pool_size(&admin_json(admin, "/pools")) == Some(want)).then_some(())
    });
    assert!(proxy.log().contains("size 2 -> 5"), "{}", proxy.log());
    // The clients kept working across the reload.
    for r in &mut clients {
        assert_eq!(first_value(&r.query("select 2")).as_deref(), Some("2"));
    }
}

/// 5b. `/ready` is 200 with a reachable node, 503 once a client found the node's port dead.
#[test]
fn ready_follows_the_node() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_ready");
    let proxy = start_proxy(
        &config_fast_snapshots(
            &pg,
            TRUST,
            "",
            &db_section("app", &db, "transaction", 2, ""),
        ),
        None,
    );
    let admin = proxy.admin_port();
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    c.batch_execute("select 1").unwrap();
    let body = poll(WAIT, "/ready 200", || {
        let (status, _, body) = http(admin, "GET", "/ready", None).ok()?;
        (status == 200).then_some(body)
    });
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["status"], "ready", "{body}");
    assert_eq!(v["healthyNodes"], 1, "{body}");
    drop(proxy);

    // A node on a port nothing listens on.
    let dead_port = free_port();
    let cfg = config_fast_snapshots(
        &pg,
        TRUST,
        "",
        &db_section("app", &db, "transaction", 2, ""),
    )
    .replace(
        &format!("port = {}\n", pg.port),
        &format!("port = {dead_port}\nconnect_timeout_ms = 2000\n"),
    );
    assert!(cfg.contains(&format!("port = {dead_port}")));
    let proxy = start_proxy(&cfg, None);
    let admin = proxy.admin_port();
    let err = try_connect(&proxy, SUPERUSER, "", "app")
        .err()
        .expect("connected through a dead node");
    eprintln!(
        "client through the dead node: {}",
        err.as_db_error().map(|e| e.message()).unwrap_or("?")
    );
    // (Before the shards' first snapshots it is 503 for another reason.)
    let (body, nodes) = poll(WAIT, "/ready 503 for want of a healthy node", || {
        let (status, _, body) = http(admin, "GET", "/ready", None).ok()?;
        (status == 503 && body.contains("no healthy upstream node"))
            .then(|| (body, admin_json(admin, "/nodes")))
    });
    let node = &nodes["nodes"][0];
    assert_eq!(node["healthy"], false, "{nodes}");
    assert!(!node["last_error"].is_null(), "{nodes}");
    eprintln!("/ready: {body}\n/nodes: {nodes}");
}

/// 5c. After a reload, `/config` shows the configuration the proxy now runs with.
///
/// Regression test: `/config` used to be a copy made at start-up (`StaticInfo::config_json`)
/// that no reload (SIGHUP, POST /reload, console RELOAD) updated (fixed in 19adc49).
#[test]
fn config_endpoint_follows_reload() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_cfgreload");
    let cfg = |size: usize| {
        config_fast_snapshots(
            &pg,
            TRUST,
            "",
            &db_section("app", &db, "transaction", size, ""),
        )
    };
    let mut proxy = start_proxy(&cfg(4), None);
    let admin = proxy.admin_port();
    assert_eq!(
        admin_json(admin, "/config")["databases"]["app"]["pool_size"],
        4
    );
    proxy.write_config(&cfg(10)).unwrap();
    proxy.reload().unwrap();
    let c = poll(Duration::from_secs(5), "/config after the reload", || {
        let c = admin_json(admin, "/config");
        (c["databases"]["app"]["pool_size"] == 10).then_some(c)
    });
    assert_eq!(c["databases"]["app"]["pool_size"], 10, "{c}");
}

/// 4b. `PAUSE db` also holds back clients of a shard that had no pool for the database yet.
///
/// Regression test: `PAUSE <db>` used to pause only the pools a shard already had, so a client
/// landing on a shard where nobody had used the database yet got a fresh, unpaused pool and its
/// queries ran (fixed in 19adc49). PgBouncer makes new clients of a paused database wait too.
#[test]
fn pause_applies_to_pools_created_later() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_pause_new");
    let proxy = console_proxy(&pg, &db, 8);
    let mut con = Raw::login(proxy.port(), ADMIN_USER, ADMIN_PW, "heliosproxy")
        .unwrap_or_else(|e| panic!("console login: {e:?}"));
    // Nobody has connected to `app` yet: no shard has its pool.
    let msgs = con.query("PAUSE app");
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    let port = proxy.port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let r = Raw::login(port, APP_USER, APP_PW, "app").map(|mut r| r.query("select 42"));
        let _ = tx.send(r.is_ok());
    });
    let ran = rx.recv_timeout(Duration::from_millis(1500));
    let msgs = con.query("RESUME app");
    assert_eq!(first_error(&msgs), None, "{msgs:?}");
    assert!(
        ran.is_err(),
        "a new client of a paused database logged in and ran a query"
    );
}

/// Sums a per-shard counter family of a `/metrics` exposition.
fn metric_sum(text: &str, family: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// `io.ring_wait_us` decides where an idle shard sleeps: with 0 its ring driver always parks
/// in glommio's reactor; with 2 ms, in the 1 ms between a client's round trips, it sleeps on
/// the ring itself (one `io_uring_enter` per wake-up). On the glommio backend there is no ring.
#[test]
fn ring_wait_us_decides_where_an_idle_shard_sleeps() {
    let pg = shared_pg();
    let db = fresh_db(&pg, "obs_ring_wait");
    let glommio = std::env::var("HELIOS_TEST_IO_BACKEND").is_ok_and(|b| b == "glommio");
    for wait_us in [0, 2000] {
        let proxy = start_proxy(
            &config_custom(
                &pg,
                FAST_ADMIN,
                &format!("ring_wait_us = {wait_us}"),
                TRUST,
                "",
                &db_section("app", &db, "transaction", 2, ""),
            ),
            None,
        );
        let mut c = connect(&proxy, SUPERUSER, "", "app");
        for i in 0..300 {
            let v: i32 = c.query_one("select $1::int", &[&i]).unwrap().get(0);
            assert_eq!(v, i);
            // A pause between round trips, so the shard surely goes idle in each.
            std::thread::sleep(Duration::from_millis(1));
        }
        let admin = proxy.admin_port();
        let text = poll(WAIT, "the queries in /metrics", || {
            let (_, _, body) = http(admin, "GET", "/metrics", None).ok()?;
            (metric_sum(&body, "heliosproxy_queries_total") >= 300).then_some(body)
        });
        let enters = metric_sum(&text, "heliosproxy_ring_enters_total");
        let waits = metric_sum(&text, "heliosproxy_ring_waits_total");
        let parks = metric_sum(&text, "heliosproxy_ring_parks_total");
        eprintln!("ring_wait_us = {wait_us}: {enters} enters, {waits} waits, {parks} parks");
        if glommio {
            assert_eq!((enters, waits, parks), (0, 0, 0));
        } else if wait_us == 0 {
            assert_eq!(waits, 0);
            assert!(
                parks >= 300,
                "each round trip should park at least once: {parks}"
            );
        } else {
            // Every idle stretch starts with a sleep on the ring (a park follows only if it
            // lasts over 2 ms): at least one per round trip.
            assert!(waits >= 300, "{waits} waits");
        }
    }
}
