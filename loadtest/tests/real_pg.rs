//! The `helios-loadtest` binary against a real PostgreSQL (from `helios-testkit`).
//!
//! Each test starts its own throwaway cluster and runs the tool for a second or two. Assertions
//! on timing are lower bounds that follow from the workload itself (a `pg_sleep` cannot finish
//! early), so a slow or loaded machine can only make them pass by a wider margin.

use std::path::{Path, PathBuf};
use std::process::Command;

use helios_testkit::PgCluster;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_helios-loadtest");

struct Run {
    stdout: String,
    stderr: String,
    json: Value,
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("helios-loadtest-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs the tool with `args` plus `--json`, expecting success.
fn run(dir: &Path, tag: &str, args: &[&str]) -> Run {
    let json_path = dir.join(format!("{tag}.json"));
    let out = Command::new(BIN)
        .args(args)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("spawn helios-loadtest");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Shown with --nocapture or when the test fails.
    println!("$ helios-loadtest {}\n{stdout}", args.join(" "));
    assert!(
        out.status.success(),
        "helios-loadtest {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json_path).expect("--json file written");
    let json: Value = serde_json::from_str(&text).expect("--json output parses");
    Run {
        stdout,
        stderr,
        json,
    }
}

fn pgbench_init(pg: &PgCluster) {
    let out = Command::new("pgbench")
        .args(["-i", "-s", "1", "-q"])
        .arg(pg.url("postgres"))
        .output()
        .expect("pgbench on PATH");
    assert!(
        out.status.success(),
        "pgbench -i failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn target(j: &Value, i: usize) -> &Value {
    &j["targets"][i]
}

fn num(v: &Value) -> f64 {
    v.as_f64()
        .unwrap_or_else(|| panic!("expected a number, got {v}"))
}

/// Parses a `.hgrm` file: checks the header, monotonic rows, a final 1.0 row and the footer's
/// total count; returns the total count.
fn parse_hgrm(path: &Path) -> u64 {
    let text = std::fs::read_to_string(path).expect("hgrm file written");
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
    );
    let (mut last_v, mut last_q, mut last_n) = (0.0f64, 0.0f64, 0u64);
    let mut total = None;
    for l in lines {
        if let Some(rest) = l.strip_prefix("#[Max") {
            let n = rest
                .rsplit('=')
                .next()
                .unwrap()
                .trim_end_matches(']')
                .trim();
            total = Some(n.parse::<u64>().unwrap());
            continue;
        }
        if l.starts_with('#') || l.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split_whitespace().collect();
        assert!(f.len() == 4 || f.len() == 3, "bad row {l:?}");
        let (v, q, n): (f64, f64, u64) = (
            f[0].parse().unwrap(),
            f[1].parse().unwrap(),
            f[2].parse().unwrap(),
        );
        assert!(
            v >= last_v && q >= last_q && n >= last_n,
            "not monotonic at {l:?}"
        );
        (last_v, last_q, last_n) = (v, q, n);
    }
    let total = total.expect("#[Max ... Total count] footer");
    assert_eq!(last_q, 1.0);
    assert_eq!(last_n, total);
    total
}

#[test]
fn closed_loop_every_protocol_with_hgrm() {
    let pg = PgCluster::start().unwrap();
    pgbench_init(&pg);
    let dir = scratch("closed");
    let url = pg.url("postgres");
    for proto in ["simple", "extended", "prepared"] {
        let hgrm = dir.join(format!("{proto}.hgrm"));
        let r = run(
            &dir,
            proto,
            &[
                &url,
                "-b",
                "select-only",
                "-M",
                proto,
                "-c",
                "2",
                "-T",
                "1",
                "--warmup",
                "0.2",
                "--hgrm",
                hgrm.to_str().unwrap(),
            ],
        );
        let t = target(&r.json, 0);
        let n = t["transactions"].as_u64().unwrap();
        assert!(n > 50, "{proto}: only {n} transactions\n{}", r.stdout);
        assert_eq!(t["failed"], 0, "{proto}: {}", r.stdout);
        assert_eq!(r.json["mode"], "closed");
        assert_eq!(r.json["protocol"], proto);
        assert_eq!(r.json["scale"], 1, "scale detected from pgbench_branches");
        assert!(t["service_latency"].is_null());
        let l = &t["latency"];
        assert!(num(&l["p50_us"]) > 0.0 && num(&l["p50_us"]) <= num(&l["p99_us"]));
        assert!(num(&l["p99_us"]) <= num(&l["p99_999_us"]));
        assert!(num(&l["p99_999_us"]) <= num(&l["max_us"]));
        assert!(num(&t["tps"]) > 0.0);
        assert_eq!(parse_hgrm(&hgrm), n, "hgrm total = transactions");
        for label in [
            "p50",
            "p99.9",
            "p99.999",
            "max",
            "throughput:",
            "errors:       none",
        ] {
            assert!(
                r.stdout.contains(label),
                "stdout lacks {label}:\n{}",
                r.stdout
            );
        }
    }
}

#[test]
fn open_loop_every_protocol_hits_the_rate() {
    let pg = PgCluster::start().unwrap();
    pgbench_init(&pg);
    let dir = scratch("open");
    let url = pg.url("postgres");
    for proto in ["simple", "extended", "prepared"] {
        let r = run(
            &dir,
            proto,
            &[
                &url, "-M", proto, "-c", "2", "-R", "200", "-T", "1", "--warmup", "0",
            ],
        );
        let t = target(&r.json, 0);
        assert_eq!(r.json["mode"], "open");
        let n = t["transactions"].as_u64().unwrap();
        // 200/s for 1 s is 200 scheduled sends; all are either done or counted as unsent.
        let unsent = t["unsent"].as_u64().unwrap();
        assert!(
            (199..=201).contains(&(n + unsent)),
            "{proto}: {n} done + {unsent} unsent"
        );
        assert!(n > 100, "{proto}: only {n} of 200 sends completed");
        assert_eq!(t["failed"], 0);
        assert!(num(&t["service_latency"]["p50_us"]) > 0.0);
        assert!(r.stdout.contains("corrected") && r.stdout.contains("service"));
    }
}

#[test]
fn open_loop_latency_includes_queueing_delay() {
    let pg = PgCluster::start().unwrap();
    let dir = scratch("co");
    let script = dir.join("slow.sql");
    std::fs::write(&script, "select pg_sleep(0.02);\n").unwrap();
    // One connection, 100/s offered, at most 50/s served: a queue builds up linearly.
    let r = run(
        &dir,
        "co",
        &[
            &pg.url("postgres"),
            "-f",
            script.to_str().unwrap(),
            "-c",
            "1",
            "-R",
            "100",
            "-T",
            "2",
            "--warmup",
            "0",
            "-P",
            "0.5",
        ],
    );
    let t = target(&r.json, 0);
    let n = t["transactions"].as_u64().unwrap() as f64;
    assert!(n >= 30.0, "too few transactions: {n}\n{}", r.stdout);
    let unsent = t["unsent"].as_u64().unwrap() as f64;
    assert!((199.0..=201.0).contains(&(n + unsent)), "{n} + {unsent}");
    // Physics, whatever the machine's speed: send k (0-based) was intended at 10k ms and cannot
    // finish before 20(k+1) ms (serial 20 ms sleeps), so its latency is >= 10k + 20 ms. Hence
    // max >= 10(n-1) + 20 ms and, since half the sends have k >= n/2, p50 >= 10(n/2 - 1) + 20 ms.
    // Measured from the actual send instead (no correction), every latency would be ~20 ms.
    let l = &t["latency"];
    let ms = |v: &Value| num(v) / 1000.0;
    let max_bound = 10.0 * (n - 1.0) + 20.0;
    let p50_bound = 10.0 * (n / 2.0 - 1.0) + 20.0;
    assert!(
        ms(&l["max_us"]) >= 0.95 * max_bound,
        "max {} ms < {max_bound} ms\n{}",
        ms(&l["max_us"]),
        r.stdout
    );
    assert!(
        ms(&l["p50_us"]) >= 0.9 * p50_bound,
        "p50 {} ms < {p50_bound} ms\n{}",
        ms(&l["p50_us"]),
        r.stdout
    );
    assert!(
        ms(&l["p99_us"]) > 200.0,
        "p99 not far above 20 ms\n{}",
        r.stdout
    );
    // The uncorrected view is reported alongside and is far smaller.
    let s = &t["service_latency"];
    assert!(ms(&s["p50_us"]) >= 19.0);
    assert!(ms(&l["p50_us"]) > 2.0 * ms(&s["p50_us"]), "{}", r.stdout);
    assert!(r.stdout.contains("unsent:"), "{}", r.stdout);
    assert!(
        r.stderr.contains("progress: 0.5 s"),
        "stderr:\n{}",
        r.stderr
    );
}

#[test]
fn tpcb_like_keeps_pgbench_invariant() {
    let pg = PgCluster::start().unwrap();
    pgbench_init(&pg);
    let dir = scratch("tpcb");
    let url = pg.url("postgres");
    let mut committed = 0;
    for (proto, extra) in [("prepared", None), ("simple", Some("-C"))] {
        let mut args = vec![
            url.as_str(),
            "-b",
            "tpcb-like",
            "-M",
            proto,
            "-c",
            "4",
            "-T",
            "1",
            "--warmup",
            "0",
        ];
        args.extend(extra);
        let r = run(&dir, proto, &args);
        let t = target(&r.json, 0);
        let n = t["transactions"].as_u64().unwrap();
        assert!(n > 10, "{proto}: only {n}\n{}", r.stdout);
        // Concurrent updates of the same branch row wait on each other but never fail
        // under READ COMMITTED.
        assert_eq!(t["failed"], 0, "{}", r.stdout);
        assert_eq!(r.json["connect_per_transaction"], extra.is_some());
        committed += n;
    }
    let q = |sql: &str| pg.psql("postgres", sql).unwrap();
    let history = q("select count(*) from pgbench_history");
    assert_eq!(
        history,
        committed.to_string(),
        "one history row per transaction"
    );
    let sums = q("select (select sum(abalance) from pgbench_accounts), \
                  (select sum(tbalance) from pgbench_tellers), \
                  (select sum(bbalance) from pgbench_branches), \
                  (select sum(delta) from pgbench_history)");
    let v: Vec<&str> = sums.split('|').collect();
    assert_eq!(v.len(), 4, "{sums}");
    assert!(
        v.iter().all(|x| *x == v[3]),
        "pgbench invariant broken: {sums}"
    );
}

#[test]
fn custom_script_variables_and_sqlstate_counts() {
    let pg = PgCluster::start().unwrap();
    let url = pg.url("postgres");
    pg.psql("postgres", "create table kv (k int, v bigint, note text)")
        .unwrap();
    let dir = scratch("custom");

    // Variables, arithmetic, --define, casts and quoted colons, in both ways of sending them.
    let ins = dir.join("insert.sql");
    std::fs::write(
        &ins,
        "-- custom script\n\\set k random(1, 100)\n\\set v :k * :mult + 1\n\
         insert into kv (k, v, note)\n  values (:k, :v::bigint, 'at 12:30 :k');\n",
    )
    .unwrap();
    let mut done = 0;
    for proto in ["simple", "extended"] {
        let r = run(
            &dir,
            proto,
            &[
                &url,
                "-f",
                ins.to_str().unwrap(),
                "-D",
                "mult=3",
                "-M",
                proto,
                "-T",
                "0.5",
                "--warmup",
                "0",
            ],
        );
        let t = target(&r.json, 0);
        assert_eq!(t["failed"], 0, "{}", r.stdout);
        done += t["transactions"].as_u64().unwrap();
    }
    let check = pg
        .psql(
            "postgres",
            "select count(*), count(*) filter (where v <> k * 3 + 1 or k not between 1 and 100 \
             or note <> 'at 12:30 :k') from kv",
        )
        .unwrap();
    assert_eq!(check, format!("{done}|0"));

    // Errors are counted by SQLSTATE: x = 0 divides by zero (22012) about a quarter of the time.
    let div = dir.join("div.sql");
    std::fs::write(&div, "\\set x random(0, 3)\nselect 10 / :x;\n").unwrap();
    let r = run(
        &dir,
        "div",
        &[
            &url,
            "-f",
            div.to_str().unwrap(),
            "-M",
            "prepared",
            "-T",
            "0.5",
            "--warmup",
            "0",
            "--seed",
            "42",
        ],
    );
    let t = target(&r.json, 0);
    let failed = t["failed"].as_u64().unwrap();
    let errs = t["errors"].as_object().unwrap();
    assert_eq!(errs.keys().collect::<Vec<_>>(), ["22012"], "{}", r.stdout);
    assert_eq!(errs["22012"].as_u64().unwrap(), failed);
    assert!(failed > 0 && t["transactions"].as_u64().unwrap() > failed);
    assert!(r.stdout.contains("22012: "), "{}", r.stdout);

    // A failure inside BEGIN ... END is rolled back and the next transaction starts clean.
    let txn = dir.join("txn.sql");
    std::fs::write(
        &txn,
        "\\set x random(0, 1)\nbegin;\ninsert into kv values (-1, 0, 'txn');\nselect 1 / :x;\nend;\n",
    )
    .unwrap();
    let r = run(
        &dir,
        "txn",
        &[
            &url,
            "-f",
            txn.to_str().unwrap(),
            "-M",
            "extended",
            "-T",
            "0.5",
            "--warmup",
            "0",
        ],
    );
    let t = target(&r.json, 0);
    let ok = t["transactions"].as_u64().unwrap();
    assert!(t["failed"].as_u64().unwrap() > 0 && ok > 0, "{}", r.stdout);
    let rows = pg
        .psql("postgres", "select count(*) from kv where k = -1")
        .unwrap();
    assert_eq!(rows, ok.to_string(), "failed transactions left rows behind");
}

#[test]
fn compare_runs_both_targets_and_prints_ratios() {
    let pg = PgCluster::start().unwrap();
    pg.psql("postgres", "create database other").unwrap();
    let dir = scratch("compare");
    let script = dir.join("one.sql");
    std::fs::write(&script, "select 1;\n").unwrap();
    let hgrm = dir.join("cmp.hgrm");
    let (a, b) = (pg.url("postgres"), pg.url("other"));
    let r = run(
        &dir,
        "cmp",
        &[
            "--compare",
            &a,
            &b,
            "--slices",
            "2",
            "-f",
            script.to_str().unwrap(),
            "-M",
            "extended",
            "-T",
            "1",
            "--warmup",
            "0.2",
            "--hgrm",
            hgrm.to_str().unwrap(),
        ],
    );
    let j = &r.json;
    assert_eq!(j["slices"], 2);
    assert!(target(j, 0)["target"]
        .as_str()
        .unwrap()
        .ends_with("/postgres"));
    assert!(target(j, 1)["target"].as_str().unwrap().ends_with("/other"));
    for i in 0..2 {
        let t = target(j, i);
        assert!(t["transactions"].as_u64().unwrap() > 50);
        // Each target got about half of... its own 1 s: two 0.5 s slices.
        let el = num(&t["elapsed_s"]);
        assert!((0.95..3.0).contains(&el), "elapsed {el}");
        let n = t["transactions"].as_u64().unwrap();
        let tag = ["a", "b"][i];
        assert_eq!(parse_hgrm(&dir.join(format!("cmp.{tag}.hgrm"))), n);
    }
    let c = &j["comparison"];
    let tr = num(&c["throughput_ratio"]);
    assert!(tr > 0.0 && tr.is_finite());
    let expect = num(&target(j, 1)["latency"]["p99_us"]) - num(&target(j, 0)["latency"]["p99_us"]);
    assert!((num(&c["p99_added_us"]) - expect).abs() < 1e-6);
    for s in [
        "[A] target",
        "[B] target",
        "B vs A",
        "throughput ratio",
        "p99   ratio",
    ] {
        assert!(r.stdout.contains(s), "stdout lacks {s:?}:\n{}", r.stdout);
    }
    // Passwords never reach the outputs.
    assert!(!r.stdout.contains(helios_testkit::SUPERUSER_PASSWORD));
    assert!(!serde_json::to_string(j)
        .unwrap()
        .contains(helios_testkit::SUPERUSER_PASSWORD));
}

#[test]
fn bad_target_fails_fast_with_the_server_error() {
    let pg = PgCluster::start().unwrap();
    let url = format!("postgres://postgres:wrong@127.0.0.1:{}/postgres", pg.port);
    let out = Command::new(BIN)
        .args([&url, "-f", "/dev/null", "-T", "1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no SQL statement"), "{err}");
    let script = scratch("bad").join("one.sql");
    std::fs::write(&script, "select 1;").unwrap();
    let out = Command::new(BIN)
        .args([
            &url,
            "-f",
            script.to_str().unwrap(),
            "-T",
            "1",
            "--warmup",
            "0",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("28P01"), "{err}");
    assert!(!err.contains("wrong"), "password leaked: {err}");
}
