//! The admin API fuzzed from its own OpenAPI document: schemathesis (from PyPI) generates
//! requests for every operation of `/openapi.json` — valid and invalid bodies, parameters and
//! paths — against a proxy with real PostgreSQL, and checks that every answer's status is one
//! the document lists for that operation (so no 5xx other than the documented ones, and never a
//! 500), with the documented content type.
//!
//! Needs `st` (schemathesis) in `target/api-fuzz-venv`: `scripts/test.sh` (or
//! `scripts/api-fuzz.sh`) installs it; without it this test fails saying so.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use helios_testkit::{PgCluster, PgOptions, SUPERUSER};
use serde_json::Value;

/// GET with the token; the JSON body of a 200.
fn get(port: u16, target: &str) -> Value {
    let (st, _, body) = http(port, "GET", target, Some(ADMIN_TOKEN)).unwrap();
    assert_eq!(st, 200, "GET {target}: {body}");
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {target}: {e}: {body}"))
}

/// `GET /anomalies/stream`, bounded: reads for at most `wait`, until `want` is in what came.
fn stream_until(port: u16, want: &str, wait: Duration) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    write!(
        s,
        "GET /anomalies/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n\r\n"
    )
    .unwrap();
    let end = Instant::now() + wait;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < end && !String::from_utf8_lossy(&got).contains(want) {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn admin_api_fuzzed_from_its_openapi_document() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let st = root.join("target/api-fuzz-venv/bin/st");
    assert!(
        st.exists(),
        "{} is missing: run scripts/api-fuzz.sh (a venv with schemathesis from PyPI)",
        st.display()
    );
    let pg = shared_pg();
    // The topology: a streaming standby of the test cluster, and a database over both nodes.
    let standby = PgCluster::standby_of(&pg, PgOptions::default()).expect("standby");
    let journal = std::env::temp_dir().join(format!("helios-fuzz-journal-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&journal);
    let extra = plugins_section("", &plugin_entry("block-drop", ""))
        + &format!(
            "\n[[nodes]]\nname = \"rep\"\nhost = \"127.0.0.1\"\nport = {}\nrole = \"replica\"\n\n\
             [health]\ninterval_ms = 100\nuser = \"{SUPERUSER}\"\npassword = \"{PW}\"\n\n{}",
            standby.port,
            db_section(
                "split",
                "postgres",
                "transaction",
                2,
                "nodes = [\"pg\", \"rep\"]\nread_write_split = true\ndrift = true"
            )
        )
        + &format!(
            "\n[journal]\nenabled = true\npath = \"{}\"\nmax_file_bytes = 65536\nmax_files = 4\n\n\
             [anomaly]\nenabled = true\n\n\
             [drift]\nenabled = true\nwindow_s = 1\ntick_s = 1\nbaseline_windows = 2\n",
            journal.display()
        );
    let proxy = two_node_admin_proxy(&pg, "sql_timeout_ms = 500\nsql_max_rows = 20", &extra);
    let admin = proxy.admin_port();
    let base = format!("http://127.0.0.1:{admin}");

    // Each feature with something to show: journaled writes, an anomaly event (a tautology), a
    // drift alert (a session of `split` whose statements mostly failed), the replica healthy.
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    c.batch_execute("create table fz(x int); insert into fz values (1), (2)")
        .unwrap();
    c.execute("insert into fz values ($1)", &[&3i32]).unwrap();
    c.simple_query("select 1 where '' = '' or 1=1").unwrap();
    {
        let mut s = connect(&proxy, SUPERUSER, "", "split");
        s.simple_query("select 1").unwrap();
        for _ in 0..5 {
            assert!(s.simple_query("select nosuch_col_zz").is_err());
        }
    }
    let wait = Duration::from_secs(20);
    poll(wait, "a journaled write at /api/replay", || {
        (get(admin, "/api/replay")["entries"].as_u64() >= Some(2)).then_some(())
    });
    poll(wait, "the tautology event at /anomalies", || {
        let v = get(admin, "/anomalies");
        v["events"]
            .as_array()?
            .iter()
            .any(|e| e["class"] == "tautology")
            .then_some(())
    });
    poll(wait, "an error_rate_high alert at /drift", || {
        let v = get(admin, "/drift");
        v["alerts"]
            .as_array()?
            .iter()
            .any(|a| a["rule"] == "error_rate_high")
            .then_some(())
    });
    poll(wait, "split's reads on the replica", || {
        let mut s = try_connect(&proxy, SUPERUSER, "", "split").ok()?;
        let r = s.simple_query("select pg_is_in_recovery()::text").ok()?;
        r.iter()
            .any(|m| matches!(m, postgres::SimpleQueryMessage::Row(row) if row.get(0) == Some("true")))
            .then_some(())
    });
    assert!(get(admin, "/topology").to_string().contains("\"rep\""));
    assert_eq!(
        get(admin, "/api/chaos").as_object().map(|o| o.is_empty()),
        Some(false)
    );

    // The event stream, bounded: its head, then the event of a new tautology.
    let (tx, rx) = std::sync::mpsc::channel();
    let reader = std::thread::spawn(move || {
        tx.send(()).unwrap();
        stream_until(admin, "event: anomaly", Duration::from_secs(15))
    });
    rx.recv().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    c.simple_query("select 2 where 'a' = 'a' or 2=2").unwrap();
    let got = reader.join().unwrap();
    assert!(
        got.starts_with("HTTP/1.1 200") && got.contains("text/event-stream"),
        "{got}"
    );
    assert!(got.contains("event: anomaly\ndata: {"), "{got}");
    let (code, head, _) = http(admin, "POST", "/anomalies/stream", Some(ADMIN_TOKEN)).unwrap();
    assert!(code == 405 && head.contains("allow: get"), "{code} {head}");
    let report = root.join("target/api-fuzz");
    let _ = std::fs::remove_dir_all(&report);
    std::fs::create_dir_all(&report).unwrap();
    let examples = std::env::var("HELIOS_API_FUZZ_EXAMPLES").unwrap_or_else(|_| "40".into());
    let out = Command::new(&st)
        .arg("run")
        .arg(format!("{base}/openapi.json"))
        .args(["--url", &base])
        .args(["-H", &format!("Authorization: Bearer {ADMIN_TOKEN}")])
        .args(["--checks", "status_code_conformance,content_type_conformance,response_schema_conformance,unsupported_method,allow_header_conformance"])
        .args(["--phases", "examples,coverage,fuzzing"])
        .args(["--max-examples", &examples])
        .args(["--seed", "1"])
        // The event stream never ends (checked above, bounded).
        .args(["--exclude-path", "/anomalies/stream"])
        .args(["--request-timeout", "20"])
        .args(["--workers", "1"])
        .arg("--report-dir")
        .arg(&report)
        .args(["--report", "junit"])
        // Its cache (`.schemathesis/`) goes there too, not into the source tree.
        .current_dir(&report)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .output()
        .expect("run schemathesis");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}{stderr}");
    assert!(out.status.success(), "schemathesis found failures (above)");
    // The proxy is still serving.
    let mut c = connect(&proxy, SUPERUSER, "", "app");
    c.simple_query("select 1").unwrap();
    let log = proxy.log();
    assert!(!log.contains("panicked"), "{log}");
    let _ = std::fs::remove_dir_all(&journal);
}
