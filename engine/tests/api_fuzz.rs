//! The admin API fuzzed from its own OpenAPI document: schemathesis (from PyPI) generates
//! requests for every operation of `/openapi.json` — valid and invalid bodies, parameters and
//! paths — against a proxy with real PostgreSQL, and checks that every answer's status is one
//! the document lists for that operation (so no 5xx other than the documented ones, and never a
//! 500), with the documented content type.
//!
//! Needs `st` (schemathesis) in `target/api-fuzz-venv`: `scripts/test.sh` (or
//! `scripts/api-fuzz.sh`) installs it; without it this test fails saying so.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

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
    let plugins = plugins_section("", &plugin_entry("block-drop", ""));
    let proxy = two_node_admin_proxy(&pg, "sql_timeout_ms = 500\nsql_max_rows = 20", &plugins);
    let base = format!("http://127.0.0.1:{}", proxy.admin_port());
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
    let mut c = connect(&proxy, helios_testkit::SUPERUSER, "", "app");
    c.simple_query("select 1").unwrap();
}
