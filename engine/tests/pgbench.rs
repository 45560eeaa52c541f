//! pgbench through the proxy: initialise, then the simple, extended and prepared query modes
//! with 20 clients on 2 threads, in session pooling (enough server connections for every
//! client) and in transaction pooling (5 server connections). No transaction may fail, no client
//! may abort, and the bank must balance afterwards (checked directly on the server: what the run
//! added to sum(abalance) is sum(delta) of pgbench_history, which pgbench truncates before each
//! run, and the account, teller and branch totals agree).
//!
//! Each run lasts `HELIOS_PGBENCH_SECONDS` (default 10).

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::proxy::Proxy;
use helios_testkit::{PgCluster, SUPERUSER};

fn seconds() -> u64 {
    std::env::var("HELIOS_PGBENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(10)
}

/// Runs pgbench to completion, or fails after `seconds() + 120` s with what the proxy, its
/// threads, its sockets and the server were doing (a stuck run must fail with evidence, not
/// hang the suite).
fn pgbench(args: &[&str], url: &str, proxy: &Proxy, pg: &PgCluster, db: &str) -> (String, String) {
    let dir = proxy.dir();
    let (out_path, err_path) = (dir.join("pgbench.out"), dir.join("pgbench.err"));
    let mut child = Command::new("pgbench")
        .args(args)
        .arg(url)
        .stdout(std::fs::File::create(&out_path).expect("pgbench.out"))
        .stderr(std::fs::File::create(&err_path).expect("pgbench.err"))
        .spawn()
        .expect("run pgbench");
    let limit = Duration::from_secs(seconds() + 120);
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait for pgbench") {
            break st;
        }
        if Instant::now() > deadline {
            let report = stuck_report(proxy, pg, db);
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pgbench {args:?} still running after {limit:?}:\n{report}\npgbench stderr:\n{}",
                std::fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let stdout = std::fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = std::fs::read_to_string(&err_path).unwrap_or_default();
    assert!(
        status.success(),
        "pgbench {args:?} exited with {status}:\n{stdout}\n{stderr}"
    );
    (stdout, stderr)
}

/// What a stuck run looks like from outside: whether every shard still reports (the admin
/// API's snapshot age), the sessions' states, each proxy thread's scheduler state and kernel
/// wait, the proxy's sockets with their queues, and what the backends wait for.
fn stuck_report(proxy: &Proxy, pg: &PgCluster, db: &str) -> String {
    let pid = proxy.pid();
    let mut r = String::new();
    for target in ["/health", "/clients"] {
        let body = match http(proxy.admin_port(), "GET", target, None) {
            Ok((_, _, body)) => match serde_json::from_str::<serde_json::Value>(&body) {
                // One line per client: id, shard, state.
                Ok(v) if target == "/clients" => v["clients"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|c| format!("{} shard {} {}; ", c["id"], c["shard"], c["state"]))
                    .collect(),
                _ => body,
            },
            Err(e) => format!("error: {e}"),
        };
        r += &format!("GET {target}: {body}\n");
    }
    for (name, dir) in threads(pid) {
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        r += &format!(
            "thread {} {name}: state {}, wchan {}\n{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            proc_field(&dir.join("status"), "State").unwrap_or_default(),
            read("wchan"),
            read("stack")
        );
    }
    if let Ok(out) = Command::new("ss").args(["-tnp"]).output() {
        let needle = format!("pid={pid},");
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if line.contains(&needle) {
                r += &format!("socket: {line}\n");
            }
        }
    }
    r += &format!(
        "backends:\n{}\n",
        pg.psql(
            "postgres",
            &format!(
                "select string_agg(pid || ' ' || state || ' ' || coalesce(wait_event, '-') \
                 || ' ' || left(query, 60), E'\\n') from pg_stat_activity where datname = '{db}'"
            ),
        )
        .unwrap_or_else(|e| format!("{e:#}"))
    );
    r
}

/// sum(abalance), sum(tbalance), sum(bbalance) and sum(delta) of the history, read directly.
fn sums(pg: &PgCluster, db: &str) -> [i64; 4] {
    let row = pg
        .psql(
            db,
            "select (select coalesce(sum(abalance), 0) from pgbench_accounts) || ' ' || \
                    (select coalesce(sum(tbalance), 0) from pgbench_tellers) || ' ' || \
                    (select coalesce(sum(bbalance), 0) from pgbench_branches) || ' ' || \
                    (select coalesce(sum(delta), 0) from pgbench_history)",
        )
        .unwrap();
    let v: Vec<i64> = row.split(' ').map(|x| x.parse().unwrap()).collect();
    [v[0], v[1], v[2], v[3]]
}

/// Every transaction adds the same delta to an account, a teller and a branch and records it
/// in the history. pgbench truncates the history before each run (its vacuum step), so what
/// the history sums to is what this run added to the accounts; the three balances always
/// agree with each other.
fn assert_balanced(before: [i64; 4], after: [i64; 4], what: &str) {
    let [a0, ..] = before;
    let [a, t, b, h] = after;
    assert_eq!(
        a - a0,
        h,
        "{what}: this run's change of sum(abalance) != sum(delta) of pgbench_history"
    );
    assert_eq!(
        (a, a),
        (t, b),
        "{what}: sum(abalance), sum(tbalance), sum(bbalance) differ"
    );
}

fn run_all_modes(pool_mode: &str, pool_size: usize) {
    let pg = shared_pg();
    let db = fresh_db(&pg, &format!("bench_{pool_mode}"));
    let proxy: Proxy = start_proxy(
        &config(
            &pg,
            TRUST,
            "",
            &db_section(
                "bench",
                &db,
                pool_mode,
                pool_size,
                "checkout_timeout_ms = 30000",
            ),
        ),
        None,
    );
    let url = proxy.url(SUPERUSER, "", "bench");
    pgbench(&["-i", "-s", "1", "-q"], &url, &proxy, &pg, &db);
    let accounts = pg
        .psql(&db, "select count(*) from pgbench_accounts")
        .unwrap();
    assert_eq!(accounts, "100000");
    let secs = seconds().to_string();
    for mode in ["simple", "extended", "prepared"] {
        let before = sums(&pg, &db);
        let (out, err) = pgbench(
            &["-M", mode, "-c", "20", "-j", "2", "-T", &secs],
            &url,
            &proxy,
            &pg,
            &db,
        );
        let what = format!("{pool_mode} pooling, -M {mode}");
        assert!(
            out.lines()
                .any(|l| l.trim() == "number of failed transactions: 0 (0.000%)"),
            "{what}: failed transactions:\n{out}\n{err}"
        );
        assert!(
            !err.contains("aborted") && !out.contains("aborted"),
            "{what}: a client aborted:\n{out}\n{err}"
        );
        let processed: u64 = out
            .lines()
            .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
            .and_then(|n| n.split('/').next())
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or_else(|| panic!("{what}: no transaction count in:\n{out}"));
        assert!(processed > 0, "{what}: nothing processed:\n{out}");
        eprintln!("{what}: {processed} transactions in {secs} s");
        assert_balanced(before, sums(&pg, &db), &what);
    }
}

#[test]
fn pgbench_session_pooling() {
    // Every client keeps its server connection for the whole run. The kernel spreads the 20
    // connections over the 2 shards by a hash of their addresses, so any one shard may get
    // all 20: each shard's share (pool_size / 2) must cover that, or clients time out waiting.
    run_all_modes("session", 40);
}

#[test]
fn pgbench_transaction_pooling_over_five_connections() {
    run_all_modes("transaction", 5);
}
